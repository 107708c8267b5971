"""SigLIP vision, ConvNeXt (V1, V2) and Swin from ``transformers`` split into blocks.

The Hugging Face vision source (:mod:`sktransfer.backbones.hf_vision`) hands these
``model_type`` values to this module:

* ``siglip_vision_model`` / ``siglip`` (``SiglipVisionModel``, the image tower of a
  SigLIP directory): blocks ``embeddings`` (patch embedding + position embedding; SigLIP
  has no class token), ``layer.0`` .. ``layer.N-1``; pool = ``post_layernorm`` of every
  token, then the model's attention-pooling ``head`` (its ``pooler_output``), or the
  token mean (``pooling="mean"``, and the only pooling of a model without a head).
* ``convnext`` / ``convnextv2`` (``ConvNextModel`` / ``ConvNextV2Model``): blocks
  ``embeddings`` (patchify conv + layernorm), ``stages.0`` .. ``stages.K``; pool = the
  model's own: global average, then the final ``layernorm``.
* ``swin`` (``SwinModel``): blocks ``embeddings`` (patch embedding, norm, absolute
  position embedding when the config has one), ``stages.0`` .. ``stages.K`` (the blocks
  of a stage, then its patch merging); pool = the final ``layernorm`` of every token,
  then their average (the model's ``pooler_output``).

Swin blocks pass ``(n, C, H, W)`` feature maps between them, laid out channels-last in
memory: that is the ``(n, H*W, C)`` token sequence the stages take, viewed without a
copy, and each stage learns its grid size from the map. Every block calls the model's
own submodules as its ``forward`` does, so the chained blocks equal ``pooler_output``.
"""

from __future__ import annotations

import torch
from torch import nn

from sktransfer.backbones.hf_vision_tokens import (
    HFVisionEmbeddings,
    HFVisionLayer,
    in_weights_dtype,
)

__all__ = [
    "FAMILY_CLASSES",
    "FAMILY_POOLINGS",
    "MODEL_TYPES",
    "default_pooling",
    "feature_dim",
    "split_family",
]

# config model_type -> family; "siglip" is a whole SigLIP directory (its vision tower)
MODEL_TYPES = {
    "siglip_vision_model": "siglip",
    "siglip": "siglip",
    "convnext": "convnext",
    "convnextv2": "convnextv2",
    "swin": "swin",
}
# family -> (config class, model class) names in transformers
FAMILY_CLASSES = {
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel"),
    "convnext": ("ConvNextConfig", "ConvNextModel"),
    "convnextv2": ("ConvNextV2Config", "ConvNextV2Model"),
    "swin": ("SwinConfig", "SwinModel"),
}
FAMILY_POOLINGS = {
    "siglip": ("head", "mean"),
    "convnext": ("mean",),
    "convnextv2": ("mean",),
    "swin": ("mean",),
}


def default_pooling(family: str, config) -> str:
    """The model's own pooling: SigLIP's attention head when it has one, else the mean."""
    if family == "siglip" and getattr(config, "vision_use_head", True):
        return "head"
    return "mean"


def check_pooling(family: str, config, pooling: str) -> None:
    """ValueError when ``pooling`` is not one this family (and this config) has."""
    allowed = FAMILY_POOLINGS[family]
    if family == "siglip" and not getattr(config, "vision_use_head", True):
        allowed = ("mean",)
    if pooling not in allowed:
        raise ValueError(
            f"pooling={pooling!r} is not available for a {family} vision encoder "
            f"(it has no class token): use one of {allowed}"
        )


def feature_dim(family: str, config) -> int:
    """The width of the pooled features (``hidden_size`` for the token models)."""
    if family in ("convnext", "convnextv2"):
        return int(config.hidden_sizes[-1])
    if family == "swin":
        return int(config.embed_dim * 2 ** (len(config.depths) - 1))
    return int(config.hidden_size)


