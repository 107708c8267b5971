"""Image augmentation presets and test-time-augmentation views (PIL + numpy, no torchvision).

Training presets (``augment=``), applied to the decoded RGB image before the
backbone's resize / centre crop / normalisation:

* ``"light"``: random horizontal flip + random-resized crop with scale (0.8, 1).
* ``"standard"``: random-resized crop with scale (0.35, 1), horizontal flip and a
  small colour jitter (brightness, contrast, saturation +-0.2).

Random numbers come from torch's generator, which the estimator seeds from
``random_state`` (in ``DataLoader`` workers torch seeds each worker from the
loader's seeded generator), so one ``random_state`` gives the same augmentations.

Test-time views (``tta=n``) are deterministic: a horizontal flip, then crops of
90% of the image at the four corners (resized back), then the same flipped, then
smaller corner crops.
"""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageEnhance, ImageOps

PRESETS = ("light", "standard")


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), dtype=torch.float64))


class RandomResizedCrop:
    """Crop a random area fraction ``scale`` and aspect ratio ``ratio``; resize to ``size``.

    Parameters
    ----------
    size : int
        Output side (square).
    scale : tuple of float
        Range of the crop's area as a fraction of the image's.
    ratio : tuple of float
        Range of the crop's aspect ratio (sampled log-uniformly).
    """

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = int(size)
        self.scale = scale
        self.ratio = ratio

    def box(self, width: int, height: int):
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(torch.randint(0, width - w + 1, ()))
                top = int(torch.randint(0, height - h + 1, ()))
                return left, top, left + w, top + h
        side = min(width, height)  # fallback: the central square
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side

    def __call__(self, img: Image.Image) -> Image.Image:
        box = self.box(*img.size)
        return img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)

    def __repr__(self):
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror the image with probability ``p``."""

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img):
        return ImageOps.mirror(img) if float(torch.rand(())) < self.p else img

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Random brightness, contrast and saturation factors in ``[1 - s, 1 + s]``."""

    def __init__(self, brightness=0.2, contrast=0.2, saturation=0.2):
        self.strengths = (brightness, contrast, saturation)

    def __call__(self, img):
        for enhance, s in zip(
            (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), self.strengths
        ):
            if s > 0:
                img = enhance(img).enhance(_uniform(1 - s, 1 + s))
        return img

    def __repr__(self):
        b, c, s = self.strengths
        return f"ColorJitter(brightness={b}, contrast={c}, saturation={s})"


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self):
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


def make_augment(augment, prep):
    """The training transform for ``augment`` (None, a preset name or a callable).

    Preset crops come out at ``prep.resize_size or prep.image_size``, so the
    estimator's resize is a no-op and its centre crop is the usual one.
    """
    if augment is None or callable(augment):
        return augment
    size = int(prep.resize_size or prep.image_size)
    if augment == "light":
        return Compose([RandomResizedCrop(size, scale=(0.8, 1.0)), RandomHorizontalFlip()])
    if augment == "standard":
        return Compose(
            [RandomResizedCrop(size, scale=(0.35, 1.0)), RandomHorizontalFlip(), ColorJitter()]
        )
    raise ValueError(f"augment must be None, {PRESETS} or a callable, got {augment!r}")


# --------------------------------------------------------------------------- TTA
class TTAView:
    """A deterministic view: optional crop of ``scale`` at ``corner`` (resized back), flip.

    Parameters
    ----------
    flip : bool
    corner : {None, "tl", "tr", "bl", "br"}
        None keeps the whole image.
    scale : float
        Side of the crop relative to the image.
    """

    def __init__(self, flip=False, corner=None, scale=1.0):
        self.flip, self.corner, self.scale = flip, corner, scale

    def __call__(self, img):
        if self.corner is not None:
            w, h = img.size
            cw, ch = max(1, round(w * self.scale)), max(1, round(h * self.scale))
            left = 0 if self.corner[1] == "l" else w - cw
            top = 0 if self.corner[0] == "t" else h - ch
            img = img.resize(
                (w, h), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch)
            )
        return ImageOps.mirror(img) if self.flip else img

    def __repr__(self):
        return f"TTAView(flip={self.flip}, corner={self.corner!r}, scale={self.scale})"


def tta_views(n: int) -> list[TTAView]:
    """The first ``n`` extra test-time views (the original image is not among them)."""
    views = []
    for k in range(int(n)):
        if k == 0:
            views.append(TTAView(flip=True))
            continue
        j = k - 1
        corner = ("tl", "tr", "bl", "br")[j % 4]
        flip = (j // 4) % 2 == 1
        scale = max(0.5, 0.9 - 0.1 * (j // 8))
        views.append(TTAView(flip=flip, corner=corner, scale=scale))
    return views
