"""Feature regularisers toward the source model: LwF, DELTA, BSS.

Each is a :class:`~sktransfer.training.regularization.FeatureRegularizer` (a skorch
callback whose ``loss_term`` the loop adds to the training loss), registered in
:data:`~sktransfer.training.regularization.FEATURE_REGULARIZERS` under its
``regularizer=`` name.

How a batch's features are read. The target network ``f_t`` is the
:class:`~sktransfer.freezing.TransferNet` being trained; while a phase trains any of its
backbone, forward hooks (registered in ``on_train_begin``, removed in ``on_train_end``)
keep, of the training batch's forward pass:

* the input of the first trained block (``blocks[n_frozen]``): the frozen prefix's
  output, the same for ``f_t`` and ``f_s``, whether it came from the activation cache
  or was computed in this pass;
* the pool's input (the last block's feature map: an image's ``(n, C, H, W)``, a text
  encoder's :class:`~sktransfer.backbones.base.TextState`) and output (pooled features).

The source ``f_s`` is a frozen copy of the blocks from the first trained one and the pool,
made when the regulariser is built (at fit start: the pretrained weights, LoRA adapters
with ``B = 0`` included, so its forward is the net's), in eval mode (no dropout; BatchNorm
with the pretrained statistics) and without gradients. It runs from the captured block
input, under the training loop's autocast. The frozen prefix is shared, not copied
(its weights never change). Penalties are computed in float32.

A phase that trains no backbone weight (the head-only epochs of ``unfreeze_schedule``)
gets no hooks and a zero term: the features are then constant, and so is any penalty
on them. ``strength=0`` adds exactly nothing (no hooks, no source copy).
"""

from __future__ import annotations

import copy
import functools
import weakref

import torch
from torch import nn

from sktransfer.backbones.base import TextState
from sktransfer.runtime.device import autocast
from sktransfer.training.regularization import FEATURE_REGULARIZERS, FeatureRegularizer


