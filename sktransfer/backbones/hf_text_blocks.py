"""Block splits of text encoders beyond BERT-class: DeBERTa (v1, v2/v3), MPNet, ModernBERT.

Each family is split into ``embeddings`` and ``layer.0`` .. ``layer.N-1`` that pass a
:class:`~sktransfer.backbones.base.TextState` along, as the BERT split does. Chained,
the blocks compute what the model's own ``forward`` computes (checked against
transformers 5), so ``freeze_depth`` can stop anywhere between two layers.

These encoders also have *shared* pieces that every layer reads. Each is owned by
(registered in, and so frozen and saved with) exactly one block: the ``embeddings``
block, as a child module named ``shared``. A layer block keeps only an unregistered
reference to it. ``freeze_depth`` freezes a prefix of the blocks, so whenever any
layer is frozen the shared pieces are frozen too, and a frozen layer's (cached)
output never goes stale because a later layer trained a piece it also reads.

* **DeBERTa-v2/v3** (``deberta-v2``; v1, ``deberta``, the same way): ``shared`` holds
  the encoder's relative-position embeddings ``rel_embeddings`` and their ``LayerNorm``
  (when ``norm_rel_ebd`` asks for one). The optional convolution
  (``conv_kernel_size > 0``) that the encoder adds to the first layer's output is
  owned by ``layer.0``, its only user.
* **MPNet** (``mpnet``): ``shared`` is the encoder's ``relative_attention_bias``.
* **ModernBERT** (``modernbert``): ``shared`` is the rotary embedding (buffers only, no
  weights); the final ``LayerNorm`` (``final_norm``) runs at the end of the last layer
  block, as the model's ``forward`` does after its last layer.

:func:`split_text_encoder` returns None for any other model, or a configuration these
splits do not reproduce (DeBERTa's ``z_steps``, ``relative_attention`` without
``rel_embeddings``, a decoder); the caller then keeps the model whole.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from sktransfer.backbones._forward_memo import once_per_forward
from sktransfer.backbones.base import TextState

__all__ = ["FAMILIES", "layer_mask", "split_text_encoder"]


def _mask_of(batch) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"]) if mask is None else mask


def layer_mask(builder, config, hidden: torch.Tensor, mask: torch.Tensor):
    """``builder(config=, inputs_embeds=hidden, attention_mask=mask)``, built once per forward.

    Every layer block of one forward receives the same 0/1 ``mask`` tensor (it flows
    through ``TextState``); the model's own ``forward`` builds the attention mask once
    for all its layers, and so does this (:func:`~._forward_memo.once_per_forward`, one
    slot per builder, so ModernBERT's alternating full and sliding-window layers each
    reuse theirs; keyed also by the config, the attention implementation, the batch
    shape, dtype and device and the grad / inference mode).

    Parameters
    ----------
    builder : callable
        ``transformers.masking_utils.create_bidirectional_mask`` or
        ``create_bidirectional_sliding_window_mask``.
    config : transformers.PretrainedConfig
    hidden : torch.Tensor
        The layer's input ``(n, seq, d)`` (only its shape, dtype and device are read).
    mask : torch.Tensor
        The ``(n, seq)`` 0/1 token mask.

    Returns
    -------
    torch.Tensor or None
        What ``builder`` returns.
    """
    key = (
        getattr(config, "_attn_implementation", None),
        tuple(hidden.shape[:2]),
        hidden.dtype,
        hidden.device,
    )
    return once_per_forward(
        ("attention mask", builder),
        config,
        mask,
        key,
        lambda: builder(config=config, inputs_embeds=hidden, attention_mask=mask),
    )


class _SharedRef:
    """A layer block's unregistered handle on the ``shared`` module of the embeddings block.

    Holding it as a plain attribute (not an ``nn.Module`` child) keeps the shared
    weights out of the layer block's ``parameters()`` and ``state_dict()``; one
    ``copy.deepcopy`` of all the blocks together keeps the handle pointing at the copy.
    """

    def __init__(self, module: nn.Module):
        self.module = module


class _LayerBlock(nn.Module):
    """Base of the layer blocks: ``TextState -> TextState`` plus a handle on ``shared``."""

    def __init__(self, layer: nn.Module, shared: nn.Module, config):
        super().__init__()
        self.layer = layer
        self.config = config
        self._shared = _SharedRef(shared)

    @property
    def shared(self) -> nn.Module:
        """The ``shared`` module (owned by the ``embeddings`` block)."""
        return self._shared.module

    def extra_repr(self) -> str:
        return "shared pieces: owned by the 'embeddings' block"


# --------------------------------------------------------------------------- DeBERTa-v2/v3
class DebertaShared(nn.Module):
    """DeBERTa's relative-position embeddings (+ v2's LayerNorm) and bucketing settings."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.rel_embeddings = encoder.rel_embeddings if encoder.relative_attention else None
        norm = "layer_norm" in getattr(encoder, "norm_rel_ebd", ())  # v2 only
        self.LayerNorm = encoder.LayerNorm if norm else None
        self.position_buckets = getattr(encoder, "position_buckets", -1)
        self.max_relative_positions = getattr(encoder, "max_relative_positions", -1)

    def rel_embedding(self):
        """``DebertaV2Encoder.get_rel_embedding``: the (normalised) embedding table or None."""
        if self.rel_embeddings is None:
            return None
        weight = self.rel_embeddings.weight
        return self.LayerNorm(weight) if self.LayerNorm is not None else weight

    def relative_pos(self, hidden):
        """``DebertaV2Encoder.get_rel_pos`` for self-attention over ``hidden``: ``(1, seq, seq)``.

        The bucketing is elementwise in the distance ``i - j``, so it runs once per
        distance (``2 * seq - 1`` values) and is then indexed, instead of over every
        ``(i, j)`` pair in every layer: the same values, a fraction of the work.
        """
        if self.rel_embeddings is None:
            return None
        from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

        distance, span = _distances(hidden)
        if self.position_buckets > 0 and self.max_relative_positions > 0:
            table = make_log_bucket_position(
                span, self.position_buckets, self.max_relative_positions
            ).to(torch.long)
            distance = table[distance + (hidden.size(-2) - 1)]
        return distance.unsqueeze(0)


