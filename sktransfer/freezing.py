"""Blocks, ``freeze_depth`` and frozen-for-real handling.

A :class:`TransferNet` is a backbone's blocks, its pool and a linear head. The
first ``n_frozen`` blocks are frozen for real: their parameters have
``requires_grad=False``, they run under ``torch.no_grad`` and they stay in eval
mode even when the training loop calls ``net.train()`` (so BatchNorm running
statistics never move and dropout is off).
"""

from __future__ import annotations

import numbers

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from sktransfer.training.lora import is_adapter_param

#: ``freeze_depth="auto"`` with ``objective="contrastive"``: SetFit trains the whole encoder.
CONTRASTIVE_FREEZE_DEPTH = 0


def effective_freeze_depth(freeze_depth, objective="cross_entropy"):
    """``freeze_depth`` with ``"auto"`` resolved by the objective: ``"all"`` (the frozen
    probe) for ``"cross_entropy"``, :data:`CONTRASTIVE_FREEZE_DEPTH` for ``"contrastive"``
    (which trains encoder blocks, so "all" would leave it nothing to train)."""
    if isinstance(freeze_depth, str) and freeze_depth == "auto":
        return CONTRASTIVE_FREEZE_DEPTH if objective == "contrastive" else "all"
    return freeze_depth


def resolve_freeze_depth(freeze_depth, n_blocks: int, objective="cross_entropy") -> int:
    """Number of frozen blocks for ``freeze_depth`` on a backbone of ``n_blocks``.

    ``"all"`` freezes every block (feature extraction); ``k >= 0`` freezes the
    first ``k`` (0 = full fine-tuning); ``-k`` freezes all but the last ``k``;
    ``"auto"``: see :func:`effective_freeze_depth`.
    """
    freeze_depth = effective_freeze_depth(freeze_depth, objective)
    if isinstance(freeze_depth, str):
        if freeze_depth == "all":
            return n_blocks
        raise ValueError(f"freeze_depth must be 'all', 'auto' or an int, got {freeze_depth!r}")
    if isinstance(freeze_depth, bool) or not isinstance(freeze_depth, numbers.Integral):
        raise TypeError(
            f"freeze_depth must be 'all', 'auto' or an int, got {type(freeze_depth).__name__}"
        )
    k = int(freeze_depth)
    if not -n_blocks <= k <= n_blocks:
        raise ValueError(
            f"freeze_depth={k} is out of range for a backbone with {n_blocks} blocks: "
            f"use 'all', 0..{n_blocks} (first k frozen) or -{n_blocks}..-1 (all but the last k)"
        )
    return n_blocks + k if k < 0 else k


class TransferNet(nn.Module):
    """Backbone blocks -> pool -> linear head, with the first ``n_frozen`` blocks frozen.

    ``forward(x, start=0)`` runs blocks ``start..`` on ``x`` (the output of block
    ``start - 1``, or the raw batch when ``start == 0``), so cached activations of
    a frozen prefix can be fed in directly. ``start == len(blocks)`` means ``x``
    already is the pooled feature vector (the cached output of the whole backbone).
    """

    # set by the fit paths: only LoRA adapters train in the unfrozen blocks; BatchNorm
    # layers of trained blocks update their running statistics (image train_bn)
    adapter_only = False
    train_bn = True

    def __init__(self, blocks, block_names, pool, head, n_frozen=0):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.block_names = list(block_names)
        self.pool = pool
        self.head = head
        self.n_frozen = 0
        self.input_block = 0  # which block ``forward`` feeds x to (cached activations: > 0)
        self.adapter_only = False  # LoRA: in unfrozen blocks only the adapters train
        self.set_frozen(n_frozen)

    def set_frozen(self, n_frozen: int) -> None:
        """Freeze blocks ``[:n_frozen]``; the rest train (with ``adapter_only``, a LoRA
        fit: only their adapter parameters, and the pool stays frozen)."""
        self.n_frozen = int(n_frozen)
        adapter_only = self.adapter_only
        for i, block in enumerate(self.blocks):
            frozen = i < self.n_frozen
            for name, p in block.named_parameters():
                if not is_lazy(p):  # lazy modules are frozen again once materialised
                    p.requires_grad_(not frozen and (not adapter_only or is_adapter_param(name)))
        # the pool is part of the backbone: frozen with it when everything is frozen
        all_frozen = self.n_frozen >= len(self.blocks) or adapter_only
        for p in self.pool.parameters():
            if not is_lazy(p):
                p.requires_grad_(not all_frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for block in self.blocks[: self.n_frozen]:
            block.eval()
        if self.n_frozen >= len(self.blocks):
            self.pool.eval()
        if mode and not self.train_bn:
            # fine-tuned blocks keep their pretrained BatchNorm statistics (their
            # affine parameters still learn): small batches of a new domain would
            # otherwise drag the running statistics away from what the weights expect
            for module in self.blocks.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def features(self, x, start: int = 0, stop: int | None = None):
        """Run blocks ``start:stop``; pool when running to the end."""
        stop = len(self.blocks) if stop is None else stop
        if start >= len(self.blocks):  # already pooled features
            return x
        n_frozen = min(self.n_frozen, stop)
        if start < n_frozen:
            with torch.no_grad():
                for block in self.blocks[start:n_frozen]:
                    x = block(x)
            start = n_frozen
        for block in self.blocks[start:stop]:
            x = block(x)
        if stop == len(self.blocks):
            if self.n_frozen >= len(self.blocks):
                with torch.no_grad():
                    return self.pool(x)
            return self.pool(x)
        return x

    def forward(self, x, start: int | None = None):
        start = self.input_block if start is None else start
        return self.head(self.features(x, start=start))
