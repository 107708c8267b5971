"""The checksummed zip archive behind :func:`sktransfer.save` / :func:`sktransfer.load`.

One zip file: a JSON manifest (``sktransfer.json``) plus data members, the
weights stored uncompressed. The manifest lists every member's SHA-256 and
size, and the zip comment holds the manifest's own SHA-256, so any truncation,
corruption or edit is detected before anything is built from the file. Values
in the manifest are plain JSON; numpy arrays and tuples are tagged so they
round-trip. Nothing here unpickles or imports code. What an estimator's
archive holds is :mod:`sktransfer.safe_format`'s business.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib

import numpy as np

from sktransfer._atomic import atomic_write
from sktransfer.persistence import _version, check_version

FORMAT_NAME = "sktransfer-model"
FORMAT_VERSION = 1
MANIFEST = "sktransfer.json"
WEIGHTS = "weights.safetensors"
_COMMENT = b"sktransfer-sha256:"


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


def _from_json(value):
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if "__ndarray__" in value:
            arr = np.empty(len(value["__ndarray__"]), dtype=np.dtype(value["dtype"]))
            arr[:] = value["__ndarray__"]
            return arr.reshape(value["shape"])
        if "__tuple__" in value:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


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
    with atomic_write(path, durable=True, mode=0o644) as fh:
        _write_zip(fh, meta, members)


# --------------------------------------------------------------------------- read
def is_sktransfer_file(path) -> bool:
    """Whether ``path`` looks like a file written by :func:`sktransfer.save` (not verified)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return MANIFEST in zf.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _read(path):
    """Verified ``(meta, members)`` of a saved file; ``ValueError`` when damaged."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            comment = zf.comment
            raw = {info.filename: zf.read(info) for info in zf.infolist()}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        raise ValueError(
            f"{path!r} is not a readable sktransfer model file: it is truncated, corrupted or "
            f"of another format ({type(exc).__name__}: {exc})"
        ) from exc
    manifest = raw.pop(MANIFEST, None)
    if manifest is None or not comment.startswith(_COMMENT):
        raise ValueError(f"{path!r} is not an sktransfer model file (no {MANIFEST} manifest)")
    if _sha256(manifest).encode() != comment[len(_COMMENT) :]:
        raise ValueError(f"{path!r} was modified after saving: the manifest checksum differs")
    meta = json.loads(manifest)
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} is not an sktransfer model file")
    saved = meta.get("versions", {}).get("sktransfer", "?")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses sktransfer file format {meta['format_version']} (written by "
            f"sktransfer {saved}); the installed sktransfer {_version()} reads format "
            f"{FORMAT_VERSION} at most. Upgrade sktransfer to load it"
        )
    check_version(saved)
    listed = meta.pop("members")
    if set(listed) != set(raw):
        raise ValueError(
            f"{path!r} was modified after saving: members {sorted(set(listed) ^ set(raw))} "
            "are missing or unexpected"
        )
    for name, data in raw.items():
        if _sha256(data) != listed[name]["sha256"]:
            raise ValueError(f"{path!r} was modified after saving: checksum mismatch in {name}")
    return meta, raw
