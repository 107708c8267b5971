"""Learning-rate schedules (stepped per batch) and the LR range test behind ``lr="auto"``.

* ``"warmup_cosine"``: linear warmup over the first 10% of the steps, then cosine
  decay to 0 (the fine-tuning default).
* ``"warmup_linear"``: the same warmup, then linear decay to 0 (the schedule of
  Hugging Face's ``Trainer`` and so of SetFit; the contrastive ablation compares them).
* ``"onecycle"``: :class:`torch.optim.lr_scheduler.OneCycleLR` (Smith 2018; 25%
  warmup from lr/25, cosine annealing to lr/1e5, momentum / Adam beta1 cycled);
  runs shorter than 8 steps use ``"warmup_cosine"``.
* ``"constant"``: the rate never changes.

Per-group rates (``layer_decay``) are kept: every schedule multiplies each group's
own base rate.

:func:`lr_range_test` is fastai's ``lr_find``: a throwaway copy of the net trains on
exponentially increasing rates for a few mini-batches; :func:`suggest_lr` picks the
rate from the smoothed loss curve (a tenth of the rate at its minimum, or of where it
starts to climb when a warm-started net shows no descent).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from skorch.callbacks import Callback

SCHEDULES = ("warmup_cosine", "warmup_linear", "onecycle", "constant")
WARMUP_FRACTION = 0.1


def warmup_cosine(step: int, total: int, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """Multiplier of the base rate at ``step`` (0-based) of ``total`` steps."""
    total = max(int(total), 1)
    warmup = max(1, int(round(warmup_fraction * total)))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup + 1) / (total - warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_linear(step: int, total: int, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """As :func:`warmup_cosine`, but decaying linearly (``get_linear_schedule_with_warmup``)."""
    total = max(int(total), 1)
    warmup = max(1, int(round(warmup_fraction * total)))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step - 1) / max(total - warmup, 1))


def make_scheduler(optimizer, schedule: str, total_steps: int):
    """A per-batch torch scheduler for ``schedule`` over ``total_steps`` steps (None: constant)."""
    if schedule == "constant":
        return None
    if schedule == "onecycle" and total_steps < 8:  # too short for three phases
        schedule = "warmup_cosine"
    if schedule == "warmup_cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total_steps)
        )
    if schedule == "warmup_linear":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_linear(step, total_steps)
        )
    if schedule == "onecycle":
        defaults = optimizer.defaults
        momentum = "betas" in defaults or defaults.get("momentum", 0) > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(int(total_steps), 1),
            pct_start=0.25,
            cycle_momentum=momentum,
        )
    raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")


class BatchLRScheduler(Callback):
    """Step a schedule after every training batch; record the rate per epoch as ``lr``.

    The schedule spans ``max_epochs`` epochs of ``ceil(n_train / batch_size)``
    batches; early stopping just ends it sooner. With ``carry`` (``partial_fit``) it
    spans the calls: ``max_epochs`` calls of the first call's size, then it stays at its
    final rate. The recorded ``lr`` is the head
    group's rate on the epoch's last batch.
    """

    def __init__(self, schedule="warmup_cosine", carry=False):
        self.schedule = schedule
        self.carry = carry  # partial_fit: one schedule over the calls, not one per call

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        if self.carry and getattr(self, "scheduler_", None) is not None:
            return  # (its total: the first call's batches x max_epochs)
        n_batches = math.ceil(len(X) / net.batch_size)
        self.total_ = n_batches * net.max_epochs
        self.steps_ = 0
        self.scheduler_ = make_scheduler(net.optimizer_, self.schedule, self.total_)
        self.last_lr_ = net.optimizer_.param_groups[0]["lr"]

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            self.last_lr_ = net.optimizer_.param_groups[0]["lr"]

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.scheduler_ is not None and self.steps_ < self.total_ - 1:
            self.scheduler_.step()
        self.steps_ += int(bool(training))

    def on_epoch_end(self, net, **kwargs):
        net.history.record("lr", float(self.last_lr_))


# --------------------------------------------------------------------------- LR range test
def _centered_mean(values, window):
    """Running mean over a centred window (no lag, unlike an exponential average)."""
    half = window // 2
    padded = np.pad(values, half, mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def suggest_lr(lrs, losses, margin: float = 0.05) -> float:
    """Pick a learning rate from an LR range test, as fastai's ``lr_find`` does.

    The per-batch losses are smoothed with a centred running mean (a tenth of the
    steps wide) and cut where they diverge (4x the minimum, or not finite).

    The starting loss and its noise come from the first fifth of the steps; a
    change counts when it exceeds ``margin`` (relative) and three noise levels.

    * A real descent (the minimum clearly below the start): a tenth of the rate at
      the minimum (fastai's ``lr_min / 10``).
    * No descent (a warm-started net, e.g. a probe head, whose loss is flat until it
      blows up): a tenth of the rate from which the loss stays above the start,
      the same order-of-magnitude safety factor.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    raw = np.asarray(losses, dtype=np.float64)
    if len(lrs) == 0:
        raise ValueError("the LR range test recorded no losses")
    n = len(raw) if np.all(np.isfinite(raw)) else int(np.argmin(np.isfinite(raw)))
    if n < 2:
        return float(lrs[0] / 10.0)
    window = max(3, n // 10) | 1
    smooth = _centered_mean(raw[:n], window)
    running_min = np.minimum.accumulate(smooth)
    diverged = np.flatnonzero(smooth > 4 * running_min)
    if diverged.size:
        smooth = smooth[: max(int(diverged[0]), 2)]
    # the start: tiny rates barely change the net, so the first steps show the noise
    n_ref = max(window, len(smooth) // 5)
    ref = float(np.mean(raw[:n_ref]))
    noise = float(np.std(raw[:n_ref])) / np.sqrt(window)
    threshold = max(margin * abs(ref), 3 * noise)
    best = int(np.argmin(smooth))
    if smooth[best] < ref - threshold:
        return float(lrs[best] / 10.0)
    below = np.flatnonzero(smooth <= ref + threshold)  # the climb: above for good after
    end = min(int(below[-1]) + 1, len(smooth) - 1) if below.size else 0
    return float(lrs[end] / 10.0)


def lr_range_test(
    net,
    dataset,
    collate,
    make_optimizer,
    loss_fn,
    *,
    batch_size: int,
    n_iter: int,
    seed: int,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
) -> tuple[float, dict]:
    """Run the LR range test on a copy of ``net``; returns ``(suggested_lr, curve)``.

    Parameters
    ----------
    net : torch.nn.Module
        Trained in place on a deep copy; ``net`` itself is not modified.
    dataset, collate
        The training split and its collate function (batches ``(x, target)``).
    make_optimizer : callable
        ``module, lr -> optimizer`` (the same parameter groups as the real fit; each
        group keeps its ratio to ``lr``).
    loss_fn : callable
        ``(module, batch) -> scalar loss``.
    batch_size, n_iter, seed : int
        Mini-batch size, number of steps (the loader is cycled) and shuffling seed.
    start_lr, end_lr : float
        The rate grows exponentially from ``start_lr`` to ``end_lr``.

    Returns
    -------
    lr : float
    curve : dict
        ``{"lrs": [...], "losses": [...]}`` (raw per-batch losses).
    """
    from sktransfer.training.loaders import training_loader

    model = copy.deepcopy(net)
    model.train()
    optimizer = make_optimizer(model, start_lr)
    ratios = [g["lr"] / start_lr for g in optimizer.param_groups]
    gen = torch.Generator()
    gen.manual_seed(seed)
    loader = training_loader(
        dataset, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=gen
    )
    n_iter = max(int(n_iter), 2)
    gamma = (end_lr / start_lr) ** (1.0 / (n_iter - 1))
    lrs, losses, best = [], [], math.inf
    batches = iter(loader)
    for step in range(n_iter):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        lr = start_lr * gamma**step
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        lrs.append(lr)
        losses.append(value)
        best = min(best, value)
        if not math.isfinite(value) or (step > 5 and value > 8 * best):
            break
    del model, optimizer
    return suggest_lr(lrs, losses), {"lrs": lrs, "losses": losses}
