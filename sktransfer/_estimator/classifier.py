"""The classifier family: single-label and multi-label targets, probabilities, labels."""

from __future__ import annotations

import numbers

from sklearn.base import ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions

from sktransfer._estimator.base import PretrainedEstimatorBase
from sktransfer._estimator.params import COMMON_CONSTRAINTS
from sktransfer._estimator.targets.multi_label import MultiLabel
from sktransfer._estimator.targets.single_label import SingleLabel

#: the shared parameters plus the logistic head's C and the label weights
CLASSIFIER_CONSTRAINTS = {
    **COMMON_CONSTRAINTS,
    "C": [Interval(numbers.Real, 0, None, closed="neither")],
    "class_weight": [None, dict, StrOptions({"balanced"})],
}


class PretrainedClassifierBase(ClassifierMixin, PretrainedEstimatorBase):
    """``predict_proba`` and ``predict`` over the skeleton; ``score`` is accuracy.

    ``y`` picks the target: a 2-D ``y`` with at least 2 columns is a multi-label indicator
    matrix (:class:`~sktransfer._estimator.targets.multi_label.MultiLabel`), anything else
    one label per sample (:class:`~sktransfer._estimator.targets.single_label.SingleLabel`).
    ``score`` is :class:`~sklearn.base.ClassifierMixin`'s: subset accuracy for multi-label.
    """

    _targets = (MultiLabel, SingleLabel)
    _parameter_constraints = dict(CLASSIFIER_CONSTRAINTS)

    def predict_proba(self, X):
        """Class probabilities: ``(n_samples, n_classes)`` in ``classes_`` order.

        Single-label: rows sum to 1. Multi-label: one independent probability per label.
        With ``tta=n`` (images) the probabilities of the image and of ``n``
        deterministic augmented views (flips, shifted crops) are averaged.
        """
        return self._predict_outputs(X)

    def predict(self, X):
        """Predicted labels (same dtype as the labels given to ``fit``); for multi-label
        ``y``, the 0/1 indicator matrix ``predict_proba(X) >= 0.5``."""
        return self._target.decode(self, self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
