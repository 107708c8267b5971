"""ViT, DINOv2 and CLIP vision from ``transformers`` split into blocks (token encoders).

The Hugging Face vision source (:mod:`sktransfer.backbones.hf_vision`) hands these
``model_type`` values to this module:

* ``vit`` (``ViTModel``), ``dinov2`` (``Dinov2Model``): blocks ``embeddings``,
  ``layer.0`` .. ``layer.N-1``; pool = the final ``layernorm``, then the CLS token
  (the model's own ``pooler_output`` for DINOv2; ViT's extra dense+tanh pooler is
  dropped, as ``last_hidden_state[:, 0]`` is what a linear probe reads).
* ``clip_vision_model`` / ``clip`` (``CLIPVisionModel``, the image tower of a CLIP
  directory): blocks ``embeddings`` (patch embedding + ``pre_layrnorm``), ``layer.0``
  ..; pool = ``post_layernorm`` of the CLS token (the model's ``pooler_output``).

``pooling="mean"`` instead averages the patch tokens (the CLS token left out). Every
layer is called as the model's own ``forward`` calls it in transformers 5
(``layer(hidden_states, attention_mask=None)``), so the chained blocks equal
``model(pixel_values)``. SigLIP's blocks (:mod:`sktransfer.backbones.hf_vision_families`)
reuse :class:`HFVisionEmbeddings` and :class:`HFVisionLayer`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "TOKEN_POOLINGS",
    "HFVisionEmbeddings",
    "HFVisionLayer",
    "HFVisionPool",
    "check_token_pooling",
    "split_tokens",
]

TOKEN_POOLINGS = ("cls", "mean")


def check_token_pooling(pooling, family: str) -> None:
    """ValueError when ``pooling`` is not one a token encoder (``family``) has."""
    if pooling not in TOKEN_POOLINGS:
        raise ValueError(
            f"pooling={pooling!r} is not available for a {family} vision encoder: "
            f"use one of {TOKEN_POOLINGS}"
        )



def in_weights_dtype(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s weights (pixel batches arrive as float32)."""
    first = next(module.parameters())
    return x if x.dtype == first.dtype else x.to(first.dtype)

class HFVisionEmbeddings(nn.Module):
    """Block 0: ``(n, 3, H, W)`` pixels -> ``(n, 1 + patches, d)`` tokens.

    Parameters
    ----------
    embeddings : torch.nn.Module
        The model's ``embeddings`` (shared, not copied).
    pre_norm : torch.nn.Module, optional
        CLIP's ``pre_layrnorm``.
    image_size : int
        The size the position embeddings were trained for; other sizes interpolate them
        (DINOv2 always does so itself).
    interpolate : bool
        Whether ``embeddings`` takes ``interpolate_pos_encoding`` (ViT, CLIP).
    """

    def __init__(self, embeddings, pre_norm=None, image_size=224, interpolate=True):
        super().__init__()
        self.embeddings = embeddings
        self.pre_norm = pre_norm
        self.image_size = int(image_size)
        self.interpolate = bool(interpolate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = in_weights_dtype(self.embeddings, x)
        kwargs = {}
        if self.interpolate and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            kwargs["interpolate_pos_encoding"] = True
        x = self.embeddings(x, **kwargs)  # any layout: the patch conv follows it
        return self.pre_norm(x) if self.pre_norm is not None else x


class HFVisionLayer(nn.Module):
    """One encoder layer, ``(n, t, d) -> (n, t, d)``, called as the model calls it."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.layer(hidden, None)  # image models build no mask (create_bidirectional_mask)
        return out[0] if isinstance(out, tuple) else out


class HFVisionPool(nn.Module):
    """``(n, t, d) -> (n, d)``: the final norm and the CLS token (or the patch-token mean).

    Parameters
    ----------
    norm : torch.nn.Module
        ViT/DINOv2's ``layernorm`` (applied to every token first) or CLIP's
        ``post_layernorm`` (applied to the pooled vector).
    pooling : {"cls", "mean"}
    norm_first : bool
        True: normalise the tokens, then pool (ViT, DINOv2); False: pool, then normalise (CLIP).
    """

    def __init__(self, norm: nn.Module, pooling: str = "cls", norm_first: bool = True):
        super().__init__()
        check_token_pooling(pooling, "vit")
        self.norm = norm
        self.pooling = pooling
        self.norm_first = bool(norm_first)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            hidden = self.norm(hidden)
        pooled = hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(1)
        return pooled if self.norm_first else self.norm(pooled)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, norm_first={self.norm_first}"


def split_tokens(model, family: str, pooling: str, image_size: int):
    """``(blocks, pool)`` of a ViT / DINOv2 / CLIP vision model (modules shared).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A ``ViTModel``, ``Dinov2Model`` or ``CLIPVisionModel``.
    family : {"vit", "dinov2", "clip"}
    pooling : {"cls", "mean"}
    image_size : int
        The config's input size (position-embedding interpolation for other sizes).

    Returns
    -------
    blocks : list of (str, torch.nn.Module)
    pool : torch.nn.Module
    """
    if family == "vit":
        layers = model.layers if hasattr(model, "layers") else model.encoder.layer
        embed = HFVisionEmbeddings(model.embeddings, None, image_size, interpolate=True)
        pool = HFVisionPool(model.layernorm, pooling, norm_first=True)
    elif family == "dinov2":
        layers = model.encoder.layer
        embed = HFVisionEmbeddings(model.embeddings, None, image_size, interpolate=False)
        pool = HFVisionPool(model.layernorm, pooling, norm_first=True)
    else:
        layers = model.encoder.layers
        embed = HFVisionEmbeddings(model.embeddings, model.pre_layrnorm, image_size, True)
        pool = HFVisionPool(model.post_layernorm, pooling, norm_first=False)
    blocks = [("embeddings", embed)]
    blocks += [(f"layer.{i}", HFVisionLayer(layer)) for i, layer in enumerate(layers)]
    return blocks, pool
