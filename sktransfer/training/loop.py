"""Training: the skorch fine-tuning loop (frozen mode's head solvers: :mod:`.heads`).

* Fine-tuning: a :class:`skorch.NeuralNet` drives the epochs. It is wrapped, not
  inherited by the estimators: it only sees the trainable parameters, keeps the
  frozen blocks in eval mode (``TransferNet.train``), weighs the loss by
  ``sample_weight`` and records validation accuracy. Per-block parameter groups
  (``layer_decay``), per-batch schedules (:mod:`sktransfer.training.schedules`), L2-SP
  (:mod:`sktransfer.training.regularization`, a callback), bf16 autocast and channels-last
  are options of
  :class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from skorch import NeuralNet
from skorch.callbacks import ProgressBar
from skorch.dataset import get_len
from skorch.helper import predefined_split
from skorch.utils import to_tensor
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sktransfer.runtime.device import autocast, to_device
from sktransfer.runtime.process_group import all_sum, broadcast_module
from sktransfer.training.callbacks import EpochTable, StopEarly, StopTraining, ValidMetric
from sktransfer.training.loaders import training_loader
from sktransfer.training.schedules import BatchLRScheduler, lr_range_test

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class NonFiniteLossError(ValueError):
    """Fine-tuning produced a NaN or infinite loss: training stopped, nothing is kept."""


class _Interrupted(BaseException):
    """A ``KeyboardInterrupt`` carried past skorch, whose ``partial_fit`` swallows it."""




@dataclasses.dataclass
class TrainConfig:
    """Everything one fine-tuning run needs besides the net and the data."""

    lr: float
    max_epochs: int
    batch_size: int
    optimizer: Any
    weight_decay: float
    device: Any
    seed: int
    target: Any  # the fit's target piece: the loss and the validation metric
    early_stopping: bool = True
    n_iter_no_change: int = 3
    verbose: int = 0
    lr_schedule: str = "warmup_cosine"
    layer_decay: float | None = None
    regularizer: Any = None  # a callback of sktransfer.training.regularization, or None
    precision: str = "fp32"  # resolved: "fp32" | "bf16"
    channels_last: bool = False
    num_workers: int = 0
    compile: bool = False
    world: Any = None  # a sktransfer.runtime.process_group.World: data-parallel, or None

    @property
    def optimizer_class(self):
        return OPTIMIZERS[self.optimizer] if isinstance(self.optimizer, str) else self.optimizer


def param_groups(net, lr, cfg: TrainConfig) -> list[dict]:
    """Optimizer groups of ``net``'s trainable parameters.

    The head (and the pool) get ``lr``; block ``i`` gets ``lr * layer_decay ** (n - i)``
    (the last block one factor, the one below it two, ...). With L2-SP the penalty
    replaces weight decay in every group.
    """
    wd = 0.0 if getattr(cfg.regularizer, "replaces_weight_decay", False) else cfg.weight_decay
    n = len(net.blocks)
    top = [p for m in (net.head, net.pool) for p in m.parameters() if p.requires_grad]
    groups = [{"params": top, "lr": lr, "weight_decay": wd}] if top else []
    for i, block in enumerate(net.blocks):
        params = [p for p in block.parameters() if p.requires_grad]
        if params:
            scale = cfg.layer_decay ** (n - i) if cfg.layer_decay is not None else 1.0
            groups.append({"params": params, "lr": lr * scale, "weight_decay": wd})
    if cfg.layer_decay is None and len(groups) > 1:  # one group is enough
        groups = [
            {"params": [p for g in groups for p in g["params"]], "lr": lr, "weight_decay": wd}
        ]
    return groups


class TransferNeuralNet(NeuralNet):
    """skorch net over a :class:`~sktransfer.freezing.TransferNet`.

    Batches are ``(x, (labels, weights))``; ``x`` may be a dict (text) and is
    passed to the module whole. ``config`` adds the parameter groups, the L2-SP
    gradient, autocast, channels-last and an optional compiled forward.
    """

    def __init__(self, *args, config=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = config

    def initialize_module(self):
        super().initialize_module()
        cfg = self.config
        forward = self.module_
        if cfg is not None and cfg.world is not None:  # the forward every step goes through
            device = torch.device(cfg.device)
            forward = DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None
            )
        forward = torch.compile(forward) if cfg and cfg.compile else forward
        object.__setattr__(self, "forward_", forward)  # not a registered skorch module
        return self

    def infer(self, x, **fit_params):
        cfg = self.config
        x = to_device(x, self.device, cfg.channels_last if cfg else False)
        with autocast(self.device, cfg.precision if cfg else "fp32"):
            return self.forward_(x, **fit_params)

    @property
    def _world(self):
        return getattr(self.config, "world", None)

    def get_default_callbacks(self):
        return [
            (name, EpochTable()) if name == "print_log" else (name, cb)  # an instance: last
            for name, cb in super().get_default_callbacks()
        ]

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop; a Ctrl-C leaves it as :class:`_Interrupted`, which
        ``partial_fit`` does not catch (it catches ``KeyboardInterrupt`` and returns a
        half-trained net). :func:`fine_tune` turns it back into ``KeyboardInterrupt``."""
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except StopTraining:
            return self
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc

    def get_loss(self, y_pred, y_true, X=None, training=False):
        targets, weights = (to_tensor(t, device=self.device) for t in y_true)
        loss = self.config.target.loss(y_pred, targets, weights)
        world = self._world
        if training and world is not None:
            # DDP averages the ranks' gradients: scale each rank's weighted mean so that the
            # average is the global batch's weighted mean, whatever the weights
            local = weights.detach().float().sum()
            total = all_sum(local)  # (one small collective per step)
            loss = loss * (local * world.size / total.clamp_min(torch.finfo(total.dtype).tiny))
        reg = self.config.regularizer
        if training and reg is not None and hasattr(reg, "loss_term"):
            loss = loss + reg.loss_term(self.module_, X)
        return loss

    def get_iterator(self, dataset, training=False):
        """skorch makes a new DataLoader every epoch; with worker processes, keep one per dataset.

        Its workers then persist across epochs (``persistent_workers``) instead of being
        started again each epoch. The shuffling order is the same either way: both draw each
        epoch's permutation and worker seed from the one seeded generator.
        """
        key = "iterator_train__num_workers" if training else "iterator_valid__num_workers"
        if not getattr(self, key, 0):
            return super().get_iterator(dataset, training)
        loaders = self.__dict__.setdefault("_loaders", {})
        if (id(dataset), training) not in loaders:
            loaders[(id(dataset), training)] = (dataset, super().get_iterator(dataset, training))
        return loaders[(id(dataset), training)][1]

    def close_loaders(self):
        """Shut the kept DataLoaders' worker processes down."""
        self.__dict__.pop("_loaders", None)

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        """skorch's epoch loop, reading the batch losses back once per epoch, not per batch.

        skorch calls ``loss.item()`` after every batch, a host-device synchronisation that
        stalls the GPU's queue; here the losses stay on the device until the epoch ends and
        are then recorded exactly as skorch records them. With ``verbose`` (a progress bar
        shows the running loss) skorch's own loop runs.
        """
        if iterator is None:
            return None
        if self.verbose and self._world is None:
            super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
        else:
            self._run_epoch_quietly(iterator, training, prefix, step_fn, **fit_params)
        self._check_finite(prefix)
        return None

    def _run_epoch_quietly(self, iterator, training, prefix, step_fn, **fit_params):
        losses, sizes = [], []
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            losses.append(step["loss"].detach())
            sizes.append(get_len(batch[0]) if isinstance(batch, (tuple, list)) else get_len(batch))
            self.notify("on_batch_end", batch=batch, training=training, **step)
        values = torch.stack(losses).float().cpu() if losses else torch.zeros(0)
        if training and self._world is not None:  # the global batches' losses and sizes
            values = all_sum(values) / self._world.size
            sizes = all_sum(torch.tensor(sizes, dtype=torch.int64)).tolist()
        values = values.tolist()
        rows = self.history[-1]["batches"][len(self.history[-1]["batches"]) - len(values) :]
        for row, loss, size in zip(rows, values, sizes):  # on_batch_begin made one row each
            row[prefix + "_loss"] = loss
            row[prefix + "_batch_size"] = size
        self.history.record(prefix + "_batch_count", len(values))

    def _check_finite(self, prefix):
        """Stop at the end of the first epoch with a non-finite batch loss (one read-back
        per epoch, no per-batch sync): the weights are then NaN or diverging, and neither
        early stopping nor the caller may keep them."""
        rows = self.history[-1]["batches"]
        for b, row in enumerate(rows):
            loss = row.get(prefix + "_loss")
            if loss is not None and not math.isfinite(loss):
                epoch = self.history[-1]["epoch"]
                lr = self.config.lr if self.config is not None else self.lr
                raise NonFiniteLossError(
                    f"fine-tuning diverged: the {prefix} loss of epoch {epoch}, batch {b + 1} "
                    f"is {loss}; the estimator is left unfitted. Try a lower lr "
                    f"(this run used lr={lr:g})."
                )

    def get_all_learnable_params(self):
        for name, param in self.module_.named_parameters():
            if param.requires_grad:
                yield name, param

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix == "optimizer" and self.config is not None:
            args = (param_groups(self.module_, kwargs["lr"], self.config),)
        return args, kwargs


