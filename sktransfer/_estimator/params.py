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
    "freeze_depth": [
        StrOptions({"all", "auto"}),
        Interval(numbers.Integral, None, None, closed="neither"),
    ],
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
    "regularizer": [None, StrOptions({"l2sp", "lwf", "delta", "bss"})],
    "regularizer_strength": [None, Interval(numbers.Real, 0, None, closed="left")],
    "warm_start": ["boolean"],
    "precision": [StrOptions({"auto", "fp32", "bf16"})],
    "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
    "compile": ["boolean"],
    "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "optimizer": [StrOptions({"adamw", "adam", "sgd"}), type],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "head_init": [StrOptions({"probe", "random"})],
    "early_stopping": ["boolean", StrOptions({"auto"})],
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
    check_label_types(y)
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


def _label_kind(label):
    if isinstance(label, (str, bytes, np.str_, np.bytes_)):
        return "string"
    if isinstance(label, (numbers.Number, np.number, np.bool_)):
        return "number"
    return None


def check_label_types(y):
    """Refuse labels mixing strings and numbers, as scikit-learn does ("Mix of label input
    types"): ``np.asarray([1, "1", 2])`` would turn the number 1 into the string "1" and
    merge two classes. Naming the first label of each kind."""
    if isinstance(y, np.ndarray) and y.dtype != object:
        return  # one dtype: nothing was mixed
    values = np.asarray(y, dtype=object).ravel()
    first = {}
    for i, label in enumerate(values):
        kind = _label_kind(label)
        if kind is not None:
            first.setdefault(kind, i)
        if len(first) == 2:
            s, n = first["string"], first["number"]
            raise ValueError(
                f"Mix of label input types (string and number): y[{n}] is {values[n]!r} and "
                f"y[{s}] is {values[s]!r}; use one type for all labels"
            )


def check_class_weight(class_weight):
    """A ``class_weight`` dict maps labels to finite, non-negative weights."""
    if not isinstance(class_weight, dict):
        return
    for label, weight in class_weight.items():
        ok = isinstance(weight, numbers.Real) and np.isfinite(weight) and weight >= 0
        if not ok:
            raise ValueError(
                f"class_weight[{label!r}] is {weight!r}; class weights must be finite "
                "numbers >= 0"
            )


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
    if not np.isfinite(sw.sum()):
        raise ValueError(
            "sample_weight sums to inf in float64; divide the weights by a common factor "
            "(only their ratios and their size relative to the regularisation matter)"
        )
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
