"""Target kinds: everything a fit does differently for single-label, multi-label or
regression targets, behind one small interface (:class:`Target`).

The shared skeleton (:mod:`sktransfer._estimator.base`) runs inputs -> backbone blocks ->
cache -> head / training and asks its target for the rest: how ``y`` is validated and
encoded (label encoding, target scaling), the exact frozen-mode head solver, the
fine-tuning loss, the validation metric recorded in ``history_``, and how the network's
outputs become ``predict`` / ``predict_proba`` results. A new kind of target is one new
module here plus its two thin estimator classes (image and text).

A target holds no state: what it learns from ``y`` (``classes_``, the target scaling) is
returned as fitted attributes of the estimator, so pickling and the safe format see plain
attributes only; ``target_type_`` names the target of a fitted estimator.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass
class Encoded:
    """``y`` as the training loop sees it.

    values : per-sample targets (int64 class indices, or float32 rows of width
        ``n_outputs``); stratify : labels to stratify the validation split on, or None;
    attrs : fitted attributes to set on the estimator; weights : per-sample multipliers
        of ``sample_weight`` (``class_weight``), or None.
    """

    values: np.ndarray
    n_outputs: int
    attrs: dict
    stratify: np.ndarray | None = None
    weights: np.ndarray | None = None


class Target:
    """Interface of a target kind (see the module docstring)."""

    name = ""
    metric = ""  # history_ key of the validation metric, e.g. "valid_acc"

    def encode(self, est, y, n_samples, sample_weight=None, previous=None) -> Encoded:
        """Validate ``y`` and encode it; ``sample_weight`` (validated, or None) lets a
        target scale ``y`` as the weighted objective sees it. ``previous``: the attributes
        an earlier call fixed (``classes_``, ``y_mean_``, ...: ``partial_fit``,
        ``warm_start``); ``y`` is then encoded with them, and must fit them."""  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def accepts(y) -> bool:
        """Whether this target reads ``y`` (a classifier tries its targets in order)."""
        return True

    def solve_head(self, est, features, values, sample_weight, n_outputs):  # pragma: no cover
        """The exact frozen-mode head on ``features``: ``(nn.Linear(d, n_outputs), info)``
        with ``info["train_loss"]`` and ``info["n_iter"]``."""
        raise NotImplementedError

    def probe_head(self, est, features, values, sample_weight, n_outputs):
        """The head fine-tuning starts from (LP-FT, ``head_init="probe"``): by default
        the frozen-mode head; a target may regularise it differently (regression)."""
        return self.solve_head(est, features, values, sample_weight, n_outputs)

    def loss(self, outputs, targets, weights):  # pragma: no cover - abstract
        """Weighted mean training loss of a batch (float32 outputs, targets on device)."""
        raise NotImplementedError

    def score(self, outputs, targets) -> float:  # pragma: no cover - abstract
        """The validation metric on the whole validation set (``metric`` in history_)."""
        raise NotImplementedError

    def output_module(self, est) -> nn.Module:  # pragma: no cover - abstract
        """Network outputs -> what ``predict_proba`` (classifiers) or ``predict``
        (regressors) return; a module so that ONNX export runs the same arithmetic."""
        raise NotImplementedError

    def decode(self, est, outputs: np.ndarray):  # pragma: no cover - abstract
        """``output_module``'s result -> ``predict``'s result."""
        raise NotImplementedError


def weighted_mean(losses, weights):
    """``sum(w * loss) / sum(w)`` over a batch; a batch whose weights are all zero gives 0
    (no gradient), not 0/0. A zero-weight sample never contributes, even a non-finite loss.
    The training weights arrive scaled to at most 1 (:func:`training_weights`)."""
    weights = weights.to(losses.dtype)
    total = weights.sum()
    terms = torch.where(weights > 0, losses * weights, torch.zeros_like(losses))
    return terms.sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


def training_weights(sample_weight):
    """The fine-tuning loss's per-sample weights: ``sample_weight / max(sample_weight)``.

    A per-batch weighted mean does not change when every weight is scaled alike, and in
    float32 a weight of 1e39 (finite in float64) would be inf and the loss NaN."""
    top = float(np.max(sample_weight)) if len(sample_weight) else 0.0
    return sample_weight / top if top > 0 else sample_weight
