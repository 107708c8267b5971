"""uint8 image batches, normalised on the model's device.

Inside the estimators an image dataset yields the resized, cropped pixels as uint8
(``ImageDataset(..., normalize=False)``) and :class:`StackPixels` collates them into
a :class:`PixelBatch`. The float conversion and the mean/std normalisation run in
:func:`sktransfer.runtime.device.to_device`, after the copy to the device. So a quarter of
the bytes cross the DataLoader workers' shared memory, the pinned-memory copy and
the host-to-device transfer, and the workers do no per-pixel float arithmetic.

The arithmetic is the float path's, ``(x / 255 - mean) / std`` in float32 with true
divisions, so on the CPU the model sees bit-identical input either way.

Layout: samples are ``(3, H, W)`` views of ``(H, W, 3)`` pixels (channels-last strides,
:func:`sktransfer.inputs.images.preprocess_image`), and :class:`StackPixels` stacks them
as ``(N, H, W, 3)``, which is the channels-last ``(N, 3, H, W)`` batch the networks run on
without another copy. The normalisation then runs over rows of ``W x 3`` interleaved
values against the statistics repeated along a row: a contiguous inner dimension, which
the CPU kernels vectorise (measured, one thread, 4 images at 224 px: 0.16 ms per image
against 0.45 ms for a ``(1, 3, 1, 1)`` broadcast over a channels-last batch, after a
layout copy), with the same IEEE operations on every element.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import default_collate


def _floats(v) -> tuple:
    """A per-channel statistic (a number or a sequence) as a tuple of floats."""
    return tuple(float(m) for m in np.atleast_1d(np.asarray(v, dtype=np.float64)))


class PixelBatch:
    """``pixels`` (uint8, ``(N, 3, H, W)``, any memory layout) and the ``mean``/``std``
    that normalise them.

    ``len()`` is the batch size (skorch counts batches with it); ``pin_memory()`` is
    what ``DataLoader(pin_memory=True)`` calls on it.
    """

    def __init__(self, pixels, mean, std):
        self.pixels, self.mean, self.std = pixels, _floats(mean), _floats(std)

    def __len__(self):
        return len(self.pixels)

    def pin_memory(self):
        return PixelBatch(self.pixels.pin_memory(), self.mean, self.std)

    def to(self, device, channels_last=False) -> torch.Tensor:
        """The normalised float32 batch on ``device`` (channels-last when asked, else
        contiguous NCHW)."""
        cl = torch.channels_last
        x = self.pixels.to(device, non_blocking=True)
        n, c, h, w = x.shape if x.dim() == 4 else (0, 0, 0, 0)
        if x.dim() != 4 or not _per_channel(self.mean, c) or not _per_channel(self.std, c):
            fmt = cl if channels_last else torch.contiguous_format
            x = x.to(memory_format=fmt).float()
            scale, mean, std = _constants(x.device, self.mean, self.std)
            return x.div_(scale).sub_(mean).div_(std)
        if not x.is_contiguous(memory_format=cl):
            x = x.contiguous(memory_format=cl)
        rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c).float()  # (a view of x, then floats)
        scale, mean, std = _row_constants(rows.device, self.mean, self.std, c, w)
        out = rows.div_(scale).sub_(mean).div_(std).view(n, h, w, c).permute(0, 3, 1, 2)
        return out if channels_last else out.contiguous()

    def __repr__(self):
        return f"PixelBatch(pixels={tuple(self.pixels.shape)}, mean={self.mean}, std={self.std})"


def _per_channel(stat, c) -> bool:
    """A statistic that names one value per channel, or one for all."""
    return len(stat) in (1, c) and c > 0


_CONSTANTS: dict = {}


def _constants(device, mean, std):
    """``(255, mean, std)`` as float32 ``(1, C, 1, 1)`` tensors on ``device``, made once
    per device.

    Tensors rather than Python scalars: CUDA turns division by a scalar into a
    multiplication by its reciprocal, which rounds differently. Made once because
    copying a new host tensor to a GPU waits for the GPU's queue.
    """
    key = (str(device), mean, std)
    out = _CONSTANTS.get(key)
    if out is None:

        def column(v):
            return torch.tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1).to(device)

        out = _CONSTANTS[key] = (column(255.0), column(mean), column(std))
    return out


def _row_constants(device, mean, std, c, w):
    """``(255, mean, std)`` as float32 tensors for rows of ``w`` pixels of ``c``
    interleaved channels: ``(1, 1)`` and ``(1, w * c)`` (the statistics repeated), made
    once per device and row width."""
    key = (str(device), mean, std, c, w)
    out = _CONSTANTS.get(key)
    if out is None:

        def row(v):
            per = np.broadcast_to(np.asarray(v, dtype=np.float32), (c,))
            return torch.from_numpy(np.tile(per, w)).reshape(1, w * c).to(device)

        scale = torch.tensor([[255.0]], dtype=torch.float32).to(device)
        out = _CONSTANTS[key] = (scale, row(mean), row(std))
    return out


def _is_pixels(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 3


def _stack_channels_last(xs):
    """uint8 ``(3, H, W)`` samples -> one ``(N, 3, H, W)`` batch in channels-last memory.

    Stacked as ``(N, H, W, 3)`` through ``default_collate`` (which writes a worker's batch
    straight into shared memory); samples that are views of ``(H, W, 3)`` pixels are copied
    once, without a transposition."""
    return default_collate([x.permute(1, 2, 0) for x in xs]).permute(0, 3, 1, 2)


class StackPixels:
    """Collate ``(pixels, target)`` pairs into ``(PixelBatch, targets)``.

    uint8 samples become a :class:`PixelBatch` in channels-last memory; float samples
    (already normalised) are stacked as they are. Stacking goes through
    ``default_collate``, which writes a worker's batch straight into shared memory.
    """

    def __init__(self, mean, std):
        self.mean, self.std = _floats(mean), _floats(std)

    def __call__(self, batch):
        xs = [x for x, _ in batch]
        if xs and all(_is_pixels(x) for x in xs):
            pixels = _stack_channels_last(xs)
            return PixelBatch(pixels, self.mean, self.std), default_collate([t for _, t in batch])
        x, targets = default_collate(batch)
        if x.dtype == torch.uint8:
            x = PixelBatch(x, self.mean, self.std)
        return x, targets