def _unwrap(module):
    """The TransferNet inside a DistributedDataParallel wrapper (or the module itself)."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return module.module
    return module


def _snapshot(x):
    """A detached copy of a block input (tensor, TextState, dict, tuple): a block that
    changes its input in place (``ReLU(inplace=True)``) must not change the source's."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, TextState):
        return TextState(*(_snapshot(v) for v in x))
    if isinstance(x, dict):
        return {k: _snapshot(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_snapshot(v) for v in x)
    return x


def _on_block_input(ref, module, args):
    reg = ref()
    if reg is not None and torch.is_grad_enabled():  # training passes only
        reg.captured_["input"] = _snapshot(args[0])


def _on_pool(ref, module, args, output):
    reg = ref()
    if reg is not None and torch.is_grad_enabled():
        reg.captured_["map"] = args[0]
        reg.captured_["pooled"] = output


def source_copy(net, first: int) -> nn.ModuleList:
    """A frozen, eval-mode deep copy of ``net.blocks[first:]`` and ``net.pool`` (last).

    One ``deepcopy`` of them together keeps shared pieces shared (a text encoder's layers
    point at the embeddings block's ``shared`` module); modules of the frozen prefix that
    they reach are not copied (the memo maps them to themselves).
    """
    memo = {id(m): m for block in net.blocks[:first] for m in block.modules()}
    source = copy.deepcopy(nn.ModuleList([*net.blocks[first:], net.pool]), memo)
    source.requires_grad_(False)
    return source.eval()


def _as_channels(feature_map):
    """``(values (n, P, C), mask (n, P) or None)`` of a feature map: an image's
    ``(n, C, H, W)`` (positions H*W), a TextState or ``(n, T, d)`` (tokens; hidden units as
    channels, padding masked), ``(n, d)`` (one position)."""
    mask = None
    if isinstance(feature_map, TextState):
        feature_map, mask = feature_map
    x = feature_map.float()
    if x.dim() == 2:
        x = x.unsqueeze(1)
    elif x.dim() > 3:
        x = x.flatten(2).transpose(1, 2)  # (n, C, ...) -> (n, positions, C)
    if mask is not None:
        mask = mask.to(x.dtype)
    return x, mask


def _position_mean(values, mask):
    """Mean over positions (masked: over real tokens only), ``(n, P, C) -> (n, C)``."""
    if mask is None:
        return values.mean(1)
    w = mask.unsqueeze(-1)
    return (values * w).sum(1) / w.sum(1).clamp(min=1.0)


class _BatchFeatures(FeatureRegularizer):
    """Hooks that keep the training batch's features, and the source copy (``needs_source``)."""

    needs_source = True

    def __init__(self, net, strength):
        self.strength = float(strength)
        self.first_ = int(net.n_frozen)  # the first block the source copy holds
        self.source_ = None
        if self.needs_source and self.strength > 0 and self.first_ < len(net.blocks):
            self.source_ = source_copy(net, self.first_)
        self.handles_ = []
        self.captured_ = {}
        self.precision_ = "fp32"
        self.device_ = torch.device("cpu")
        self.active_ = False

    # ------------------------------------------------------------------ callback
    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self._remove_hooks()
        module = _unwrap(net.module_)
        cfg = getattr(net, "config", None)
        self.precision_ = cfg.precision if cfg is not None else "fp32"
        self.device_ = torch.device(net.device)
        boundary = module.n_frozen
        self.active_ = self.strength > 0 and boundary < len(module.blocks)
        if not self.active_:
            return
        ref = weakref.ref(self)  # a hook left behind by an exception holds no source copy
        self.handles_.append(module.pool.register_forward_hook(functools.partial(_on_pool, ref)))
        if self.source_ is not None:
            if boundary < self.first_:
                raise RuntimeError(
                    f"{type(self).__name__} holds the source from block {self.first_}, but "
                    f"this phase trains block {boundary}: build it at the final boundary"
                )
            hook = functools.partial(_on_block_input, ref)
            self.handles_.append(module.blocks[boundary].register_forward_pre_hook(hook))
            self.source_.to(self.device_)
        self.boundary_ = boundary

    def on_train_end(self, net, X=None, y=None, **kwargs):
        self._remove_hooks()
        self.active_ = False

    def _remove_hooks(self):
        for handle in self.handles_:
            handle.remove()
        self.handles_ = []
        self.captured_ = {}

    # ------------------------------------------------------------------ loss
    def loss_term(self, module, X) -> torch.Tensor:
        """``strength * penalty`` of the batch whose forward pass just ran (a zero tensor
        when this phase trains no backbone weight). ``X`` is not read: the hooks kept what
        the penalty needs, on the device."""
        captured, self.captured_ = self.captured_, {}
        if not self.active_ or "pooled" not in captured:
            return torch.zeros(())
        return self.strength * self.penalty(captured)

    def source_features(self, block_input):
        """``(feature map, pooled)`` of the source on the first trained block's input."""
        blocks = self.source_[: len(self.source_) - 1][self.boundary_ - self.first_ :]
        with torch.no_grad(), autocast(self.device_, self.precision_):
            x = block_input
            for block in blocks:
                x = block(x)
            return x, self.source_[-1](x)

    def penalty(self, captured) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class LwF(_BatchFeatures):
    """Learning without forgetting (Li & Hoiem 2017), the feature form.

    LwF keeps the source network's outputs on the target inputs close to what they were.
    The source here is an encoder without a task head of its own, so its output is the
    pooled feature vector, and the distillation term is their squared distance:

        strength * mean_i ||f_t(x_i) - f_s(x_i)||^2

    over the training batch (text encoders' pooled features are L2-normalised when the
    model's pooling is: the distance is then a cosine one). The target runs in train mode
    (dropout on), the source in eval mode.
    """

    def penalty(self, captured):
        _, pooled_s = self.source_features(captured["input"])
        diff = captured["pooled"].float().flatten(1) - pooled_s.float().flatten(1)
        return diff.pow(2).sum(1).mean()


class DELTA(_BatchFeatures):
    """DELTA (Li et al. 2019): the last block's feature maps toward the source's,
    weighted per channel by the source's attention.

        strength * mean_i sum_c w_c * mean_p (FM_t(x_i)[p, c] - FM_s(x_i)[p, c])^2

    over positions ``p`` (an image's H*W; a text's real tokens, padding masked, with the
    hidden units as channels). DELTA's attention ``w_c`` is the source classifier's loss
    increase when channel ``c`` is removed: one more source forward per channel and
    sample, and labels. This cheaper variant keeps the same idea without either: ``w_c``
    is proportional to channel ``c``'s contribution to the source head's output on the
    batch, ``||W_head[:, c]|| * mean_i |pooled_s(x_i)[c]|`` (the probe head fitted at fit
    start; for a linear head, removing channel ``c`` moves the logits by exactly
    ``W_head[:, c] * pooled[c]``), normalised to mean 1 over channels, so uniform
    attention gives the plain mean squared distance per channel, summed. When the head
    does not read the pooled channels one-to-one (a pool that projects), ``w_c`` is the
    channel's mean absolute source activation instead. DELTA's optional L2 on the head's
    weights is left to ``weight_decay``.
    """

    def __init__(self, net, strength):
        super().__init__(net, strength)
        weight = getattr(net.head, "weight", None)
        self.head_norms_ = None
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            self.head_norms_ = weight.detach().float().norm(dim=0).clone()

    def attention(self, values_s, mask, pooled_s):
        """Channel weights ``(C,)`` of mean 1 from the source's features of the batch."""
        n_channels = values_s.shape[-1]
        pooled = pooled_s.float().flatten(1)
        norms = self.head_norms_
        if norms is not None and norms.numel() == n_channels == pooled.shape[1]:
            score = norms.to(pooled.device) * pooled.abs().mean(0)
        else:
            score = _position_mean(values_s.abs(), mask).mean(0)
        total = score.sum()
        if not torch.isfinite(total) or total <= 0:
            return torch.ones_like(score)
        return score * (n_channels / total)

    def penalty(self, captured):
        map_s, pooled_s = self.source_features(captured["input"])
        values_t, mask = _as_channels(captured["map"])
        values_s, _ = _as_channels(map_s)
        per_channel = _position_mean((values_t - values_s).pow(2), mask)  # (n, C)
        return (per_channel * self.attention(values_s, mask, pooled_s)).sum(1).mean()


class BSS(_BatchFeatures):
    """Batch spectral shrinkage (Chen et al. 2019).

        strength * sum_{i=1..k} sigma_{-i}^2

    the ``k`` smallest singular values (``k = 1``) of the batch's pooled feature matrix
    ``(n, d)``, by ``torch.linalg.svdvals`` in float32. Fine-tuning on few labels
    amplifies the feature directions of small singular values, which carry little
    transferable knowledge; shrinking them keeps the features closer to the source's
    spectrum. A batch with at most ``k`` singular values (``min(n, d) <= k``: the last
    batch of one sample) adds nothing, as the penalty would then shrink the whole feature.
    Needs no copy of the source.
    """

    needs_source = False
    k = 1

    def penalty(self, captured):
        feats = captured["pooled"].float().flatten(1)
        if min(feats.shape) <= self.k:
            return feats.new_zeros(())
        sigma = torch.linalg.svdvals(feats)  # descending
        return sigma[-self.k :].pow(2).sum()


FEATURE_REGULARIZERS["lwf"] = LwF
FEATURE_REGULARIZERS["delta"] = DELTA
FEATURE_REGULARIZERS["bss"] = BSS
