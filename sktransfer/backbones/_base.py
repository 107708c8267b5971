"""The loaded-backbone contract every source adapter returns.

A :class:`Backbone` is an ordered list of named blocks (input -> output) plus a
``pool`` that turns the last block's output into an ``(n, feature_dim)`` tensor,
and the preprocessing the weights expect. ``freeze_depth`` counts ``blocks``.

Image backbones: every block maps a tensor to a tensor; block 0 takes a float
batch ``(n, 3, H, W)`` normalised with ``preprocessing.mean/std``.

Text backbones: block 0 takes the tokenizer's batch as a dict of tensors
(``input_ids``, ``attention_mask`` and, if the model uses them,
``token_type_ids``) and every block returns a :class:`TextState`; later blocks map
``TextState -> TextState``; ``pool`` maps a ``TextState`` to ``(n, d)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn


class TextState(NamedTuple):
    """What flows between text blocks: hidden states and the 0/1 token mask."""

    hidden: torch.Tensor  # (n, seq, d)
    attention_mask: torch.Tensor  # (n, seq), 1 = real token


@dataclass
class ImagePreprocessing:
    """How raw images become the tensor block 0 expects."""

    image_size: int = 224
    resize_size: int | None = None  # shorter side before the centre crop; None = image_size
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"


@dataclass
class TextPreprocessing:
    """How raw strings become block 0's dict of tensors."""

    tokenizer: Any  # a transformers tokenizer (callable: texts -> BatchEncoding)
    max_length: int = 256
    pooling: str = "mean"  # "mean" | "cls"
    normalize: bool = False  # L2-normalise pooled features (sentence-transformers style)


@dataclass
class Backbone:
    """A loaded backbone, ready to be split into frozen and trainable blocks."""

    name: str  # registry name, path or class name: shown to users
    modality: str  # "image" | "text" | "vector" (user module on 2-D numeric input)
    blocks: list[tuple[str, nn.Module]]
    pool: nn.Module
    feature_dim: int | None  # None: found by a forward pass at fit time
    preprocessing: ImagePreprocessing | TextPreprocessing | None
    source: dict = field(default_factory=dict)  # how to rebuild it (persistence / cache key)
    shared: bool = False  # the registry's loaded template itself (never train or move it)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)
