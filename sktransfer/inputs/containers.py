"""What the image and text input adapters share: a user's container -> a list, targets."""

from __future__ import annotations

import os

import numpy as np


def to_list(X, what):
    """Turn a container (list, tuple, Series, DataFrame column, iterable) into a list."""
    if isinstance(X, (str, bytes, os.PathLike)):
        name = type(X).__name__
        raise TypeError(f"Expected a list of {what}, got one {name}; pass [{X!r}].")
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # pandas DataFrame
        if X.shape[1] != 1:
            raise ValueError(f"Expected one DataFrame column, got {X.shape[1]}.")
        X = X.iloc[:, 0]
    if hasattr(X, "iloc"):  # pandas Series
        return list(X)
    if isinstance(X, np.ndarray):
        if X.ndim == 2 and X.shape[1] == 1:
            X = X[:, 0]
        if X.ndim != 1:
            raise ValueError(f"Expected a 1-D array of {what}, got shape {X.shape}.")
        return list(X)
    if hasattr(X, "__iter__") and not isinstance(X, dict):
        return list(X)
    raise TypeError(f"Expected a list of {what}, got {type(X).__name__}.")


def as_targets(y, n):
    if y is None:
        return None
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    if len(y) != n:
        raise ValueError(f"y has {len(y)} entries but X has {n} samples.")
    return y
