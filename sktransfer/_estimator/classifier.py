"""The classifier family: single-label (and multi-label) targets, probabilities, labels."""

from __future__ import annotations

from sklearn.base import ClassifierMixin

from sktransfer._estimator.base import PretrainedEstimatorBase
from sktransfer._estimator.targets.single_label import SingleLabel


class PretrainedClassifierBase(ClassifierMixin, PretrainedEstimatorBase):
    """``predict_proba`` and ``predict`` over the skeleton; ``score`` is accuracy."""

    _targets = (SingleLabel,)

    def predict_proba(self, X):
        """Class probabilities, columns in ``classes_`` order; rows sum to 1.

        With ``tta=n`` (images) the probabilities of the image and of ``n``
        deterministic augmented views (flips, shifted crops) are averaged.
        """
        return self._predict_outputs(X)

    def predict(self, X):
        """Predicted labels (same dtype as the labels given to ``fit``)."""
        return self._target.decode(self, self.predict_proba(X))
