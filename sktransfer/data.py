"""Input adapters: paths, PIL images, arrays, pandas and strings -> tensors.

Everything here is cheap to validate up front (:func:`check_images`,
:func:`check_texts`) and lazy to decode (:class:`ImageDataset` holds paths, not
pixels), so datasets stay small and picklable for ``DataLoader`` workers.
Error messages always name the offending sample index (and path).

This is the public module to import from (the library itself imports from where each name
lives); the code lives in one file per concept:
:mod:`sktransfer.inputs.images` (image adapters and :func:`load_image_folder`),
:mod:`sktransfer.inputs.texts` (text adapters), :mod:`sktransfer.cache.keys`
(the feature cache's content keys) and :mod:`sktransfer.inputs.containers` (what image and
text share: containers to lists, targets).
"""

from __future__ import annotations

from sktransfer.cache.keys import sample_keys
from sktransfer.inputs.images import (
    IMAGE_EXTENSIONS,
    ImageDataset,
    check_images,
    load_image_folder,
    load_rgb,
    preprocess_image,
)
from sktransfer.inputs.texts import TextCollate, TextDataset, check_texts, make_text_collate

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "TextCollate",
    "TextDataset",
    "check_images",
    "check_texts",
    "load_image_folder",
    "load_rgb",
    "make_text_collate",
    "preprocess_image",
    "sample_keys",
]
