"""The disk tier of the feature cache: one verified file per entry, never fatal.

An entry is ``<cache_dir>/<key[:2]>/<key>.sktc``::

    b"SKTC2\\n" <40 hex digits> b"\\n" <header JSON, space-padded> b"\\n" <payload>

The digits are BLAKE2b-160 over the entry's key and every byte after their line, the
header and the payload together. An edit anywhere (a flipped bit in the dtype, the shape
or the payload, a truncation, appended bytes, an entry copied under another key's name)
fails that check. The header is then checked on its own: a dtype from :data:`DTYPES`
(the only dtypes written; others stay in memory) and a shape of non-negative ints whose
product matches the payload's length. A file failing anything is removed and its value
recomputed: :func:`read` never raises. Entries of the first format (``SKTC1``, whose
checksum left the header out) fail the magic and are recomputed the same way.

Writes go through :func:`sktransfer.fs.atomic.atomic_write`: a temp file that its
writer holds locked (``flock``) until the rename, so readers see the old entry or the
whole new one. Temp files whose lock is free belong to writers that were killed: they
are removed by :func:`clear` (``clear_cache(disk=True)``) and, once per process and
folder, before the first write into that folder.

The disk tier is an optimisation. An ``OSError`` reading or writing (a full disk, a
quota, an I/O error, a directory made read-only) warns once, naming the directory and
the error, and turns that directory's disk tier off in this process (:func:`turn_off`)
until :func:`reset`; the memory tier carries on and nothing fails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import stat
import sys
import threading
import time
import warnings

import numpy as np

from sktransfer.fs.atomic import atomic_write, remove_stale_temps_under

MAGIC = b"SKTC2\n"
SUFFIX = ".sktc"
#: The dtypes written to disk (and so the only ones a read accepts): features and
#: activations are float32; other dtypes stay in the memory tier.
DTYPES = frozenset({"<f2", "<f4", "<f8"})
PROBE_PREFIX = ".sktransfer-probe-"
#: A file larger than this is no entry (one sample's features or activations): it is
#: removed unread rather than loaded into memory.
MAX_ENTRY_BYTES = 1 << 30
_DIGITS = 40  # hex digits of a 20-byte BLAKE2b
_START = len(MAGIC) + _DIGITS + 1  # where the checksummed body begins
_ALIGN = 64  # the payload starts at a multiple of this: aligned views, no copy
_MAX_NDIM = 16

_OFF: dict[str, str] = {}  # absolute cache dir -> why its disk tier is off in this process
_SWEPT: set[str] = set()  # entry folders this process has cleared of dead writers' temps
_STATE_LOCK = threading.Lock()


def entry_path(cache_dir, key: str) -> str:
    """Where the entry of ``key`` lives under ``cache_dir``."""
    return os.path.join(cache_dir, key[:2], key + SUFFIX)


def _checksum(key: str, *body) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    h.update(key.encode("utf-8") + b"\x00")
    for part in body:
        h.update(part)
    return h.hexdigest().encode("ascii")


# --------------------------------------------------------------------------- format
def encode(key: str, value) -> list | None:
    """The byte strings of ``value``'s entry for ``key`` (written one after another),
    or ``None`` for a dtype not in :data:`DTYPES` (such values stay in memory)."""
    value = np.ascontiguousarray(value)
    if value.dtype.str not in DTYPES:
        return None
    header = json.dumps(
        {"dtype": value.dtype.str, "shape": list(value.shape), "nbytes": int(value.nbytes)}
    ).encode("ascii")
    header += b" " * (-(_START + len(header) + 1) % _ALIGN) + b"\n"
    payload = value.reshape(-1).view(np.uint8)
    return [MAGIC + _checksum(key, header, payload) + b"\n" + header, payload]


def decode(key: str, blob: bytes) -> np.ndarray | None:
    """The read-only array an entry ``blob`` of ``key`` holds, or ``None`` unless every
    check passes. Never raises: a damaged file can make json, the codec or numpy raise
    anything (a ``RecursionError`` on nested brackets, a ``UnicodeDecodeError``, ...)."""
    try:
        return _decode(key, blob)
    except Exception:  # noqa: BLE001 - whatever a damaged entry raises, it is only a miss
        return None


def _decode(key, blob):
    if blob[: len(MAGIC)] != MAGIC or blob[_START - 1 : _START] != b"\n":
        return None
    stored = blob[len(MAGIC) : _START - 1]
    if not hmac.compare_digest(_checksum(key, memoryview(blob)[_START:]), stored):
        return None
    end = blob.index(b"\n", _START)
    header = json.loads(blob[_START:end].decode("ascii"))
    checked = _check_header(header, len(blob) - end - 1)
    if checked is None:
        return None
    dtype, shape = checked
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(blob, dtype=dtype, count=count, offset=end + 1).reshape(shape)


def _check_header(header, nbytes: int):
    """``(dtype, shape)`` if ``header`` is one this module writes for ``nbytes`` of payload."""
    if not isinstance(header, dict) or set(header) != {"dtype", "shape", "nbytes"}:
        return None
    name, shape, size = header["dtype"], header["shape"], header["nbytes"]
    if not isinstance(name, str) or name not in DTYPES:
        return None
    if type(shape) is not list or len(shape) > _MAX_NDIM:
        return None
    if any(type(d) is not int or d < 0 for d in shape) or type(size) is not int:
        return None
    dtype = np.dtype(name)
    if size != nbytes or math.prod(shape) * dtype.itemsize != nbytes:
        return None
    return dtype, tuple(shape)


# --------------------------------------------------------------------------- tier off
def is_off(cache_dir) -> bool:
    return os.path.abspath(cache_dir) in _OFF


def turn_off(cache_dir, action: str, exc: OSError) -> None:
    """Warn once (a ``UserWarning`` naming ``cache_dir`` and ``exc``) and stop using the
    disk tier of ``cache_dir`` in this process until :func:`reset`."""
    where = os.path.abspath(cache_dir)
    why = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else repr(exc)
    with _STATE_LOCK:
        if where in _OFF:
            return
        _OFF[where] = why
    warnings.warn(
        f"sktransfer: cannot {action} the feature cache directory {where!r}: {why}. "
        "Carrying on with the in-memory cache only: the disk tier of this directory is off "
        "in this process until sktransfer.clear_cache().",
        UserWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside sktransfer (the user's call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("sktransfer"):
        frame, level = frame.f_back, level + 1
    return level


def reset() -> None:
    """Turn every directory's disk tier back on (they are tried again) and forget which
    folders were swept."""
    with _STATE_LOCK:
        _OFF.clear()
        _SWEPT.clear()


# --------------------------------------------------------------------------- read / write
def read(cache_dir, key: str):
    """The entry of ``key`` (a read-only array), or ``None``: absent, damaged (then the
    file is removed), or the disk tier is off. Never raises."""
    if is_off(cache_dir):
        return None
    path = entry_path(cache_dir, key)
    try:
        blob = _read_regular(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        turn_off(cache_dir, "read", exc)
        return None
    value = None if blob is None else decode(key, blob)
    if value is None and blob is not None:
        _remove(path)
    return value


def _read_regular(path):
    """The bytes of ``path``; ``None`` if it is not a regular file (never blocks on a FIFO),
    ``b""`` (damaged) if it is larger than any entry (:data:`MAX_ENTRY_BYTES`)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return b"" if st.st_size > MAX_ENTRY_BYTES else fh.read()


