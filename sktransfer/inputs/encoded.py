"""Encoded images: ``bytes``, ``bytearray``, ``memoryview`` and binary file objects.

What Spark's ``binaryFile``, Ray's ``read_binary_files``, HTTP uploads and object stores
deliver: the bytes of a PNG, JPEG, ... file, not a path. :func:`read_encoded` takes one
such sample to an immutable ``bytes`` snapshot; :func:`sktransfer.inputs.images.check_images`
calls it once per sample, so what is decoded and what keys the cache are the same bytes:

* ``bytes`` is kept as it is (no copy); a ``bytearray`` or ``memoryview`` is copied, so a
  later change to the buffer changes nothing already checked.
* A binary file object (``open(p, "rb")``, ``io.BytesIO``, a spooled upload) is read from
  its current position to its end, then sought back to that position: it is left as it
  was found, and a ``fit`` and a ``predict`` on the same objects see the same bytes. Reads
  of file objects hold one lock (threads sharing a file object never interleave their
  seeks). A stream that cannot seek (a pipe, a socket, an HTTP response) is read once;
  passed again it gives no bytes, which is refused by sample index.

Text-mode files, async files and short path-like byte strings (``b"a.png"``) are refused
with a ``TypeError`` naming the sample; empty content with a ``ValueError``.
"""

from __future__ import annotations

import inspect
import io
import threading

from sktransfer.inputs.folders import IMAGE_EXTENSIONS

ENCODED_TYPES = (bytes, bytearray, memoryview)
_SUFFIXES = tuple(s.encode() for s in IMAGE_EXTENSIONS)
_READ_LOCK = threading.RLock()


def is_file_object(item) -> bool:
    """Whether ``item`` is a file-like object (has a callable ``read``)."""
    return callable(getattr(item, "read", None)) and not isinstance(item, (str, bytes))


def is_encoded(item) -> bool:
    """Whether ``item`` is encoded image data: bytes-like or a file object."""
    return isinstance(item, ENCODED_TYPES) or is_file_object(item)


def describe(data: bytes) -> str:
    """``image bytes (1,234 bytes, b'\\x89PNG\\r\\n\\x1a\\n...')`` for error messages."""
    head = repr(data[:12]) + ("..." if len(data) > 12 else "")
    return f"image bytes ({len(data):,} bytes, {head})"


def read_encoded(item, i) -> bytes:
    """The content of encoded sample ``i`` as ``bytes`` (see the module docstring).

    Raises
    ------
    TypeError
        A text-mode or async file object, a ``read()`` that returns no bytes-like
        value, or bytes that spell a file path (``b"a.png"``); the message names ``i``.
    ValueError
        Empty content, a closed file object, a released ``memoryview`` or a failed read;
        the message names ``i``.
    """
    if isinstance(item, bytes):
        data = item if type(item) is bytes else bytes(item)  # np.bytes_ -> bytes
    elif isinstance(item, bytearray):
        data = bytes(item)
    elif isinstance(item, memoryview):
        try:
            data = item.tobytes()
        except ValueError as exc:  # released
            raise ValueError(f"Sample {i}: the memoryview cannot be read: {exc}.") from exc
    else:
        data = _read_file_object(item, i)
    if not data:
        where = " (a file object read at its end? seek(0) first)" if is_file_object(item) else ""
        raise ValueError(f"Sample {i}: the encoded image is empty (0 bytes){where}.")
    _refuse_path_bytes(data, i)
    return data


def _read_file_object(fh, i) -> bytes:
    """Read ``fh`` from its position to its end, then seek back (when it can)."""
    if isinstance(fh, io.TextIOBase) or "b" not in getattr(fh, "mode", "b"):
        raise TypeError(f"Sample {i}: the file object is open in text mode; open it with 'rb'.")
    if getattr(fh, "closed", False):
        raise ValueError(f"Sample {i}: the file object is closed.")
    with _READ_LOCK:
        try:
            start = fh.tell() if _seekable(fh) else None
            data = fh.read()
            if start is not None:
                fh.seek(start)
        except (OSError, ValueError) as exc:
            raise ValueError(f"Sample {i}: cannot read the file object: {exc}.") from exc
    if inspect.isawaitable(data):
        getattr(data, "close", lambda: None)()  # no "never awaited" warning
        raise TypeError(
            f"Sample {i}: the file object's read() is async; await it and pass the bytes."
        )
    if data is None:  # a non-blocking raw stream with nothing ready
        return b""
    if isinstance(data, str):
        raise TypeError(f"Sample {i}: the file object is open in text mode; open it with 'rb'.")
    if not isinstance(data, ENCODED_TYPES):
        name = type(data).__name__
        raise TypeError(f"Sample {i}: the file object's read() returned {name}, not bytes.")
    return bytes(data)


def _seekable(fh) -> bool:
    try:
        return bool(fh.seekable()) if hasattr(fh, "seekable") else hasattr(fh, "seek")
    except (OSError, ValueError):
        return False


def _refuse_path_bytes(data: bytes, i) -> None:
    """A short printable byte string ending in an image file suffix is a path given as
    bytes, which no image format is: say so (by the suffix only, so that what is refused
    never depends on the working directory)."""
    if len(data) > 4096 or not data.lower().endswith(_SUFFIXES):
        return
    if any(c < 0x20 or c == 0x7F for c in data):
        return
    raise TypeError(
        f"Sample {i}: bytes {data[:80]!r} look like a file path, not image data; "
        "pass paths as str (or the file's content as bytes)."
    )
