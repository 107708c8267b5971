"""The checksummed zip archive behind :func:`sktransfer.save` / :func:`sktransfer.load`.

One zip file: a JSON manifest (``sktransfer.json``) plus data members, the
weights stored uncompressed. The manifest lists every member's SHA-256 and
size, and the zip comment holds the manifest's own SHA-256, so any truncation,
corruption or edit is detected before anything is built from the file. Values
in the manifest are plain JSON; numpy arrays and tuples are tagged so they
round-trip. Nothing here unpickles or imports code. What an estimator's
archive holds is :mod:`sktransfer.io.safe_format`'s business.

Reading does bounded work on any input (see :func:`_read`): the manifest is
read and verified first; unexpected, missing or duplicate members, and members
whose declared size differs from the recorded one, are refused before anything
else is inflated; members are then inflated in chunks, never past their
recorded size. Format 1 files have always recorded every member's size.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import struct
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np

from sktransfer._estimator.pickling import check_version, sktransfer_version
from sktransfer.fs.atomic import atomic_write

FORMAT_NAME = "sktransfer-model"
FORMAT_VERSION = 1
MANIFEST = "sktransfer.json"
WEIGHTS = "weights.safetensors"
_COMMENT = b"sktransfer-sha256:"
_MAX_ARRAY = 1 << 30  # bytes of one array rebuilt from the manifest's JSON


# --------------------------------------------------------------------------- JSON values
def _to_json(value, where):
    """A JSON-ready copy of ``value``; arrays and tuples are tagged so they round-trip."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufUO":
            raise TypeError(f"{where}: arrays of dtype {value.dtype} cannot be saved")
        items = [_to_json(v, where) for v in value.ravel().tolist()]
        if value.dtype.kind == "O" and not all(
            v is None or isinstance(v, (bool, int, float, str)) for v in items
        ):
            raise TypeError(f"{where}: only str, int, float or bool values can be saved")
        return {"__ndarray__": items, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v, where) for v in value]}
    if isinstance(value, list):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}, which cannot be saved as plain data")


def from_json(value):
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if "__ndarray__" in value:
            items = value["__ndarray__"]
            dtype = np.dtype(value["dtype"])
            # what _to_json writes; no void/structured dtypes, no 1e9-char strings
            if dtype.kind not in "biufUO" or dtype.itemsize * max(1, len(items)) > _MAX_ARRAY:
                raise ValueError(f"refusing a saved array of dtype {dtype} and length {len(items)}")
            return _exact_array(items, dtype, value["shape"])
        if "__tuple__" in value:
            return tuple(from_json(v) for v in value["__tuple__"])
        return {k: from_json(v) for k, v in value.items()}
    return value


def _exact_array(items, dtype, shape):
    """The array of ``items`` in ``dtype``, refused unless it holds every item exactly.

    A dtype too narrow for the values (``<U1`` for ``"neg"``, ``int8`` for 300), a
    conversion (``"1"`` into ints, ``0.1`` into float32) or a shape that does not
    count the items is a ``ValueError``: labels are never truncated or converted.
    """
    ok_shape = isinstance(shape, list) and all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    )
    if not ok_shape or int(np.prod(shape, dtype=np.int64)) != len(items):
        raise ValueError(f"a saved array of {len(items)} values has the shape {shape!r}")
    arr = np.empty(len(items), dtype=dtype)
    try:
        arr[:] = items
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"a saved array of dtype {dtype} cannot hold its values ({exc})") from None
    for got, want in zip(arr.tolist(), items):
        nan = isinstance(got, float) and got != got and isinstance(want, float) and want != want
        if not (nan or (type(got) is type(want) or dtype.kind in "fb") and got == want):
            raise ValueError(
                f"a saved array of dtype {dtype} does not hold its values exactly ({want!r} "
                f"would become {got!r}); refusing a truncated or converted array"
            )
    return arr.reshape(shape)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- write
