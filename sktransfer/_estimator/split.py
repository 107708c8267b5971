"""The fine-tuning validation split (early stopping and ``history_`` are measured on it)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import train_test_split

#: ``early_stopping="auto"`` holds out a validation split when it would have at least this
#: many samples (n >= 1,000 at the default ``validation_fraction=0.1``). Below it the split
#: cannot tell epochs apart and costs a tenth of the few labels: at 32 per class, fine-tuning
#: without it was ahead (up to 3 points) or level within noise on every set of
#: ``benchmarks/bench_strategies.py`` (docs/strategies.md, the early-stopping table).
AUTO_MIN_VALID = 100


def early_stopping_enabled(early_stopping, n_samples, fraction) -> bool:
    """Whether ``early_stopping`` (True, False or "auto") holds out a split of ``n_samples``."""
    if early_stopping == "auto":
        return int(round(fraction * n_samples)) >= AUTO_MIN_VALID
    return bool(early_stopping)


def validation_split(encoded, seed, *, early_stopping, fraction):
    """``(train_idx, valid_idx or None)`` of the encoded ``y``: stratified when the target
    says on what (``encoded.stratify``), or no split (with a warning) when there are too
    few samples for one, or without early stopping (``"auto"``: :data:`AUTO_MIN_VALID`)."""
    n = len(encoded.values)
    if not early_stopping_enabled(early_stopping, n, fraction):
        return np.arange(n), None
    n_valid = int(round(fraction * n))
    strata = encoded.stratify
    n_strata = 1 if strata is None else len(np.unique(strata))
    too_few = n_valid < max(n_strata, 1) or n - n_valid < max(n_strata, 1)
    if strata is not None and np.bincount(strata).min() < 2:
        too_few = True
    if too_few:
        kind = "stratified " if strata is not None else ""
        warnings.warn(
            f"too few samples for a {kind}validation split; training without early stopping",
            stacklevel=5,  # (-> _split -> _fit_net -> fit -> the caller)
        )
        return np.arange(n), None
    train_idx, valid_idx = train_test_split(
        np.arange(n), test_size=n_valid, stratify=strata, random_state=seed
    )
    return np.sort(train_idx), np.sort(valid_idx)