def _to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(n, H*W, C)`` tokens as an ``(n, C, H, W)`` map, channels-last, no copy."""
    n, _, c = tokens.shape
    return tokens.view(n, height, width, c).permute(0, 3, 1, 2)


def _to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """``(n, C, H, W)`` map -> ``(n, H*W, C)`` tokens (a view when it is channels-last)."""
    n, c, h, w = fmap.shape
    return fmap.permute(0, 2, 3, 1).reshape(n, h * w, c)


class SiglipPool(nn.Module):
    """``(n, t, d) -> (n, d)``: ``post_layernorm``, then the attention head or the mean.

    Parameters
    ----------
    norm : torch.nn.Module
        The model's ``post_layernorm`` (applied to every token).
    head : torch.nn.Module or None
        The model's ``SiglipMultiheadAttentionPoolingHead``; None without one.
    pooling : {"head", "mean"}
    """

    def __init__(self, norm: nn.Module, head: nn.Module | None, pooling: str = "head"):
        super().__init__()
        if pooling == "head" and head is None:
            raise ValueError("pooling='head' needs a SigLIP model with vision_use_head=True")
        self.norm = norm
        self.head = head if pooling == "head" else None
        self.pooling = pooling

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(hidden)
        return self.head(hidden) if self.head is not None else hidden.mean(1)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"


class ConvNextPool(nn.Module):
    """``(n, C, H, W) -> (n, C)``: global average, then the model's final ``layernorm``."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.norm(fmap.mean([-2, -1]))


class SwinEmbeddingsBlock(nn.Module):
    """Block 0 of a Swin: pixels -> the ``(n, C, H, W)`` map of patch embeddings.

    Parameters
    ----------
    embeddings : torch.nn.Module
        The model's ``SwinEmbeddings`` (shared, not copied).
    image_size : int
        The size absolute position embeddings (if any) were trained for; another input
        size interpolates them.
    """

    def __init__(self, embeddings: nn.Module, image_size: int = 224):
        super().__init__()
        self.embeddings = embeddings
        self.image_size = int(image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = in_weights_dtype(self.embeddings, x)
        kwargs = {}
        resized = tuple(x.shape[-2:]) != (self.image_size, self.image_size)
        if resized and self.embeddings.position_embeddings is not None:
            kwargs["interpolate_pos_encoding"] = True
        tokens, (height, width) = self.embeddings(x, **kwargs)
        return _to_map(tokens, height, width)


class SwinStageBlock(nn.Module):
    """One Swin stage (its window-attention blocks, then its patch merging) on a map."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage = stage

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        height, width = fmap.shape[-2:]
        hidden = self.stage(_to_tokens(fmap), (height, width))[0]
        if self.stage.downsample is not None:
            height, width = (height + 1) // 2, (width + 1) // 2
        return _to_map(hidden, height, width)


class SwinPool(nn.Module):
    """``(n, C, H, W) -> (n, C)``: the final ``layernorm`` of every token, then their average."""

    def __init__(self, norm: nn.Module, pooler: nn.Module | None):
        super().__init__()
        self.norm = norm
        self.pooler = pooler

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(_to_tokens(fmap))
        if self.pooler is None:
            return hidden.mean(1)
        return torch.flatten(self.pooler(hidden.transpose(1, 2)), 1)


def split_family(model, family: str, pooling: str, image_size: int):
    """``(blocks, pool)`` of a SigLIP vision / ConvNeXt / Swin model (modules shared).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A ``SiglipVisionModel``, ``ConvNextModel``, ``ConvNextV2Model`` or ``SwinModel``.
    family : {"siglip", "convnext", "convnextv2", "swin"}
    pooling : str
        One of ``FAMILY_POOLINGS[family]``.
    image_size : int
        The config's input size (position-embedding interpolation for other sizes).

    Returns
    -------
    blocks : list of (str, torch.nn.Module)
    pool : torch.nn.Module
    """
    check_pooling(family, model.config, pooling)
    if family == "siglip":
        embed = HFVisionEmbeddings(model.embeddings, None, image_size, interpolate=True)
        blocks = [("embeddings", embed)]
        blocks += [(f"layer.{i}", HFVisionLayer(m)) for i, m in enumerate(model.encoder.layers)]
        head = model.head if getattr(model, "use_head", False) else None
        return blocks, SiglipPool(model.post_layernorm, head, pooling)
    if family in ("convnext", "convnextv2"):
        blocks = [("embeddings", model.embeddings)]
        blocks += [(f"stages.{i}", stage) for i, stage in enumerate(model.encoder.stages)]
        return blocks, ConvNextPool(model.layernorm)
    if family == "swin":
        blocks = [("embeddings", SwinEmbeddingsBlock(model.embeddings, image_size))]
        blocks += [(f"stages.{i}", SwinStageBlock(s)) for i, s in enumerate(model.encoder.layers)]
        return blocks, SwinPool(model.layernorm, model.pooler)
    raise ValueError(f"unknown vision family {family!r}")