HISTORY_KEYS = ("epoch", "train_loss", "valid_loss", "lr", "dur")


def history_records(history, metric, best_epoch=None, epoch_offset=0, phase=None) -> list[dict]:
    out = []
    for row in history:
        rec = {k: float(row[k]) for k in (*HISTORY_KEYS, metric) if k in row}
        rec["epoch"] = int(row["epoch"]) + epoch_offset
        if best_epoch is not None:
            rec["best"] = row["epoch"] == best_epoch
        if phase is not None:
            rec["phase"] = phase
        out.append(rec)
    return out


def fine_tune(
    net, train_ds, valid_ds, collate, cfg: TrainConfig, *, epoch_offset=0, phase=None,
    own_worker_seed=False,
):  # fmt: skip
    """Train ``net``'s unfrozen part with skorch; returns the per-epoch history.

    With a validation set and ``cfg.early_stopping`` the best epoch (lowest
    validation loss) is restored at the end and flagged ``best`` in the history.
    ``own_worker_seed``: the training loader draws its worker seed from a generator of its
    own, not from the one that shuffles (the contrastive path's order is then the seeded
    permutation itself).
    """
    stopper = None
    extra = []
    if cfg.early_stopping and valid_ds is not None:
        stopper = StopEarly(
            monitor="valid_loss", patience=cfg.n_iter_no_change, load_best=True, sink=_null
        )
        extra.append(("early_stopping", stopper))
    skorch_net = build_net(
        net, collate, cfg, valid_ds=valid_ds, callbacks=extra, own_worker_seed=own_worker_seed
    )
    try:
        skorch_net.fit(train_ds, y=None)
    except _Interrupted:
        raise KeyboardInterrupt from None
    finally:
        skorch_net.close_loaders()
    if cfg.world is not None:  # the same fitted network on every rank (BatchNorm buffers too)
        broadcast_module(net)
    best = None
    if stopper is not None:
        best = stopper.best_epoch_ or skorch_net.history[-1, "epoch"]
    return history_records(skorch_net.history, cfg.target.metric, best, epoch_offset, phase)