def _distances(hidden):
    """``(i - j for every pair, every distance -(seq-1) .. seq-1)`` as long tensors."""
    seq = hidden.size(-2)
    ids = torch.arange(seq, dtype=torch.long, device=hidden.device)
    span = torch.arange(1 - seq, seq, dtype=torch.long, device=hidden.device)
    return ids[:, None] - ids[None, :], span


class DebertaEmbeddings(nn.Module):
    """DeBERTa-v2 block 0: the tokenizer's batch -> ``TextState`` (owns ``shared``)."""

    def __init__(self, embeddings: nn.Module, shared: DebertaShared):
        super().__init__()
        self.embeddings = embeddings
        self.shared = shared

    def forward(self, batch) -> TextState:
        mask = _mask_of(batch)
        token_types = batch.get("token_type_ids")
        if token_types is None:
            token_types = torch.zeros_like(batch["input_ids"])
        hidden = self.embeddings(
            input_ids=batch["input_ids"], token_type_ids=token_types, mask=mask
        )
        return TextState(hidden, mask)


class DebertaLayer(_LayerBlock):
    """One DeBERTa-v2 layer (``layer.0`` also runs the encoder's ``conv``, if any)."""

    def __init__(self, layer, shared, config, conv: nn.Module | None = None):
        super().__init__(layer, shared, config)
        self.conv = conv

    def forward(self, state: TextState) -> TextState:
        hidden, mask = state
        shared = self.shared  # what DebertaV2Encoder.forward computes once for all layers:
        attn_mask = once_per_forward("pair mask", shared, mask, (), lambda: _pair_mask(mask))
        seq = (
            hidden.size(-2),
            hidden.device,
            shared.position_buckets,
            shared.max_relative_positions,
        )
        relative_pos = once_per_forward(
            "relative_pos", shared, mask, seq, lambda: shared.relative_pos(hidden)
        )
        rel_embeddings = once_per_forward(
            "rel_embedding", shared, mask, (), shared.rel_embedding, shared.parameters()
        )
        out, _ = self.layer(
            hidden, attn_mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings
        )
        if self.conv is not None:
            out = self.conv(hidden, out, mask)
        return TextState(out, mask)


def _pair_mask(mask):
    """``DebertaV2Encoder.get_attention_mask``: ``(n, 1, seq, seq)`` from the 0/1 mask."""
    ext = mask.unsqueeze(1).unsqueeze(2)
    return ext * ext.squeeze(-2).unsqueeze(-1)


def _split_deberta(model):
    encoder = model.encoder
    if getattr(model, "z_steps", 0) > 1:
        return None
    if encoder.relative_attention and getattr(encoder, "rel_embeddings", None) is None:
        return None
    shared = DebertaShared(encoder)
    blocks = [("embeddings", DebertaEmbeddings(model.embeddings, shared))]
    for i, layer in enumerate(encoder.layer):
        conv = getattr(encoder, "conv", None) if i == 0 else None  # v2 only
        blocks.append((f"layer.{i}", DebertaLayer(layer, shared, model.config, conv)))
    return blocks


# --------------------------------------------------------------------------- MPNet
class MPNetShared(nn.Module):
    """MPNet's ``relative_attention_bias``: relative-position bucket -> per-head bias."""

    num_buckets = 32  # MPNetEncoder.compute_position_bias's default, which forward uses

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.relative_attention_bias = encoder.relative_attention_bias

    def position_bias(self, hidden):
        """``MPNetEncoder.compute_position_bias``, ``(1, heads, seq, seq)`` (broadcast over n).

        Bucketed and looked up once per distance ``j - i``, then indexed (same values).
        """
        from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

        distance, span = _distances(hidden)  # i - j; MPNet buckets j - i
        bucket = MPNetEncoder.relative_position_bucket(span, num_buckets=self.num_buckets)
        table = self.relative_attention_bias(bucket)  # (2 * seq - 1, heads)
        bias = table[(hidden.size(1) - 1) - distance]  # (seq, seq, heads)
        return bias.permute([2, 0, 1]).contiguous().unsqueeze(0)  # as dense as the model's


