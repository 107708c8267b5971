"""Regression: real-valued targets, standardised for the loss, a ridge head, R².

``y`` of shape ``(n,)`` or ``(n, k)``. Each output is standardised over the training
set (``(y - y_mean_) / y_scale_``; a constant output keeps scale 1): the head and the
network predict standardised values, which keeps the fine-tuning loss and learning
rates independent of the targets' units, and :meth:`Regression.output_module` maps
them back (``out * y_scale_ + y_mean_``), in ``predict`` and in an exported ONNX graph
alike. The frozen head is ridge regression solved exactly
(:func:`sktransfer.training.heads.fit_ridge_head`); the per-output scaling changes
both terms of its objective alike, so it is ``Ridge(alpha)``'s solution on the
original targets.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import nn

from sktransfer._estimator.targets import Encoded, Target, weighted_mean
from sktransfer.training.heads import fit_ridge_head


def check_targets(y, n_samples):
    """``y`` as float64 of shape ``(n, k)`` and its original ndim (1 or 2); a value that is
    not a finite number is named by its index (``y[i]`` or ``y[i, j]``)."""
    if y is None:
        raise ValueError(
            "this regressor requires y to be passed, but the target y is None: "
            "pass one value (or one row of values) per sample"
        )
    raw = np.asarray(y)
    if raw.dtype.kind in "USa" and not isinstance(y, np.ndarray):  # a list mixing str and numbers
        raw = np.asarray(y, dtype=object)  # keeps each value as given, to name the bad one
    if raw.ndim not in (1, 2):
        raise ValueError(
            f"y must have shape (n_samples,) or (n_samples, n_outputs), got {raw.shape}"
        )
    if len(raw) != n_samples:
        raise ValueError(f"X has {n_samples} samples but y has {len(raw)} rows")
    if raw.ndim == 2 and raw.shape[1] == 0:
        raise ValueError("y has 0 outputs; pass at least one target column")
    if raw.dtype.kind not in "biuf":  # object / string arrays: every value must be a number
        for idx in np.ndindex(raw.shape):
            value = raw[idx]
            if not isinstance(value, numbers.Real):
                value = value.item() if isinstance(value, np.generic) else value
                raise TypeError(f"{_name(idx)} is {value!r}; regression targets must be numbers")
    values = raw.astype(np.float64)
    values = values.reshape(len(raw), -1)
    finite = np.isfinite(values)
    if not finite.all():
        flat = int(np.argmin(finite.ravel()))
        i, j = divmod(flat, values.shape[1])
        idx = (i,) if raw.ndim == 1 else (i, j)
        raise ValueError(
            f"{_name(idx)} is {values[i, j]}; regression targets must be finite (no NaN or inf)"
        )
    return values, raw.ndim


def _moments(values, sample_weight):
    """Per-output weighted mean and standard deviation, computed without overflow.

    Weighted, as a sample of weight 2 counts as two copies of it. The deviations are
    divided by their largest magnitude before squaring (``1e155 ** 2`` overflows float64
    and gave an infinite scale, then NaN predictions). A constant output (relative spread
    at rounding level) is centred only (scale 1), or scaled to deviations of at most 1
    when the mean's rounding leaves larger ones (1e98 * ones: the head's float32 bias was
    inf). What still cannot be represented (an
    output spanning more than float64's range) is refused, naming the output."""
    mean = np.average(values, axis=0, weights=sample_weight)
    dev = values - mean
    top = np.max(np.abs(dev), axis=0)
    if not (np.isfinite(mean).all() and np.isfinite(top).all()):
        j = int(np.argmin(np.isfinite(mean) & np.isfinite(top)))
        raise ValueError(
            f"y[:, {j}] spans more than float64 can represent (mean {mean[j]:.3g}, range "
            "beyond 1.8e308); rescale the target"
        )
    safe = np.where(top > 0, top, 1.0)
    scale = safe * np.sqrt(np.average((dev / safe) ** 2, axis=0, weights=sample_weight))
    tiny = (scale <= 10 * np.finfo(np.float64).eps * np.abs(mean)) | (
        scale < np.finfo(np.float64).tiny
    )
    # a constant output: centred only; at a large magnitude the mean's rounding leaves
    # deviations far above 1 (1e82 around 1e98: inf in float32), so they are scaled to <= 1
    scale[tiny] = np.maximum(top[tiny], 1.0)
    return mean, scale


def _name(idx):
    return f"y[{', '.join(str(int(i)) for i in idx)}]"


class Standardise(nn.Module):
    """Network outputs (standardised units) -> predictions: ``out * scale + mean``, in the
    input's dtype (float64 in ``predict``, float32 in an ONNX graph)."""

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float64)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float64)))

    def forward(self, out):
        return out * self.scale.to(out.dtype) + self.mean.to(out.dtype)