def _write_zip(fh, meta, members):
    meta = dict(
        meta, members={k: {"sha256": _sha256(v), "size": len(v)} for k, v in members.items()}
    )
    manifest = json.dumps(meta, indent=1, sort_keys=True).encode()
    with zipfile.ZipFile(fh, "w") as zf:
        zf.writestr(zipfile.ZipInfo(MANIFEST), manifest, zipfile.ZIP_DEFLATED)
        for name, data in members.items():
            mode = zipfile.ZIP_STORED if name == WEIGHTS else zipfile.ZIP_DEFLATED
            zf.writestr(zipfile.ZipInfo(name), data, mode)
        zf.comment = _COMMENT + _sha256(manifest).encode()


def _atomic_write(path, meta, members):
    with atomic_write(path, durable=True, mode=0o644, clean_stale=True) as fh:
        _write_zip(fh, meta, members)


# --------------------------------------------------------------------------- read
#: The manifest is inflated first, before anything is compared; this bounds it.
MAX_MANIFEST_BYTES = 64 << 20
#: Members stored compressed (everything but the weights) may together inflate to
#: at most this many bytes, or 16x their compressed size if that is more: a
#: self-consistent manifest cannot make :func:`load` inflate a zip bomb either.
MAX_INFLATED_BYTES = 256 << 20
_INFLATE_RATIO = 16
MAX_MEMBERS = 100_000
_CHUNK = 1 << 20
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    NotImplementedError,  # an unsupported compression method
    RuntimeError,  # an encrypted member
    RecursionError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
)


class _Refused(ValueError):
    """A file :func:`_read` refuses; raised as is (its message names the path and member)."""


@contextmanager
def _zip_errors(path, member=None):
    """Turn whatever a damaged zip raises into a ``ValueError`` naming ``path`` and ``member``."""
    try:
        yield
    except (_Refused, FileNotFoundError):
        raise
    except _ZIP_ERRORS as exc:
        where = f" (member {member!r})" if member is not None else ""
        raise _Refused(
            f"{path!r} is not a readable sktransfer model file{where}: it is truncated, "
            f"corrupted or of another format ({type(exc).__name__}: {exc})"
        ) from exc


def _read_member(zf, info, size, path):
    """``(data, sha256)`` of one member, inflated in bounded chunks and never past ``size`` bytes.

    ``size`` is what the manifest records (or the manifest's own cap); the header's
    ``file_size`` was checked against it already, but the stream is counted too, so
    a forged header cannot make this read more than ``size + 1`` bytes.
    """
    chunk = size + 1 if info.compress_type == zipfile.ZIP_STORED else _CHUNK
    digest, parts, count = hashlib.sha256(), [], 0
    with _zip_errors(path, info.filename), zf.open(info) as fh:
        while count <= size:
            data = fh.read(min(chunk, size + 1 - count))
            if not data:
                break
            count += len(data)
            if count > size:
                raise _Refused(
                    f"{path!r} was modified after saving: member {info.filename!r} inflates to "
                    f"more than the {size} bytes the manifest records; it was not read further"
                )
            digest.update(data)
            parts.append(data)
    if count != size:
        raise _Refused(
            f"{path!r} is truncated or was modified after saving: member {info.filename!r} "
            f"holds {count} bytes, the manifest records {size}"
        )
    return (parts[0] if len(parts) == 1 else b"".join(parts)), digest.hexdigest()


def _listed_members(path, meta):
    listed = meta.pop("members", None)
    ok = isinstance(listed, dict) and all(
        isinstance(v, dict)
        and isinstance(v.get("size"), int)
        and not isinstance(v.get("size"), bool)
        and v["size"] >= 0
        and isinstance(v.get("sha256"), str)
        for v in listed.values()
    )
    if not ok:
        raise _Refused(f"{path!r} has a malformed manifest: no member sizes and checksums")
    return listed