def build_net(
    net, collate, cfg: TrainConfig, *, valid_ds=None, callbacks=(), own_worker_seed=False,
    carry_schedule=False,
):  # fmt: skip
    """The :class:`TransferNeuralNet` that trains ``net``: the validation metric, the
    per-batch schedule, the regulariser and ``callbacks``; the training order drawn from
    one generator seeded by ``cfg.seed``. ``carry_schedule``: the schedule spans
    ``max_epochs`` epochs over successive ``partial_fit`` calls instead of restarting."""
    callbacks = [
        ("valid_metric", ValidMetric(cfg.target)),
        ("lr", BatchLRScheduler(cfg.lr_schedule, carry=carry_schedule)),
        *(
            # L2-SP: a gradient; the feature regularisers: a loss term too
            [("regularizer", cfg.regularizer)] if cfg.regularizer is not None else []
        ),
        *callbacks,
    ]
    if cfg.verbose:
        callbacks.append(("progress", ProgressBar(postfix_keys=["train_loss"])))
    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    cuda = torch.device(cfg.device).type == "cuda"
    return TransferNeuralNet(
        module=net,
        criterion=nn.Identity,  # unused: get_loss asks the target
        optimizer=cfg.optimizer_class,
        lr=cfg.lr,
        max_epochs=cfg.max_epochs,
        batch_size=cfg.batch_size,
        iterator_train=training_loader,
        iterator_train__worker_seeds=torch.Generator() if own_worker_seed else None,
        iterator_train__world=cfg.world,
        iterator_train__shuffle=True,
        iterator_train__generator=gen,
        iterator_train__collate_fn=collate,
        iterator_valid__collate_fn=collate,
        iterator_train__pin_memory=cuda,
        iterator_valid__pin_memory=cuda,
        iterator_train__num_workers=cfg.num_workers,
        iterator_train__persistent_workers=cfg.num_workers > 0,
        iterator_valid__num_workers=cfg.num_workers,
        iterator_valid__persistent_workers=cfg.num_workers > 0,
        train_split=predefined_split(valid_ds) if valid_ds is not None else None,
        callbacks=callbacks,
        device=cfg.device,
        verbose=int(cfg.verbose),
        config=cfg,
    )