def _remove(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write(cache_dir, key: str, value) -> None:
    """Store ``value`` as the entry of ``key``; an ``OSError`` turns the tier off (warns)."""
    if is_off(cache_dir):
        return
    parts = encode(key, value)
    if parts is None:
        return
    path = entry_path(cache_dir, key)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        _sweep_once(folder)
        with atomic_write(path) as fh:  # readers see the old entry or the whole new one
            for part in parts:
                fh.write(part)
    except OSError as exc:
        turn_off(cache_dir, "write to", exc)


def _sweep_once(folder) -> None:
    """Remove the temp files killed writers left in ``folder``, once per process: one
    directory listing per folder (256 at most), so a long-lived cache stays clean."""
    with _STATE_LOCK:
        if folder in _SWEPT:
            return
        _SWEPT.add(folder)
    remove_stale_temps_under(folder, target_suffix=SUFFIX)


def clear(cache_dir) -> None:
    """Remove every entry under ``cache_dir``, every temp file whose writer is gone
    (a live writer's is kept) and probe files older than a minute. Best effort: never
    raises; symlinks are not followed."""
    if not cache_dir or not os.path.isdir(cache_dir):
        return
    try:
        remove_stale_temps_under(cache_dir, target_suffix=SUFFIX)
    except OSError:
        pass
    now = time.time()
    for root, _dirs, files in os.walk(cache_dir):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(SUFFIX) and not name.startswith("."):
                _remove(path)
            elif name.startswith(PROBE_PREFIX) and _older_than(path, now, 60):
                _remove(path)


def _older_than(path, now, seconds) -> bool:
    try:
        return now - os.stat(path, follow_symlinks=False).st_mtime > seconds
    except OSError:
        return False
