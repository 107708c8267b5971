"""The regressor family: real-valued targets, a ridge head, ``predict``; ``score`` is R²."""

from __future__ import annotations

import numbers

from sklearn.base import RegressorMixin
from sklearn.utils._param_validation import Interval, StrOptions

from sktransfer._estimator.base import PretrainedEstimatorBase
from sktransfer._estimator.params import COMMON_CONSTRAINTS
from sktransfer._estimator.targets.regression import Regression

#: the shared parameters plus the ridge head's strength
REGRESSOR_CONSTRAINTS = {
    **COMMON_CONSTRAINTS,
    "alpha": [Interval(numbers.Real, 0, None, closed="left"), StrOptions({"auto"})],
}


class PretrainedRegressorBase(RegressorMixin, PretrainedEstimatorBase):
    """``predict`` over the skeleton; ``score`` is R² (``RegressorMixin``)."""

    _targets = (Regression,)
    _parameter_constraints = dict(REGRESSOR_CONSTRAINTS)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # y of shape (n, k): one head output per column
        return tags

    def predict(self, X):
        """Predicted values in the units of ``y``: shape ``(n,)`` when ``fit`` saw a 1-D
        ``y``, else ``(n, n_outputs_)``.

        With ``tta=n`` (images) the predictions of the image and of ``n`` deterministic
        augmented views (flips, shifted crops) are averaged.
        """
        return self._target.decode(self, self._predict_outputs(X))
