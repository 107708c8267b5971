"""The fine-tuning loop's own skorch callbacks: early stopping that a Ctrl-C is never
mistaken for, an epoch table a reader can read, and the target's validation metric.

The schedules (:class:`~sktransfer.training.schedules.BatchLRScheduler`) and L2-SP
(:class:`~sktransfer.training.regularization.L2SP`) are callbacks too, in their own modules.
"""

from __future__ import annotations

import torch
from skorch.callbacks import Callback, EarlyStopping, PrintLog


class StopTraining(Exception):
    """Early stopping's end of training (skorch signals it with ``KeyboardInterrupt``)."""


class StopEarly(EarlyStopping):
    """skorch's :class:`~skorch.callbacks.EarlyStopping`, ending the loop with its own
    exception so that a user's Ctrl-C is never mistaken for it."""

    def on_epoch_end(self, net, **kwargs):
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            if self.misses_ == self.patience:
                raise StopTraining() from None
            raise


class EpochTable(PrintLog):
    """skorch's epoch table with numbers a reader can read: 4 significant digits (a
    learning rate of 3e-05 is not ``0.0000``) and no ANSI colour codes unless stdout is a
    terminal (a log file or a notebook capture stays clean)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("floatfmt", ".4g")
        super().__init__(*args, **kwargs)

    def format_row(self, row, key, color):
        if not _stdout_is_terminal():
            color = ""
        text = super().format_row(row, key, color)
        return text.replace("\x1b[0m", "") if not color and isinstance(text, str) else text


def _stdout_is_terminal():
    import sys

    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


class ValidMetric(Callback):
    """Per-epoch validation metric of the fit's target (``valid_acc``, ``valid_r2``, ...),
    from the validation batches' outputs, kept on the device until the epoch ends."""

    def __init__(self, target):
        self.target = target

    def on_epoch_begin(self, net, **kwargs):
        self.outputs_, self.targets_ = [], []

    def on_batch_end(self, net, batch=None, training=None, y_pred=None, **kwargs):
        if training or y_pred is None:
            return
        self.outputs_.append(y_pred.detach())
        self.targets_.append(batch[1][0].to(y_pred.device, non_blocking=True))

    def on_epoch_end(self, net, **kwargs):
        if self.outputs_:
            outputs, targets = torch.cat(self.outputs_).float(), torch.cat(self.targets_)
            net.history.record(self.target.metric, self.target.score(outputs, targets))
        self.outputs_, self.targets_ = [], []

