"""The resize-and-crop of :func:`sktransfer.inputs.images.preprocess_image`, and its pixels.

:func:`crop_box` is the geometry (the shorter side resized to ``prep.resize_size or
prep.image_size``, the centre ``image_size`` square cropped); :func:`pixels_tensor` turns
the cropped ``(H, W, 3)`` uint8 pixels into the model's tensor. An RGB array that needs no
resize (its shorter side already has the resize size) is cropped by slicing, without a
round trip through PIL (:func:`array_pixels`): the same pixels, since a PIL crop copies
them unchanged.

uint8 tensors are ``(3, H, W)`` views of the ``(H, W, 3)`` pixels (channels-last strides):
:class:`sktransfer.inputs.pixels.StackPixels` stacks them into the channels-last batch the
networks run on, so the pixels are copied once and never transposed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def resample_filter(prep):
    """The PIL filter of ``prep.interpolation``; ``ValueError`` for an unknown name."""
    resample = INTERPOLATION.get(prep.interpolation)
    if resample is None:
        opts = sorted(INTERPOLATION)
        raise ValueError(f"Unknown interpolation {prep.interpolation!r}; use one of {opts}.")
    return resample


def crop_box(w, h, prep):
    """``((new_w, new_h), (left, top, right, bottom))`` for a ``w x h`` image."""
    size = int(prep.image_size)
    short = int(prep.resize_size or size)
    if w <= h:
        new_w, new_h = short, max(short, int(short * h / w))
    else:
        new_w, new_h = max(short, int(short * w / h)), short
    left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)
    return (new_w, new_h), (left, top, left + size, top + size)


def as_uint8(a):
    """A uint8 array (float arrays in [0, 1] scaled by 255 and rounded), single channel
    squeezed; the conversion :func:`~sktransfer.inputs.images.load_rgb` applies to arrays."""
    if a.dtype.kind == "f":
        a = np.clip(np.rint(np.nan_to_num(a) * 255.0), 0, 255).astype(np.uint8)
    else:
        a = np.asarray(a, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return a


def pixels_tensor(a, prep, normalize):
    """Cropped ``(H, W, 3)`` uint8 pixels -> the ``(3, H, W)`` tensor (see module doc):
    uint8 (a channels-last view of its own copy) or normalised float32 (contiguous)."""
    if not normalize:
        return torch.from_numpy(np.array(a, dtype=np.uint8, order="C")).permute(2, 0, 1)
    a = np.asarray(a, dtype=np.float32) / np.float32(255.0)
    a = (a - np.float32(prep.mean)) / np.float32(prep.std)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def array_pixels(a, prep, normalize):
    """The tensor of an RGB array (uint8, or float in [0, 1]) that needs no resize, cropped
    by slicing; ``None`` when the array needs PIL (a resize, or not 3 channels)."""
    resample_filter(prep)  # an unknown interpolation fails as it does through PIL
    if a.ndim != 3 or a.shape[2] != 3:
        return None
    h, w = a.shape[:2]
    (new_w, new_h), (left, top, right, bottom) = crop_box(w, h, prep)
    if (new_w, new_h) != (w, h) or left < 0 or top < 0 or right > w or bottom > h:
        return None  # (a crop past the border: PIL pads it)
    return pixels_tensor(as_uint8(a[top:bottom, left:right]), prep, normalize)
