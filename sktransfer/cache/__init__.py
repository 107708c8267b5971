"""Content-addressed cache of backbone outputs (features and frozen-prefix activations).

An entry's key is ``namespace + per-sample content key``: the namespace hashes the
backbone identity (its source and the bytes of the blocks that produced the
output), the preprocessing and the block boundary; the sample key hashes the
array bytes, the file path + size + mtime, or the text (:func:`sktransfer.data.sample_keys`).
Per-sample keys let overlapping cross-validation folds share entries, so a
GridSearchCV runs the backbone once per unique sample.

Two tiers: an in-process LRU bounded in bytes (always on unless disabled) and an
optional directory (``cache_dir``) that separate processes share (GridSearchCV
with ``n_jobs > 1``). Disk entries are written atomically (temp file +
``os.replace``) and carry a checksum; a corrupt or truncated entry is ignored and
recomputed. Nothing of the cache is ever pickled with an estimator.

An unusable ``cache_dir`` (a file, a read-only directory, a path under a file) is a
``ValueError`` before any backbone work (:func:`check_cache_dir`), not an ``OSError``
after the features were computed.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager

import numpy as np

from sktransfer.cache.keys import digest
from sktransfer.cache.lru import LRU
from sktransfer.io.atomic import atomic_write

_MAGIC = b"SKTC1\n"
_LOCK = threading.RLock()
_CONFIG = {"cache": True, "cache_dir": None, "cache_max_bytes": 2 * 1024**3}
_STATS = {"hits": 0, "misses": 0, "disk_hits": 0, "backbone_forwards": 0, "evictions": 0}


_USABLE_DIRS: set = set()  # cache directories already shown to accept an entry


def check_cache_dir(cache_dir):
    """Raise ``ValueError`` unless ``cache_dir`` (created if missing) accepts a new file.

    Tried for real (a temp file is created and removed): permission bits do not say
    what a read-only mount or a root-owned directory allows. Memoised per path.
    ``None`` or ``""`` (no disk tier) passes.
    """
    if not cache_dir:
        return
    path = os.path.abspath(os.fspath(cache_dir))
    if path in _USABLE_DIRS:
        return
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".sktransfer-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = (
            "is not a directory"
            if os.path.exists(path) and not os.path.isdir(path)
            else (f"cannot be written ({exc.strerror or exc})")
        )
        raise ValueError(
            f"cache_dir {os.fspath(cache_dir)!r} {why}; pass a writable directory, "
            "or cache_dir=None for the in-memory cache only."
        ) from exc
    _USABLE_DIRS.add(path)


def set_config(*, cache=None, cache_dir=None, cache_max_bytes=None):
    """Set global cache options (``None`` leaves an option unchanged).

    Parameters
    ----------
    cache : bool
        Turn feature caching on or off.
    cache_dir : str or path, or ""
        Directory shared by processes; ``""`` turns the disk tier off.
    cache_max_bytes : int
        Bound of the in-memory tier; least recently used entries are evicted.
    """
    with _LOCK:
        if cache is not None:
            _CONFIG["cache"] = bool(cache)
        if cache_dir is not None:
            check_cache_dir(cache_dir)
            _CONFIG["cache_dir"] = os.fspath(cache_dir) or None
        if cache_max_bytes is not None:
            if int(cache_max_bytes) < 0:
                raise ValueError(f"cache_max_bytes must be >= 0, got {cache_max_bytes}")
            _CONFIG["cache_max_bytes"] = int(cache_max_bytes)
            _MEMORY.limit = _CONFIG["cache_max_bytes"]
            _MEMORY.trim()


def get_config() -> dict:
    """The current global cache options."""
    return dict(_CONFIG)


@contextmanager
def config_context(**options):
    """Temporarily :func:`set_config` within a ``with`` block."""
    old = get_config()
    set_config(**options)
    try:
        yield
    finally:
        _CONFIG.update(old)


def cache_info() -> dict:
    """Counters since the last :func:`clear_cache`.

    ``hits``/``misses`` count samples looked up; ``backbone_forwards`` counts samples
    run through the backbone from raw input; ``entries``/``bytes`` describe the
    in-memory tier; ``head_solves``/``head_hits`` count probe-head fits solved and
    taken from the head memo (:mod:`sktransfer.training.heads`).
    """
    from sktransfer.training import heads

    with _LOCK:
        info = {**_STATS, "evictions": _MEMORY.evictions, "entries": len(_MEMORY),
                "bytes": _MEMORY.size}  # fmt: skip
    return {**info, **heads.STATS}


def clear_cache(*, disk=False) -> None:
    """Empty the in-memory tier (and the disk tier with ``disk=True``) and the head memo;
    reset counters."""
    from sktransfer.training import heads

    heads.clear_memo()
    with _LOCK:
        _MEMORY.clear()
        _MEMORY.evictions = 0
        for k in _STATS:
            _STATS[k] = 0
        if disk and _CONFIG["cache_dir"]:
            for root, _, files in os.walk(_CONFIG["cache_dir"]):
                for f in files:
                    if f.endswith(".sktc"):
                        os.unlink(os.path.join(root, f))


def count_forwards(n: int) -> None:
    with _LOCK:
        _STATS["backbone_forwards"] += int(n)


# --------------------------------------------------------------------------- tiers
_MEMORY = LRU(_CONFIG["cache_max_bytes"], sizeof=lambda value: value.nbytes)


def _disk_path(cache_dir, key):
    return os.path.join(cache_dir, key[:2], key + ".sktc")


def _disk_read(cache_dir, key):
    path = _disk_path(cache_dir, key)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    try:
        if not blob.startswith(_MAGIC):
            raise ValueError("bad magic")
        header_end = blob.index(b"\n", len(_MAGIC))
        header = json.loads(blob[len(_MAGIC) : header_end])
        payload = blob[header_end + 1 :]
        if len(payload) != header["nbytes"] or digest(payload) != header["digest"]:
            raise ValueError("checksum mismatch")
        return np.frombuffer(payload, dtype=header["dtype"]).reshape(header["shape"]).copy()
    except (ValueError, KeyError, TypeError):
        try:  # corrupt: drop it so it gets recomputed
            os.unlink(path)
        except OSError:
            pass
        return None


def _disk_write(cache_dir, key, value):
    path = _disk_path(cache_dir, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    value = np.ascontiguousarray(value)
    payload = value.tobytes()
    header = {
        "dtype": value.dtype.str,
        "shape": list(value.shape),
        "nbytes": len(payload),
        "digest": digest(payload),
    }
    with atomic_write(path) as f:  # readers see the old entry or the whole new one
        f.write(_MAGIC + json.dumps(header).encode() + b"\n" + payload)


# --------------------------------------------------------------------------- lookup
def lookup(namespace, sample_keys, compute, *, cache_dir=None):
    """Per-sample outputs for ``sample_keys``; ``compute(missing_indices)`` fills misses.

    ``compute`` returns a list of per-sample arrays (shapes may differ between
    samples, e.g. token sequences). Returns the list in ``sample_keys`` order.
    """
    if not _CONFIG["cache"]:
        out = compute(list(range(len(sample_keys))))
        return list(out)
    cache_dir = cache_dir or _CONFIG["cache_dir"]
    check_cache_dir(cache_dir)
    keys = [digest(namespace, k) for k in sample_keys]
    out = [None] * len(keys)
    missing = []
    with _LOCK:
        for i, key in enumerate(keys):
            value = _MEMORY.get(key)
            if value is None and cache_dir:
                value = _disk_read(cache_dir, key)
                if value is not None:
                    _STATS["disk_hits"] += 1
                    _MEMORY.put(key, value)
            if value is None:
                missing.append(i)
            else:
                out[i] = value
        _STATS["hits"] += len(keys) - len(missing)
        _STATS["misses"] += len(missing)
    # duplicates inside one call are computed once
    first = {}
    unique_missing = [i for i in missing if first.setdefault(keys[i], i) == i]
    if unique_missing:
        computed = compute(unique_missing)
        with _LOCK:
            for i, value in zip(unique_missing, computed):
                value = np.ascontiguousarray(value)
                value.setflags(write=False)
                _MEMORY.put(keys[i], value)
                if cache_dir:
                    _disk_write(cache_dir, keys[i], value)
                out[i] = value
    for i in missing:
        if out[i] is None:
            out[i] = out[first[keys[i]]]
    return out
