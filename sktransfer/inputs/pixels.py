"""uint8 image batches, normalised on the model's device.

Inside the estimators an image dataset yields the resized, cropped pixels as uint8
(``ImageDataset(..., normalize=False)``) and :class:`StackPixels` collates them into
a :class:`PixelBatch`. The float conversion and the mean/std normalisation run in
:func:`sktransfer.training.batches.to_device`, after the copy to the device. So a quarter of
the bytes cross the DataLoader workers' shared memory, the pinned-memory copy and
the host-to-device transfer, and the workers do no per-pixel float arithmetic.

The arithmetic is the float path's, ``(x / 255 - mean) / std`` in float32 with true
divisions, so on the CPU the model sees bit-identical input either way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import default_collate


def _floats(v) -> tuple:
    """A per-channel statistic (a number or a sequence) as a tuple of floats."""
    return tuple(float(m) for m in np.atleast_1d(np.asarray(v, dtype=np.float64)))


class PixelBatch:
    """``pixels`` (uint8, ``(N, 3, H, W)``) and the ``mean``/``std`` that normalise them.

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
        """The normalised float32 batch on ``device`` (channels-last when asked)."""
        fmt = torch.channels_last if channels_last else torch.preserve_format
        x = self.pixels.to(device, memory_format=fmt, non_blocking=True).float()
        scale, mean, std = _constants(x.device, self.mean, self.std)
        return x.div_(scale).sub_(mean).div_(std)

    def __repr__(self):
        return f"PixelBatch(pixels={tuple(self.pixels.shape)}, mean={self.mean}, std={self.std})"


_CONSTANTS: dict = {}


def _constants(device, mean, std):
    """``(255, mean, std)`` as float32 tensors on ``device``, made once per device.

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


class StackPixels:
    """Collate ``(pixels, target)`` pairs into ``(PixelBatch, targets)``.

    uint8 samples become a :class:`PixelBatch`; float samples (already normalised)
    are stacked as they are. Stacking goes through ``default_collate``, which writes a
    worker's batch straight into shared memory.
    """

    def __init__(self, mean, std):
        self.mean, self.std = _floats(mean), _floats(std)

    def __call__(self, batch):
        x, targets = default_collate(batch)
        if x.dtype == torch.uint8:
            x = PixelBatch(x, self.mean, self.std)
        return x, targets
