"""Content-addressed cache of backbone outputs (features and frozen-prefix activations).

An entry's key is ``namespace + per-sample content key``: the namespace hashes the
backbone identity (its source and the bytes of the blocks that produced the
output), the preprocessing and the block boundary; the sample key hashes the
array bytes, the file's bytes, or the text (:func:`sktransfer.data.sample_keys`).
Per-sample keys let overlapping cross-validation folds share entries, so a
GridSearchCV runs the backbone once per unique sample.

Two tiers: an in-process LRU bounded in bytes (always on unless disabled) and an
optional directory (``cache_dir``) that separate processes share (GridSearchCV
with ``n_jobs > 1``); its format and its faults are :mod:`sktransfer.cache.disk`'s.
Nothing of the cache is ever pickled with an estimator.

The cache never serves wrong data and is never fatal:

* a disk entry's checksum covers its key, header and payload; any edit, truncation or
  unknown dtype makes it a miss (the file is removed, the value recomputed);
* a file is keyed by a digest of its bytes, so new content under a restored mtime
  (``cp -p``, ``tar x``, ``rsync -t``) is a miss; features computed from a file that
  changed while they were computed are returned but not stored;
* an ``OSError`` of the disk tier during fit or predict (a full disk, a quota, an I/O
  error) warns once and carries on in memory;
* values handed out are read-only arrays, so no caller can edit an entry in place.

A misconfigured ``cache_dir`` (a file, a directory without write permission, a read-only
mount, a path under a file) is a ``ValueError`` before any backbone work
(:func:`check_cache_dir`); a full or failing disk found there only warns, as above.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from contextlib import contextmanager

import numpy as np

from sktransfer.cache import disk as _disk
from sktransfer.cache.keys import digest, forget_files
from sktransfer.cache.lru import LRU

_LOCK = threading.RLock()
_CONFIG = {"cache": True, "cache_dir": None, "cache_max_bytes": 2 * 1024**3}
_STATS = {"hits": 0, "misses": 0, "disk_hits": 0, "backbone_forwards": 0, "evictions": 0}


_USABLE_DIRS: set = set()  # cache directories already shown to accept an entry


# Errors of the probe that say the directory itself is wrong (the user's to fix); any other
# OSError (a full disk, a quota, an I/O error) only turns the disk tier off, with a warning.
_CONFIG_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
     errno.ENAMETOOLONG, errno.ELOOP, errno.ENOENT}
)  # fmt: skip


def check_cache_dir(cache_dir):
    """Raise ``ValueError`` unless ``cache_dir`` (created if missing) accepts a new file.

    Tried for real (a temp file is created and removed): permission bits do not say
    what a read-only mount or a root-owned directory allows. Memoised per path.
    ``None`` or ``""`` (no disk tier) passes. A directory that is fine but cannot take
    a file now (a full disk, a quota, an I/O error) is not an error: a ``UserWarning``,
    and the memory tier alone (:func:`sktransfer.cache.disk.turn_off`).
    """
    if not cache_dir:
        return
    try:
        path = os.path.abspath(os.fspath(cache_dir))
    except TypeError:
        raise TypeError(
            f"cache_dir must be a directory path (str or os.PathLike) or None, "
            f"got {type(cache_dir).__name__}: {cache_dir!r}."
        ) from None
    if path in _USABLE_DIRS or _disk.is_off(path):
        return
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=_disk.PROBE_PREFIX)
        os.close(fd)
        _disk._remove(probe)  # (gone already if another process's clear_cache took it)
    except OSError as exc:
        is_file = os.path.exists(path) and not os.path.isdir(path)
        if not is_file and exc.errno not in _CONFIG_ERRNOS:
            _disk.turn_off(path, "write to", exc)
            return
        why = "is not a directory" if is_file else f"cannot be written ({exc.strerror or exc})"
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
            if cache_dir:
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


#: ``(clear, stats)`` of the memos that layers above keep (the probe-head memo of
#: :mod:`sktransfer.training.heads`): emptied by :func:`clear_cache`, counted by
#: :func:`cache_info`. The cache imports nothing above it; they register here.
_MEMOS: list = []


def register_memo(clear, stats) -> None:
    """Have :func:`clear_cache` call ``clear()`` and :func:`cache_info` report ``stats()``
    (a dict of counters) for a memo kept outside the cache."""
    _MEMOS.append((clear, stats))


def cache_info() -> dict:
    """Counters since the last :func:`clear_cache`.

    ``hits``/``misses`` count samples looked up; ``backbone_forwards`` counts samples
    run through the backbone from raw input; ``entries``/``bytes`` describe the
    in-memory tier; ``head_solves``/``head_hits`` count probe-head fits solved and
    taken from the head memo (:mod:`sktransfer.training.heads`).
    """
    with _LOCK:
        info = {**_STATS, "evictions": _MEMORY.evictions, "entries": len(_MEMORY),
                "bytes": _MEMORY.size}  # fmt: skip
    for _, stats in _MEMOS:
        info.update(stats())
    return info


def clear_cache(*, disk=False, cache_dir=None) -> None:
    """Empty the in-memory tier and the head memo; reset counters.

    With ``disk=True`` also empty the disk tier of ``cache_dir`` (default: the configured
    one): every entry, and every temp file whose writer is gone (killed mid-write); a live
    writer's temp file is kept. Best effort, never raises. Any disk tier that an
    ``OSError`` turned off is tried again from now on.
    """
    for clear, _ in _MEMOS:
        clear()
    with _LOCK:
        _MEMORY.clear()
        _MEMORY.evictions = 0
        for k in _STATS:
            _STATS[k] = 0
        forget_files()
        _disk.reset()
        if disk:
            _disk.clear(cache_dir or _CONFIG["cache_dir"])


def count_forwards(n: int) -> None:
    with _LOCK:
        _STATS["backbone_forwards"] += int(n)


# --------------------------------------------------------------------------- tiers
_MEMORY = LRU(_CONFIG["cache_max_bytes"], sizeof=lambda value: value.nbytes)


def _unchanged(sample_key) -> bool:
    """Whether what a sample key was made from is still what was computed (a file keyed by
    its bytes may have changed between hashing and decoding); plain keys always are."""
    check = getattr(sample_key, "unchanged", None)
    return check is None or check()


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
    if cache_dir:
        cache_dir = os.path.abspath(os.fspath(cache_dir))
    keys = [digest(namespace, k) for k in sample_keys]
    out = [None] * len(keys)
    missing = []
    with _LOCK:
        for i, key in enumerate(keys):
            value = _MEMORY.get(key)
            if value is None and cache_dir:
                value = _disk.read(cache_dir, key)  # read-only; None if absent or damaged
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
                out[i] = value
                if not _unchanged(sample_keys[i]):
                    continue  # computed from other content than the key names: not stored
                _MEMORY.put(keys[i], value)
                if cache_dir:
                    _disk.write(cache_dir, keys[i], value)  # an OSError only warns, once
    for i in missing:
        if out[i] is None:
            out[i] = out[first[keys[i]]]
    return out
