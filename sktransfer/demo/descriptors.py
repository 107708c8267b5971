"""Classical texture descriptors for the demo's no-transfer image baseline, in numpy.

The baseline a practitioner would reach for on texture photographs is not logistic regression
on raw pixels but texture descriptors (local binary patterns, histograms of oriented gradients)
with a linear model. scikit-image has both (``skimage.feature.local_binary_pattern``, ``hog``),
but the demo installs its wheel with ``--no-deps`` for the data files alone, and
``import skimage.feature`` then fails (``lazy_loader`` and friends are missing); so the
descriptors are computed here, following the published definition:

* :func:`lbp_histogram` -- rotation-invariant uniform local binary patterns ("riu2", Ojala,
  Pietikainen and Maenpaa, TPAMI 2002; skimage's ``method="uniform"``): ``P`` neighbours on a
  circle of radius ``R`` sampled with bilinear interpolation, a bit per neighbour at least as
  bright as the centre, code = the number of set bits when the circular pattern has at most two
  0/1 transitions, else ``P + 1``; the normalised histogram of the ``P + 2`` codes. Away
  from the border the codes equal scikit-image 0.26's compiled ``_local_binary_pattern``
  (checked pixel for pixel at (8, 1), (16, 2), (24, 3)); at the border this pads by edge
  replication where scikit-image reads zeros.
* :func:`intensity_stats` -- a grey-level histogram, mean, standard deviation and mean gradient
  magnitude: brightness and contrast, which differ between photos too.

:class:`TextureDescriptors` stacks the two as a scikit-learn transformer. Measured on the
demo's texture patches (6 photos, 5 draws, logistic regression on standardised features, test
accuracy at 1 / 5 / 32 labelled patches per class): LBP + intensity 0.896 / 0.965 / 0.984,
LBP alone 0.839 / 0.936 / 0.979, intensity alone 0.751 / 0.911 / 0.948, adding a 4x4-cell HOG
(Dalal and Triggs) 0.717 / 0.851 / 0.953 (its spatial layout is noise for a texture), raw
pixels 0.402 / 0.459 / 0.526. The variant was chosen by those test scores, which favours the
baseline: the demo's verdicts are, if anything, against sktransfer.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

#: (neighbours, radius) pairs of the multi-scale LBP histogram
LBP_SCALES = ((8, 1), (16, 2), (24, 3))
#: per-image features by (parameters, image digest): the demo scores the same test images
#: after every one of its draws; bounded, cleared when full
_MEMO: dict = {}
_MEMO_MAX = 100_000


def as_grey_batch(X):
    """``(n, H, W)`` float64 grey images in ``[0, 255]`` from uint8 ``(n, H, W[, C])`` arrays
    or float ones in ``[0, 1]`` (colour is averaged)."""
    X = np.asarray(X)
    if X.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (n, H, W) or (n, H, W, C), got {X.shape}")
    scale = 255.0 if np.issubdtype(X.dtype, np.floating) else 1.0
    X = X.astype(np.float64) * scale
    return X.mean(axis=3) if X.ndim == 4 else X


def _sample(padded, pad, dy, dx, shape):
    """``image[r + dy, c + dx]`` for every pixel ``(r, c)``, bilinear between pixels."""
    h, w = shape
    y0, x0 = math.floor(dy), math.floor(dx)
    fy, fx = dy - y0, dx - x0
    out = 0.0
    for oy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
        for ox, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
            if wy * wx > 1e-12:
                out = out + wy * wx * padded[:, pad + oy : pad + oy + h, pad + ox : pad + ox + w]
    return out


def lbp_codes(images, n_points=8, radius=1):
    """Rotation-invariant uniform LBP codes ``0 .. n_points + 1``, one per pixel.

    ``images``: ``(n, H, W)`` float; the border is extended by edge replication, so the
    output has the input's shape.
    """
    images = np.asarray(images, dtype=np.float64)
    pad = int(math.ceil(radius)) + 1
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    bits = []
    for p in range(n_points):
        angle = 2 * math.pi * p / n_points
        dy, dx = round(-radius * math.sin(angle), 12), round(radius * math.cos(angle), 12)
        neighbour = _sample(padded, pad, dy, dx, images.shape[1:])
        # a tolerance for interpolation rounding: a flat patch is "at least as bright"
        bits.append(neighbour - images >= -1e-9)
    bits = np.stack(bits).astype(np.int8)  # (P, n, H, W)
    transitions = np.abs(bits - np.roll(bits, 1, axis=0)).sum(axis=0)
    return np.where(transitions <= 2, bits.sum(axis=0), n_points + 1)


def lbp_histogram(images, n_points=8, radius=1):
    """Per image, the normalised histogram of :func:`lbp_codes` (``n_points + 2`` bins)."""
    codes = lbp_codes(images, n_points, radius).reshape(len(images), -1)
    bins = n_points + 2
    counts = np.stack([np.bincount(c, minlength=bins) for c in codes]).astype(np.float64)
    return counts / codes.shape[1]


def _gradient_magnitude(images):
    """Centred differences (zero on the border)."""
    gy, gx = np.zeros_like(images), np.zeros_like(images)
    gy[:, 1:-1, :] = images[:, 2:, :] - images[:, :-2, :]
    gx[:, :, 1:-1] = images[:, :, 2:] - images[:, :, :-2]
    return np.hypot(gx, gy)


def intensity_stats(images, bins=16):
    """Grey-level histogram (``bins``), mean, std and mean gradient magnitude, in [0, 1]."""
    images = np.asarray(images, dtype=np.float64)
    flat = images.reshape(len(images), -1)
    edges = np.linspace(0, 256, bins + 1)
    hist = np.stack([np.histogram(x, edges)[0] for x in flat]) / flat.shape[1]
    magnitude = _gradient_magnitude(images)
    extra = np.stack(
        [flat.mean(1) / 255, flat.std(1) / 255, magnitude.reshape(len(images), -1).mean(1) / 510],
        axis=1,
    )
    return np.concatenate([hist, extra], axis=1)


class TextureDescriptors(TransformerMixin, BaseEstimator):
    """Multi-scale LBP histograms + intensity statistics of grey images.

    Stateless: ``fit`` learns nothing. Input: uint8 ``(n, H, W[, C])`` or float in ``[0, 1]``.
    Each image's features are remembered by its content (the demo's learning curve scores
    the same test images after every draw).

    Parameters
    ----------
    lbp_scales : tuple of (int, int), default=LBP_SCALES
        ``(neighbours, radius)`` of each LBP histogram.
    bins : int, default=16
        Grey-level histogram bins.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    >>> TextureDescriptors().fit_transform(X).shape
    (3, 73)
    """

    def __init__(self, lbp_scales=LBP_SCALES, bins=16):
        self.lbp_scales = lbp_scales
        self.bins = bins

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        grey = as_grey_batch(X)
        params = (tuple(map(tuple, self.lbp_scales)), self.bins, grey.shape[1:])
        keys = [(params, hashlib.sha256(g.tobytes()).digest()) for g in grey]
        todo = sorted({i for i, k in enumerate(keys) if k not in _MEMO})
        if todo:
            if len(_MEMO) + len(todo) > _MEMO_MAX:
                _MEMO.clear()
            computed = self._compute(grey[todo])
            _MEMO.update({keys[i]: row for i, row in zip(todo, computed)})
        return np.stack([_MEMO[k] for k in keys])

    def _compute(self, grey):
        parts = [lbp_histogram(grey, p, r) for p, r in self.lbp_scales]
        parts.append(intensity_stats(grey, self.bins))
        return np.concatenate(parts, axis=1)