class Regression(Target):
    """``y``: finite numbers, ``(n,)`` or ``(n, k)``; fitted ``y_mean_``, ``y_scale_``
    (float64, shape ``(k,)``) and ``y_ndim_`` (1: ``predict`` returns ``(n,)``)."""

    name = "regression"
    metric = "valid_r2"

    def encode(self, est, y, n_samples, sample_weight=None, previous=None):
        values, ndim = check_targets(y, n_samples)
        if previous is not None:  # partial_fit / warm_start: the first call's scaling
            mean, scale = previous["y_mean_"], previous["y_scale_"]
            if values.shape[1] != len(np.atleast_1d(mean)) or ndim != previous["y_ndim_"]:
                raise ValueError(
                    f"y has {values.shape[1]} output(s) (ndim {ndim}); the first call had "
                    f"{len(np.atleast_1d(mean))} (ndim {previous['y_ndim_']})"
                )
        else:
            mean, scale = _moments(values, sample_weight)
        attrs = {"y_mean_": mean, "y_scale_": scale, "y_ndim_": int(ndim)}
        return Encoded((values - mean) / scale, values.shape[1], attrs, stratify=None)

    def solve_head(self, est, features, values, sample_weight, n_outputs):
        """``Ridge(alpha)``'s head; ``alpha="auto"``: the leave-one-out pick
        (:func:`loo_alpha`). ``info["alpha_"]`` is the strength used."""
        if est.alpha == "auto":
            alpha = loo_alpha(features, values, sample_weight)
        else:
            alpha = float(est.alpha)
        head, info = fit_ridge_head(features, values, sample_weight, alpha=alpha)
        return head, {**info, "alpha_": alpha}

    def probe_head(self, est, features, values, sample_weight, n_outputs):
        """The LP-FT head: ridge at ``max(alpha, the leave-one-out strength)``
        (:func:`loo_alpha`). Fine-tuning starts from it; a head at a fixed ``alpha=1`` on
        1,280 features of 900 images interpolates the training targets (train MSE 0.002,
        test R² -2.5 on rotated Fashion-MNIST), so the fine-tune starts from a
        zero-gradient, overfitted point (``benchmarks/diagnose_finetune.py``). ``alpha``
        stays a floor (``"auto"``: :data:`PROBE_FLOOR`, ``Ridge``'s default): a weakly
        regularised head with large weights turns the small feature changes of the first
        training steps into large output errors (with no floor, full fine-tuning of a
        tiny CNN ended at 3x the training MSE of the frozen head in tests)."""
        floor = PROBE_FLOOR if est.alpha == "auto" else float(est.alpha)
        alpha = max(floor, loo_alpha(features, values, sample_weight))
        return fit_ridge_head(features, values, sample_weight, alpha=alpha)

    def loss(self, outputs, targets, weights):
        losses = ((outputs.float() - targets.float()) ** 2).mean(dim=1)
        return weighted_mean(losses, weights)

    def score(self, outputs, targets):
        """R² as ``sklearn.metrics.r2_score`` (uniform average over outputs; an output
        constant over the validation set scores 1 when predicted exactly, else 0). R² is
        invariant to the per-output standardisation, so standardised units give the
        original units' score."""
        outputs, targets = outputs.double(), targets.double()
        ss_res = ((targets - outputs) ** 2).sum(dim=0)
        ss_tot = ((targets - targets.mean(dim=0)) ** 2).sum(dim=0)
        r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), (ss_res == 0).double())
        return float(r2.mean())

    def output_module(self, est):
        return Standardise(est.y_mean_, est.y_scale_)

    def decode(self, est, outputs):
        return outputs.ravel() if est.y_ndim_ == 1 else outputs


#: the ridge strengths :func:`loo_alpha` tries, relative to the mean eigenvalue of the
#: centred features' Gram matrix (so that the grid follows the features' scale)
LOO_GRID = np.logspace(-4, 3, 22)
#: the least ridge strength of the head fine-tuning starts from when ``alpha="auto"``
PROBE_FLOOR = 1.0


def loo_alpha(features, values, sample_weight=None):
    """The ridge strength of :data:`LOO_GRID` with the smallest weighted leave-one-out
    squared error (the closed form of ``RidgeCV``: residual / (1 - leverage), one SVD)."""
    X = np.asarray(features, dtype=np.float64)
    Y = np.asarray(values, dtype=np.float64).reshape(len(X), -1)
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    keep = w > 0
    X, Y, w = X[keep], Y[keep], w[keep]
    root = np.sqrt(w / w.sum())[:, None]
    Xc = (X - w @ X / w.sum()) * root
    Yc = (Y - w @ Y / w.sum()) * root
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    s2 = s**2
    scale = s2.sum() / max(len(s2), 1)
    UtY = U.T @ Yc
    lev0 = root[:, 0] ** 2  # the intercept's leverage
    best, best_err = 1.0, np.inf
    for rel in LOO_GRID:
        alpha = rel * scale
        shrink = s2 / (s2 + alpha)
        resid = Yc - U @ (shrink[:, None] * UtY)
        lev = np.clip((U**2) @ shrink + lev0, 0.0, 1.0 - 1e-9)
        err = float(((resid / (1.0 - lev)[:, None]) ** 2).sum())
        if err < best_err:
            best, best_err = alpha, err
    # Xc carries weights summing to 1; fit_ridge_head's objective weighs by w
    return float(best * w.sum())