def _check_members(path, infos, listed):
    """Refuse unexpected, missing, duplicate or oversized members before inflating any."""
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise _Refused(f"{path!r} was modified after saving: duplicate members {dup}")
    extra = sorted(set(names) - set(listed))
    if extra:
        raise _Refused(
            f"{path!r} was modified after saving: unexpected members {extra} (not in the "
            "manifest); nothing was read from them"
        )
    missing = sorted(set(listed) - set(names))
    if missing:
        raise _Refused(f"{path!r} is truncated or was modified: members {missing} are missing")
    inflated = deflated = 0
    for info in infos:
        size = listed[info.filename]["size"]
        if info.file_size != size:
            raise _Refused(
                f"{path!r} was modified after saving: member {info.filename!r} declares "
                f"{info.file_size} bytes, the manifest records {size}; it was not inflated"
            )
        if info.compress_type != zipfile.ZIP_STORED:
            inflated += size
            deflated += info.compress_size
    limit = max(MAX_INFLATED_BYTES, _INFLATE_RATIO * deflated)
    if inflated > limit:
        raise _Refused(
            f"{path!r} is not an sktransfer model file sktransfer will read: its compressed "
            f"members would inflate to {inflated} bytes (more than {limit}); refusing a "
            "possible zip bomb"
        )


def _read(path):
    """Verified ``(meta, members)`` of a saved file; ``ValueError`` when damaged.

    Bounded work on any input: the manifest (at most :data:`MAX_MANIFEST_BYTES`)
    is read and checked against the zip comment first; then every member's name
    and declared size are compared with the manifest before anything else is
    inflated; members are then inflated in chunks, counted (never past the
    recorded size) and hashed. Memory is the file's stored members plus at most
    :data:`MAX_INFLATED_BYTES` (or 16x the compressed bytes) of compressed ones.
    """
    path = os.fspath(path)
    with _zip_errors(path):
        zf = zipfile.ZipFile(path)
    with zf:  # check_version's RuntimeError (a newer sktransfer) passes through
        comment, infos = zf.comment, zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _Refused(f"{path!r} is not an sktransfer model file ({len(infos)} members)")
        heads = [i for i in infos if i.filename == MANIFEST]
        if len(heads) != 1 or not comment.startswith(_COMMENT):
            raise _Refused(f"{path!r} is not an sktransfer model file (no {MANIFEST} manifest)")
        if heads[0].file_size > MAX_MANIFEST_BYTES:
            raise _Refused(
                f"{path!r} is not an sktransfer model file: its manifest declares "
                f"{heads[0].file_size} bytes (at most {MAX_MANIFEST_BYTES} are read)"
            )
        manifest, digest = _read_member(zf, heads[0], heads[0].file_size, path)
        if digest.encode() != comment[len(_COMMENT) :]:
            raise _Refused(f"{path!r} was modified after saving: the manifest checksum differs")
        meta = _parse_manifest(path, manifest)
        listed = _listed_members(path, meta)
        infos = [i for i in infos if i.filename != MANIFEST]
        _check_members(path, infos, listed)
        raw = {}
        for info in infos:
            data, digest = _read_member(zf, info, listed[info.filename]["size"], path)
            if digest != listed[info.filename]["sha256"]:
                raise _Refused(
                    f"{path!r} was modified after saving: checksum mismatch in {info.filename}"
                )
            raw[info.filename] = data
    return meta, raw


def _parse_manifest(path, manifest):
    try:
        meta = json.loads(manifest)
    except (ValueError, RecursionError) as exc:
        raise _Refused(f"{path!r} has a manifest that is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise _Refused(f"{path!r} is not an sktransfer model file")
    versions = meta.get("versions")
    saved = versions.get("sktransfer") if isinstance(versions, dict) else None
    fmt = meta.get("format_version")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or not isinstance(saved, str):
        raise _Refused(
            f"{path!r} has a malformed manifest (format_version {fmt!r}, sktransfer version "
            f"{saved!r})"
        )
    if fmt > FORMAT_VERSION:
        raise _Refused(
            f"{path!r} uses sktransfer file format {fmt} (written by "
            f"sktransfer {saved}); the installed sktransfer {sktransfer_version()} reads format "
            f"{FORMAT_VERSION} at most. Upgrade sktransfer to load it"
        )
    check_version(saved)
    return meta