def lr_range_test_for(net, train_ds, collate, cfg: TrainConfig, n_steps: int) -> tuple[float, dict]:
    """:func:`.schedules.lr_range_test` with ``cfg``'s optimizer, groups and loss."""

    def make_optimizer(module, lr):
        return cfg.optimizer_class(param_groups(module, lr, cfg), lr=lr)

    def loss_fn(module, batch):
        x, (targets, weights) = batch
        with autocast(cfg.device, cfg.precision):
            logits = module(to_device(x, cfg.device, cfg.channels_last))
        return cfg.target.loss(logits, targets.to(cfg.device), weights.to(cfg.device))

    return lr_range_test(
        net,
        train_ds,
        collate,
        make_optimizer,
        loss_fn,
        batch_size=cfg.batch_size,
        n_iter=min(100, n_steps),
        seed=cfg.seed,
    )


def _null(*args, **kwargs):
    return None


def run_phases(
    net, data, cfg: TrainConfig, *, n_frozen, head_epochs=None, auto_lr=False, train=None
):
    """Fine-tune ``net``: optional head-only epochs, then blocks ``n_frozen:``.

    ``data(boundary) -> (start, train_ds, valid_ds, collate)`` gives each phase's
    datasets at its own frozen boundary (cached activations start at ``start``;
    the head-only phase reads cached pooled features), so no phase ever trains on
    activations cached below a block it trains. ``auto_lr`` first runs the LR
    range test in the final configuration. ``train`` runs one phase (default
    :func:`fine_tune`). Returns ``(history, info)`` with ``info["lr_"]`` (and
    ``info["lr_find_"]``); ``net`` ends with ``n_frozen`` frozen.
    """
    train_phase = fine_tune if train is None else train
    info = {}
    phases = [(n_frozen, cfg.max_epochs, None)]
    if head_epochs:
        phases = [(len(net.blocks), head_epochs, "head"), (n_frozen, cfg.max_epochs, "all")]
    history = []
    try:
        if auto_lr:
            net.set_frozen(n_frozen)
            start, train, _, collate = data(n_frozen)
            net.input_block = start
            steps = math.ceil(len(train) / cfg.batch_size) * cfg.max_epochs
            cfg = dataclasses.replace(cfg)
            cfg.lr, info["lr_find_"] = lr_range_test_for(net, train, collate, cfg, steps)
            if cfg.verbose:
                print(f"LR range test: lr={cfg.lr:.3g}")
        info["lr_"] = float(cfg.lr)
        for boundary, epochs, phase in phases:
            net.set_frozen(boundary)
            start, train, valid, collate = data(boundary)
            net.input_block = start
            # cache hits skip DataLoader iterations that draw from the global RNG:
            # re-seed so training is identical whether the activations were cached
            torch.manual_seed(cfg.seed)
            run = dataclasses.replace(
                cfg, max_epochs=epochs, early_stopping=cfg.early_stopping and phase != "head"
            )
            history += train_phase(
                net, train, valid, collate, run, epoch_offset=len(history), phase=phase
            )
    finally:
        net.input_block = 0
        net.set_frozen(n_frozen)
    return history, info
