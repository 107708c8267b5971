"""The three fit paths, equals over one :class:`~sktransfer._estimator.state.FitState`.

``fit`` (:mod:`.base`) validates, resolves the backbone and fills the state; ``_fit_net``
then takes one path, each a short sequence of steps that ends in ``(net, history, info)``:

* **frozen** (``freeze_depth="all"``): pooled features (cached) -> the target's exact head.
* **fine-tune**: split -> probe head on the training part (``head_init="probe"``) ->
  optional LoRA adapters -> :func:`~sktransfer.training.loop.run_phases` (head-only
  epochs, LR range test, the blocks at their cached boundary) -> merge adapters.
* **contrastive** (``objective="contrastive"``): SetFit pairs -> the same training loop
  over pairs (:func:`~sktransfer.training.contrastive.train_pairs`) -> merge adapters ->
  the exact head on the new embeddings, as the frozen path solves it.

The training side gets datasets, collate functions and a :class:`TrainConfig`; it never
calls back into the estimator. Block outputs come from the one cache path
(:class:`~sktransfer._estimator.outputs.BlockOutputsMixin`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from sktransfer._estimator.outputs import has_lazy, remember_dim, run_in_length_order
from sktransfer._estimator.params import check_finite_rows, check_finite_weights
from sktransfer._estimator.split import validation_split
from sktransfer._estimator.targets import training_weights
from sktransfer.freezing import TransferNet
from sktransfer.runtime.batches import Collate, LabeledDataset
from sktransfer.runtime.device import set_layout
from sktransfer.runtime.process_group import current_world
from sktransfer.runtime.runners import run_blocks
from sktransfer.training.contrastive import sentence_pairs, train_pairs
from sktransfer.training.loop import TrainConfig, fine_tune, run_phases
from sktransfer.training.lora import add_lora, check_adapter, count_trainable, merge_lora
from sktransfer.training.regularization import make_regularizer

_NOT_CONTRASTIVE = (  # (parameter, its neutral value): knobs of the cross-entropy loop only
    ("unfreeze_schedule", None),
    ("l2sp_alpha", 0.0),
    ("regularizer", None),
)


class FitPathsMixin:
    """Needs the skeleton's ``_runtime``, ``_loader`` and the block-outputs mixin."""

    # knobs only some estimators take as parameters; the others run with these values
    objective = "cross_entropy"
    adapter = None
    train_bn = True  # (text estimators: no BatchNorm to hold)

    def _fit_net(self, state):
        """``(net, history, info)`` by the path ``objective`` and ``freeze_depth`` pick."""
        check_adapter(self.adapter, state.n_frozen, state.n_blocks)
        if self.objective == "contrastive":
            return self._fit_contrastive(state)
        if state.frozen:
            return self._fit_frozen(state)
        return self._fit_fine_tuned(state)

    # ------------------------------------------------------------------ shared steps
    def _new_net(self, state):
        """The backbone's blocks and pool in a :class:`TransferNet`, all frozen, on the device."""
        backbone, device = state.backbone, state.device
        names = [n for n, _ in backbone.blocks]
        blocks = [m for _, m in backbone.blocks]
        net = TransferNet(blocks, names, backbone.pool, nn.Identity(), n_frozen=len(blocks))
        net.train_bn = bool(self.train_bn)
        net.shares_template = backbone.shared
        if not net.shares_template:  # (the template: on the CPU, channels-last, never changed)
            net.to(device)
            set_layout(net, channels_last=self._runtime(device, state.kind)[1])
        if has_lazy(net):  # a user module with lazy layers: materialise them, then refreeze
            self._feature_dim(net, state.items, state.kind, state.prep, device)
            net.set_frozen(len(blocks))
        return net

    def _start_net(self, state):
        """The network a fine-tune starts from: the previous fit's with ``warm_start`` (its
        head kept), else a new one; and whether it is warm."""
        warm = state.warm_net
        if warm is None:
            return self._new_net(state), False
        if [n for n, _ in state.backbone.blocks] != list(warm.block_names):
            raise ValueError(
                "warm_start: the fitted network's blocks differ from the backbone's now; "
                "set warm_start=False to fit from the backbone"
            )
        warm.to(state.device)
        set_layout(warm, channels_last=self._runtime(state.device, state.kind)[1])
        return warm, True

    def _exact_head(self, net, state, idx, solver="solve_head"):
        """The target's exact head on the pooled features of samples ``idx`` (cached);
        ``solver="probe_head"``: the head fine-tuning starts from (LP-FT)."""
        rows = self._outputs(net, state.items, state.kind, state.prep, state.device,
                             stop=state.n_blocks, desc="fit: features")  # fmt: skip
        feats = np.stack(rows)
        check_finite_rows(feats, "the backbone's output")
        if state.backbone.feature_dim is None:  # a user module: its size is known now
            remember_dim(net, state.prep, state.kind, state.items, feats.shape[1])
        values, sw = state.y.values, state.sample_weight
        solve = getattr(state.target, solver)
        return solve(self, feats[idx], values[idx], sw[idx], state.y.n_outputs)

    def _lora(self, net, state):
        """``adapter="lora"``: adapters on the unfrozen blocks (their config), else None."""
        if self.adapter != "lora":
            return None
        return add_lora(
            net, state.n_frozen, rank=self.lora_rank, alpha=self.lora_alpha,
            dropout=self.lora_dropout, channels_last=self._runtime(state.device, state.kind)[1],
        )  # fmt: skip

    def _train_config(self, state, **overrides):
        precision, channels_last = self._runtime(state.device, state.kind)
        settings = dict(
            lr=self.lr, max_epochs=self.max_epochs, batch_size=self.batch_size,
            optimizer=self.optimizer, weight_decay=self.weight_decay, device=state.device,
            seed=state.seed, target=state.target, early_stopping=bool(self.early_stopping),
            n_iter_no_change=self.n_iter_no_change, verbose=self.verbose,
            lr_schedule=self.lr_schedule, layer_decay=self.layer_decay, precision=precision,
            channels_last=channels_last, num_workers=self.num_workers, compile=self.compile,
            world=self._world(state, "fine-tuning"),
        )  # fmt: skip
        return TrainConfig(**{**settings, **overrides})

    def _world(self, state, what):
        """The data-parallel world this fine-tune runs in (``torchrun``; see
        :mod:`sktransfer.runtime.process_group`), or None. What it does not cover yet is
        refused by name."""
        world = current_world(state.device)
        if world is None:
            return None
        if self.objective == "contrastive" or self.adapter is not None:
            name = "objective='contrastive'" if self.objective == "contrastive" else "adapter"
            raise ValueError(
                f"{name} does not run data-parallel yet ({world.size} processes found: "
                "torchrun / WORLD_SIZE); run it in one process"
            )
        if what != "fine-tuning":
            raise ValueError(f"{what} does not run data-parallel ({world.size} processes found)")
        return world

    def _split(self, encoded, seed):
        """Train/validation split of the encoded ``y`` (:func:`.split.validation_split`)."""
        return validation_split(
            encoded, seed, early_stopping=self.early_stopping, fraction=self.validation_fraction
        )

    # ------------------------------------------------------------------ frozen
    def _fit_frozen(self, state):
        net = self._new_net(state)
        head, info = self._exact_head(net, state, np.arange(len(state.items)))
        net.head = head.to(state.device)
        history = [{"epoch": 1, "train_loss": info["train_loss"], "n_iter": info["n_iter"]}]
        lr = None if self.lr == "auto" else self.lr
        return net, history, {"lr_": lr, "n_trainable_params_": count_trainable(net),
                              **_solved_attributes(info)}  # fmt: skip

    # ------------------------------------------------------------------ fine-tune
    def _fit_fine_tuned(self, state):
        net, warm = self._start_net(state)
        # split first, so that neither the probe head nor the training ever sees the
        # validation samples that early stopping and history_ are measured on
        state.split = self._split(state.y, state.seed)
        if not warm:  # (warm_start: the fitted head goes on)
            net.head = self._initial_head(net, state, state.split[0]).to(state.device)
        net.set_frozen(state.n_frozen)
        lora = self._lora(net, state)
        history, info = self._fine_tune(net, state)
        check_finite_weights(net)
        info = {**info, "n_trainable_params_": count_trainable(net)}
        if lora is not None:
            info["lora_adapters_"] = merge_lora(net, lora, state.n_frozen)
        net.eval()
        return net, history, info

    def _initial_head(self, net, state, idx, probe=None):
        """The head fine-tuning starts from: the probe on samples ``idx``
        (``head_init="probe"``, LP-FT) or a seeded random linear layer."""
        if self.head_init == "probe" if probe is None else probe:
            return self._exact_head(net, state, idx, solver="probe_head")[0]
        dim = state.backbone.feature_dim  # known for registry backbones: no probe forward
        if dim is None:  # a user module: probed once per module digest
            dim = self._feature_dim(net, state.items, state.kind, state.prep, state.device)
        torch.manual_seed(state.seed)
        return nn.Linear(dim, state.y.n_outputs)

    def _fine_tune(self, net, state):
        """Optional head-only epochs, then the configured blocks; ``lr="auto"`` first.

        Each phase trains on cached activations at its own frozen boundary (the
        head-only phase on the cached pooled features); the model ends with the
        final boundary ``state.n_frozen``.
        """
        data = functools.partial(self._phase_data, net, state)
        # the source f_s: the weights at fit start (pretrained, probe head)
        reg = make_regularizer(
            self.regularizer, self.regularizer_strength, net,
            l2sp_alpha=self.l2sp_alpha, l2sp_beta=self.l2sp_beta,
        )  # fmt: skip
        return run_phases(
            net, data, self._train_config(state, regularizer=reg), n_frozen=state.n_frozen,
            head_epochs=self.unfreeze_schedule, auto_lr=self.lr == "auto", train=fine_tune,
        )  # fmt: skip

    def _phase_data(self, net, state, boundary):
        """``(start, train, valid, collate)`` for training above ``boundary``: the split's
        datasets of activations entering at block ``start`` (cached at the boundary when
        the cache is used), labelled and weighted."""
        items, kind, prep, device = state.items, state.kind, state.prep, state.device
        values, sw = state.y.values, training_weights(state.sample_weight)
        train_idx, valid_idx = state.split
        start = boundary if self._use_boundary_cache(boundary) else 0
        sub = self._suffix_dataset
        train = sub(net, items, train_idx, kind, prep, device, start, training=True,
                    desc=f"fit: train activations (block {start})")  # fmt: skip
        train = LabeledDataset(train, values[train_idx], sw[train_idx])
        valid = None
        if valid_idx is not None:
            valid = sub(net, items, valid_idx, kind, prep, device, start,
                        desc=f"fit: validation activations (block {start})")  # fmt: skip
            valid = LabeledDataset(valid, values[valid_idx], sw[valid_idx])
        n_blocks = len(net.blocks)
        return start, train, valid, Collate(self._suffix_collate(kind, prep, start, n_blocks))

    # ------------------------------------------------------------------ contrastive
    def _fit_contrastive(self, state):
        """SetFit's recipe (:mod:`sktransfer.training.contrastive`): pairs -> the unfrozen
        blocks trained on them -> adapters merged -> the exact head on the new embeddings."""
        self._check_contrastive(state)
        self._world(state, "objective='contrastive'")
        net, _ = self._start_net(state)  # (the head is solved again on the new embeddings)
        items, kind, prep, device = state.items, state.kind, state.prep, state.device
        state.split = None  # SetFit trains on every pair: no validation split
        net.set_frozen(state.n_frozen)
        start = state.n_frozen if self._use_boundary_cache(state.n_frozen) else 0
        sentences = self._suffix_dataset(
            net, items, range(len(items)), kind, prep, device, start, training=True,
            desc=f"fit: train activations (block {start})",
        )  # fmt: skip
        inner = self._suffix_collate(kind, prep, start, state.n_blocks)
        lora = self._lora(net, state)
        pairs, targets, weights = self._pairs(state)
        history = train_pairs(
            net, sentences, inner, pairs, targets, weights,
            self._train_config(state, early_stopping=False), start=start,
        )  # fmt: skip
        info = {"lr_": float(self.lr), "n_trainable_params_": count_trainable(net)}  # (+ head)
        if lora is not None:
            info["lora_adapters_"] = merge_lora(net, lora, state.n_frozen)
        feats = self._new_embeddings(net, state, start, inner)
        head, solved = state.target.solve_head(
            self, feats, state.y.values, state.sample_weight, state.y.n_outputs
        )
        net.head = head.to(device)
        info.update(_solved_attributes(solved))
        info["n_trainable_params_"] += sum(p.numel() for p in head.parameters())
        history.append({"epoch": self.max_epochs + 1, "train_loss": float(solved["train_loss"]),
                        "n_iter": solved["n_iter"], "phase": "head"})  # fmt: skip
        net.set_frozen(state.n_frozen)
        check_finite_weights(net)
        net.eval()
        return net, history, info

    def _pairs(self, state):
        """SetFit's sentence pairs with their weights; pairs with a zero-weight sentence go."""
        pairs, targets = sentence_pairs(state.y.values, int(self.num_iterations), state.seed)
        sw = state.sample_weight
        weights = (sw[pairs[:, 0]] * sw[pairs[:, 1]]).astype(np.float32)
        keep = weights > 0  # pairs with a zero-weight sentence teach nothing
        if not keep.any():
            why = (
                "y gives none (a positive pair needs two samples sharing a label, a negative "
                "one a sample sharing none)"
                if len(keep) == 0
                else "each has a sample of sample_weight 0"
            )
            raise ValueError(f"objective='contrastive' found no sentence pairs: {why}")
        return pairs[keep], targets[keep], weights[keep]

    def _new_embeddings(self, net, state, start, inner):
        """Pooled embeddings of every sample by the trained blocks (uncached: new weights)."""
        items, kind, prep, device = state.items, state.kind, state.prep, state.device
        precision, channels_last = self._runtime(device, kind)

        def run(order):
            subset = self._suffix_dataset(net, items, order, kind, prep, device, start)
            loader = self._loader(subset, kind, prep, device, collate=Collate(inner))
            return run_blocks(net, loader, device, start=start, precision=precision,
                              channels_last=channels_last)  # fmt: skip

        feats = np.stack(run_in_length_order(items, kind, prep, run))
        check_finite_rows(feats, "the fine-tuned encoder's output")
        return feats

    def _check_contrastive(self, state) -> None:
        """The inputs ``objective="contrastive"`` cannot use: ValueError, before any forward."""
        if state.target.name not in ("single_label", "multi_label"):
            raise ValueError(
                "objective='contrastive' needs single-label y or a multi-label indicator "
                f"matrix; got a {state.target.name.replace('_', '-')} target"
            )
        if state.frozen:
            raise ValueError(
                "objective='contrastive' trains encoder blocks, but freeze_depth='all' "
                "freezes them all: pass an int freeze_depth (e.g. -1, 0), or "
                "objective='cross_entropy' for the frozen probe"
            )
        if self.lr == "auto":
            raise ValueError(
                "lr='auto' is not supported with objective='contrastive'; pass a float"
            )
        for name, neutral in _NOT_CONTRASTIVE:
            if getattr(self, name) != neutral:
                raise ValueError(f"{name} is not supported with objective='contrastive'")
        labels = state.y.values
        if labels.ndim == 2:  # multi-label: checked by the pairs it yields (_pairs)
            return
        counts = np.bincount(labels, minlength=state.y.n_outputs)
        single = np.flatnonzero(counts < 2)
        if len(single):
            c = int(single[0])
            i = int(np.flatnonzero(labels == c)[0])
            classes = state.y.attrs.get("classes_")
            label = classes[c] if classes is not None else c
            raise ValueError(
                f"class {label!r} has one example (sample {i}): "
                "objective='contrastive' needs at least 2 per class for a positive pair"
            )


def _solved_attributes(info):
    """The fitted attributes a head solver reports (``alpha_``: the ridge strength)."""
    return {key: value for key, value in info.items() if key.endswith("_")}