class MPNetEmbeddings(nn.Module):
    """MPNet block 0: the tokenizer's batch -> ``TextState`` (owns ``shared``)."""

    def __init__(self, embeddings: nn.Module, shared: MPNetShared):
        super().__init__()
        self.embeddings = embeddings
        self.shared = shared

    def forward(self, batch) -> TextState:
        return TextState(self.embeddings(input_ids=batch["input_ids"]), _mask_of(batch))


class MPNetLayer(_LayerBlock):
    """One MPNet layer: the mask its attention implementation expects + the shared bias."""

    def forward(self, state: TextState) -> TextState:
        from transformers.masking_utils import create_bidirectional_mask

        hidden, mask = state
        attn_mask = layer_mask(create_bidirectional_mask, self.config, hidden, mask)
        shared = self.shared  # MPNetEncoder.forward computes the bias once for all layers
        bias = once_per_forward(
            "position_bias",
            shared,
            mask,
            (hidden.size(1), hidden.device),
            lambda: shared.position_bias(hidden),
            shared.parameters(),
        )
        out = self.layer(hidden, attn_mask, bias)
        return TextState(out[0], mask)


def _split_mpnet(model):
    shared = MPNetShared(model.encoder)
    blocks = [("embeddings", MPNetEmbeddings(model.embeddings, shared))]
    blocks += [
        (f"layer.{i}", MPNetLayer(layer, shared, model.config))
        for i, layer in enumerate(model.encoder.layer)
    ]
    return blocks


# --------------------------------------------------------------------------- ModernBERT
class ModernBertEmbeddings(nn.Module):
    """ModernBERT block 0: the tokenizer's batch -> ``TextState`` (owns the rotary ``shared``)."""

    def __init__(self, embeddings: nn.Module, rotary: nn.Module):
        super().__init__()
        self.embeddings = embeddings
        self.shared = rotary

    def forward(self, batch) -> TextState:
        return TextState(self.embeddings(input_ids=batch["input_ids"]), _mask_of(batch))


class ModernBertLayer(_LayerBlock):
    """One ModernBERT layer: full or sliding-window mask, rotary embedding, final norm if last."""

    def __init__(self, layer, rotary, config, final_norm: nn.Module | None = None):
        super().__init__(layer, rotary, config)
        self.final_norm = final_norm

    def forward(self, state: TextState) -> TextState:
        from transformers import masking_utils

        hidden, mask = state
        kind = self.layer.attention_type
        make_mask = (
            masking_utils.create_bidirectional_sliding_window_mask
            if kind == "sliding_attention"
            else masking_utils.create_bidirectional_mask
        )
        attn_mask = layer_mask(make_mask, self.config, hidden, mask)
        rotary = self.shared  # ModernBertModel.forward: once per layer type for all layers
        rope = once_per_forward(
            ("rotary", kind),
            rotary,
            mask,
            (hidden.size(1), hidden.dtype, hidden.device),
            lambda: rotary(hidden, _positions(hidden), kind),
            rotary.buffers(),
        )
        out = self.layer(hidden, attention_mask=attn_mask, position_embeddings=rope)
        if isinstance(out, tuple):
            out = out[0]
        if self.final_norm is not None:
            out = self.final_norm(out)
        return TextState(out, mask)


def _positions(hidden):
    return torch.arange(hidden.size(1), device=hidden.device).unsqueeze(0)


def _split_modernbert(model):
    if "layer_type" not in inspect.signature(model.rotary_emb.forward).parameters:
        return None  # an older ModernBERT (one rotary per layer): not what this reproduces
    rotary, layers = model.rotary_emb, model.layers
    blocks = [("embeddings", ModernBertEmbeddings(model.embeddings, rotary))]
    for i, layer in enumerate(layers):
        final = model.final_norm if i == len(layers) - 1 else None
        blocks.append((f"layer.{i}", ModernBertLayer(layer, rotary, model.config, final)))
    return blocks


FAMILIES = {
    "deberta": _split_deberta,  # v1: no buckets, LayerNorm or convolution on the way
    "deberta-v2": _split_deberta,
    "mpnet": _split_mpnet,
    "modernbert": _split_modernbert,
}


def split_text_encoder(model) -> list[tuple[str, nn.Module]] | None:
    """The blocks of a DeBERTa-v2/v3, MPNet or ModernBERT base model, or None.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A base encoder (``AutoModel``: ``DebertaV2Model``, ``MPNetModel``,
        ``ModernBertModel``). Its submodules are reused, not copied.

    Returns
    -------
    list of (str, torch.nn.Module) or None
        ``[("embeddings", ...), ("layer.0", ...), ...]``; None when ``model`` is not
        one of these families (or a configuration the split does not reproduce).
    """
    config = getattr(model, "config", None)
    split = FAMILIES.get(getattr(config, "model_type", None))
    if split is None or getattr(config, "is_decoder", False):
        return None
    try:
        return split(model)
    except AttributeError:  # a model class laid out differently (another transformers)
        return None
