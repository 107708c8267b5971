"""Per-sample content keys for the feature cache: same content, same key.

Files are keyed by absolute path, size and mtime (not read); arrays, PIL images
and texts by a BLAKE2b digest of their bytes. Import from :mod:`sktransfer.data`.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image

from sktransfer.inputs.images import _bad_type, _closed_error, _is_closed


def _digest(*parts):
    h = hashlib.blake2b(digest_size=20)
    for p in parts:
        h.update(p if isinstance(p, (bytes, memoryview)) else str(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def sample_keys(items, kind="image", index=None):
    """Content keys for a feature cache: same content gives the same key.

    Parameters
    ----------
    items : list
        Output of :func:`check_images` (``kind="image"``) or :func:`check_texts`
        (``kind="text"``).
    kind : {"image", "text"}
        How to interpret ``str`` items: as file paths or as texts.
    index : sequence of int, optional
        The caller's index of each item (for error messages when ``items`` is a
        subset); default ``0..n-1``.

    Returns
    -------
    keys : list of str
        ``"path:<abspath>:<size>:<mtime_ns>"`` for files, ``"arr:<blake2b>"`` for
        arrays, ``"pil:<blake2b>"`` for PIL images, ``"txt:<blake2b>"`` for texts.
    """
    if kind not in ("image", "text"):
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}.")
    keys = []
    for pos, item in enumerate(items):
        i = pos if index is None else index[pos]
        if kind == "text":
            if not isinstance(item, str):
                raise TypeError(f"Sample {i}: expected a str, got {type(item).__name__}.")
            try:
                keys.append("txt:" + _digest(item.encode("utf-8")))
            except UnicodeEncodeError as exc:
                raise ValueError(f"Sample {i}: text is not valid Unicode ({exc.reason}).") from exc
        elif isinstance(item, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(item))
            try:
                st = os.stat(path)
            except OSError as exc:
                raise ValueError(f"Sample {i}: cannot read {path!r}: {exc.strerror}.") from exc
            keys.append(f"path:{path}:{st.st_size}:{st.st_mtime_ns}")
        elif isinstance(item, np.ndarray):
            a = np.ascontiguousarray(item)
            keys.append("arr:" + _digest(a.shape, a.dtype.str, memoryview(a).cast("B")))
        elif isinstance(item, Image.Image):
            if _is_closed(item):
                raise _closed_error(i)
            keys.append("pil:" + _digest(item.mode, item.size, item.tobytes()))
        else:
            raise _bad_type(item, i)
    return keys
