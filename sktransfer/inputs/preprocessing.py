"""What a backbone's weights expect of their input: image size and normalisation, or the
tokenizer and its length. Each backbone source fills one in (:mod:`sktransfer.backbones`);
the input adapters (:mod:`.images`, :mod:`.pixels`, :mod:`.texts`) apply it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    max_positions: int | None = None  # the model's position limit (max_length may not exceed it)

