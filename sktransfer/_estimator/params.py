"""Shared constructor-parameter constraints; checks of sample weights, labels and outputs.

The family bases add their own: the classifier's ``C`` and ``class_weight``
(:mod:`.classifier`), the regressor's ``alpha`` (:mod:`.regressor`).
"""

from __future__ import annotations

import numbers
import os

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, column_or_1d

from sktransfer.training.schedules import SCHEDULES

COMMON_CONSTRAINTS = {
    "freeze_depth": [StrOptions({"all"}), Interval(numbers.Integral, None, None, closed="neither")],
    "lr": [Interval(numbers.Real, 0, None, closed="neither"), StrOptions({"auto"})],
    "lr_schedule": [StrOptions(set(SCHEDULES))],
    "layer_decay": [None, Interval(numbers.Real, 0, 1, closed="right")],
    "adapter": [None, StrOptions({"lora"})],
    "lora_rank": [Interval(numbers.Integral, 1, None, closed="left")],
    "lora_alpha": [Interval(numbers.Real, 0, None, closed="neither")],
    "lora_dropout": [Interval(numbers.Real, 0, 1, closed="left")],
    "unfreeze_schedule": [None, Interval(numbers.Integral, 1, None, closed="left")],
    "l2sp_alpha": [Interval(numbers.Real, 0, None, closed="left")],
    "l2sp_beta": [Interval(numbers.Real, 0, None, closed="left")],
    "precision": [StrOptions({"auto", "fp32", "bf16"})],
    "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
    "compile": ["boolean"],
    "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "optimizer": [StrOptions({"adamw", "adam", "sgd"}), type],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "head_init": [StrOptions({"probe", "random"})],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
    "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
    "device": [str],
    "cache_dir": [None, str, os.PathLike],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}


def check_labels(y, n_samples):
    """Validate ``y`` for classification; returns it as a 1-D ndarray."""
    if y is None:
        raise ValueError(
            "this classifier requires y to be passed, but the target y is None: "
            "pass one label per sample"
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)  # DataConversionWarning, as scikit-learn does
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per sample), got shape {y.shape}")
    if len(y) != n_samples:
        raise ValueError(f"X has {n_samples} samples but y has {len(y)} labels")
    for i, label in enumerate(y):
        if label is None or (isinstance(label, (float, np.floating)) and np.isnan(label)):
            raise ValueError(f"y[{i}] is missing ({label!r}); labels must not be None or NaN")
    check_classification_targets(y)
    return y


def check_weights(sample_weight, n_samples):
    """``sample_weight`` as float64 of shape ``(n_samples,)`` (ones when None).

    Weights must be finite (scikit-learn's check), not all zero (likewise) and
    non-negative; a negative one is named by its index.
    """
    sw = _check_sample_weight(sample_weight, np.empty((n_samples, 0)), dtype=np.float64)
    bad = np.flatnonzero(~(sw >= 0))  # NaN fails the comparison too
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"sample_weight[{i}] is {float(sw[i])}; sample weights must be >= 0")
    return sw


def check_finite_rows(rows, what):
    """Raise ``ValueError`` naming the first sample whose row holds NaN or inf."""
    rows = np.asarray(rows)
    finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(
            f"Sample {i}: {what} has NaN or infinite values; check the input and the "
            "backbone (a model that predicts NaN is never returned)."
        )


def check_finite_weights(module):
    """After training: every trainable weight is finite, or ``ValueError``."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.requires_grad and not bool(torch.isfinite(p).all()):
                raise ValueError(
                    f"fine-tuning diverged: weight {name!r} is not finite; the estimator "
                    "is left unfitted. Try a lower lr."
                )
