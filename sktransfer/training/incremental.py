"""Incremental training: one epoch per ``partial_fit`` call, as ``MLPClassifier`` does.

:class:`IncrementalTrainer` keeps what must survive between calls: the skorch net (its
optimizer state and history), the training-order generator, the learning-rate schedule
(one schedule of ``max_epochs`` epochs spanning the calls,
:class:`~sktransfer.training.schedules.BatchLRScheduler` with ``carry``) and the
early-stopping state. Early stopping across calls: each call's validation loss is
compared with the best so far; after ``n_iter_no_change`` calls without improvement the
best weights are restored and later calls train no more (``stopped``). The global random
streams (dropout, augmentation) go on from call to call, so ``n`` calls on the same data
train as ``fit`` with ``max_epochs=n`` does.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from skorch.helper import predefined_split

from sktransfer.training.loop import TrainConfig, _Interrupted, build_net, history_records


class IncrementalTrainer:
    """Trains ``net`` one epoch at a time on the data each call brings."""

    def __init__(self, net, collate, cfg: TrainConfig, start=0):
        self.cfg = cfg
        self.net = net
        self.start = start  # the block the (cached) training inputs enter
        self.skorch_net = build_net(net, collate, cfg, carry_schedule=True)
        self.best_loss = math.inf
        self.best_state = None
        self.misses = 0
        self.stopped = False
        self.epochs = 0
        self.rng = None  # the global generators' states after the last epoch

    def epoch(self, train_ds, valid_ds) -> list[dict]:
        """One epoch over ``train_ds``; its history record (none once stopped)."""
        if self.stopped:
            return []
        sk = self.skorch_net
        sk.train_split = predefined_split(valid_ds) if valid_ds is not None else None
        self.net.input_block = self.start
        if self.rng is not None:  # the random streams go on where the last call left them
            _set_rng(self.rng, self.cfg.device)
        try:
            sk.partial_fit(train_ds, y=None, epochs=1)
            self.rng = _get_rng(self.cfg.device)
        except _Interrupted:
            raise KeyboardInterrupt from None
        finally:
            sk.close_loaders()
            self.net.input_block = 0
        self.epochs += 1
        row = sk.history[-1]
        best = None
        if self.cfg.early_stopping and valid_ds is not None:
            best = self._early_stopping(float(row["valid_loss"]), int(row["epoch"]))
        return history_records([row], self.cfg.target.metric, best)

    def _early_stopping(self, loss: float, epoch: int):
        """Track the best validation loss over the calls; returns the best epoch."""
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.misses = loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        else:
            self.misses += 1
            if self.misses >= self.cfg.n_iter_no_change:
                with torch.no_grad():
                    self.net.load_state_dict(self.best_state)
                self.stopped = True
        return self.best_epoch


def _get_rng(device):
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "random": random.getstate()}  # fmt: skip
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng(state, device):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
