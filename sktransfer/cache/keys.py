"""Every key, digest and namespace of the feature cache, in one place.

* :func:`digest`: BLAKE2b-160 over parts (bytes as given, anything else as text).
* :func:`sample_keys`: same content, same key. Files, encoded images, arrays, PIL images
  and texts are keyed by a digest of their bytes (a file's is remembered per path while
  its stat signature, inode and ctime included, is unchanged; encoded bytes share the key
  of a file holding them). Public as
  :func:`sktransfer.data.sample_keys`.
* :func:`module_digest` / :func:`stamp_digest`: a module's weights, memoised on the
  module until a tensor changes; :func:`prep_identity`: the preprocessing.
* :func:`block_namespace`: the namespace of the outputs of ``net.blocks[:stop]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
import uuid

import numpy as np
import torch
from PIL import Image

from sktransfer.cache.lru import LRU


def digest(*parts) -> str:
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
        ``"file:<blake2b>"`` for files (of their bytes: the path does not matter, a
        rewritten file is a new key whatever its mtime says) and for encoded images
        (``bytes``, ``bytearray``, ``memoryview``, binary file objects: the same key as
        a file holding those bytes, so both share one cache entry; a file object is read
        as :func:`check_images` reads it, and left where it was), ``"arr:<blake2b>"`` for
        arrays, ``"pil:<blake2b>"`` for PIL images (pixels, palette, transparency and
        EXIF orientation: all that decoding uses), ``"txt:<blake2b>"`` for texts. A
        file that is not a regular file (a FIFO, a device) gets a key of its own that
        is never stored. File keys are :class:`FileKey` objects (``str``).
    """
    # imported here: inputs/ imports backbones/, whose registry imports the cache
    from sktransfer.inputs.images import bad_type, closed_error, is_closed, is_encoded, read_encoded

    if kind not in ("image", "text"):
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}.")
    keys = []
    for pos, item in enumerate(items):
        i = pos if index is None else index[pos]
        if kind == "text":
            if not isinstance(item, str):
                raise TypeError(f"Sample {i}: expected a str, got {type(item).__name__}.")
            try:
                keys.append("txt:" + digest(item.encode("utf-8")))
            except UnicodeEncodeError as exc:
                raise ValueError(f"Sample {i}: text is not valid Unicode ({exc.reason}).") from exc
        elif isinstance(item, (str, os.PathLike)):
            keys.append(_file_key(os.path.abspath(os.fspath(item)), i))
        elif isinstance(item, np.ndarray):
            a = np.ascontiguousarray(item)
            keys.append("arr:" + digest(a.shape, a.dtype.str, memoryview(a).cast("B")))
        elif isinstance(item, Image.Image):
            if is_closed(item):
                raise closed_error(i)
            keys.append("pil:" + digest(item.mode, item.size, *_pil_extras(item), item.tobytes()))
        elif is_encoded(item):
            keys.append(encoded_key(read_encoded(item, i)))
        else:
            raise bad_type(item, i)
    return keys


def encoded_key(data) -> str:
    """The key of encoded image bytes: the key of a file holding them (:func:`_hash_file`),
    since decoding a file and decoding its bytes give the same pixels."""
    return "file:" + hashlib.blake2b(data, digest_size=20).hexdigest()


def _pil_extras(im) -> tuple:
    """What decoding a PIL image uses besides its pixels (:func:`sktransfer.inputs.images.
    load_rgb`): the palette, the transparency entry and the EXIF orientation."""
    palette = im.palette
    try:
        orientation = im.getexif().get(0x0112, 1)  # Orientation
    except Exception:  # noqa: BLE001 - unreadable EXIF: decoding ignores it too
        orientation = 1
    return (
        "" if palette is None else digest(palette.mode, bytes(palette.tobytes())),
        repr(im.info.get("transparency")),
        repr(orientation),
    )


# --------------------------------------------------------------------------- files
#: A file changed within this long before it was hashed is hashed again the next time
#: (and once more before its features are stored): a change inside one tick of a
#: coarse file-system clock may leave its stat signature as it was (git's "racily
#: clean" entries). Longer than the coarsest clocks of common file systems.
RACY_NS = 2_000_000_000
#: Files whose digest is remembered (per absolute path), least recently used dropped.
FILE_MEMO_SIZE = 1 << 17
_FILE_MEMO = LRU(FILE_MEMO_SIZE)  # abspath -> FileKey
_FILE_MEMO_LOCK = threading.Lock()
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class FileKey(str):
    """The key of a file's bytes, which also knows where and when they were read.

    ``source`` is ``(path, signature, racy)``: the stat signature (device, inode, size,
    mtime and ctime; ``None`` for a FIFO or device) when the bytes were hashed, and
    whether the file had changed just before (:data:`RACY_NS`).
    """

    source: tuple

    def unchanged(self) -> bool:
        """Whether the file still holds the bytes this key names: same signature (ctime
        moves on every write, and ``cp -p``, ``tar`` and ``rsync -t`` cannot set it),
        and the same digest again if the file had just changed when it was hashed."""
        path, signature, racy = self.source
        if signature is None:
            return False
        try:
            if _signature(os.stat(path)) != signature:
                return False
            return not racy or _hash_file(path)[0] == self
        except OSError:
            return False


def _signature(st) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_file(path) -> tuple:
    """``(FileKey, signature)`` of the bytes at ``path``; a non-regular file (never read:
    a FIFO could block) gets a unique key and a ``None`` signature."""
    started = time.time_ns()
    fd = os.open(path, _OPEN_FLAGS)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            key, signature = FileKey("stream:" + uuid.uuid4().hex), None
        else:
            key, signature = FileKey("file:" + _digest_stream(fh, st.st_size)), _signature(st)
    key.source = (path, signature, st.st_ctime_ns >= started - RACY_NS)
    return key, signature


def _digest_stream(fh, size: int) -> str:
    """BLAKE2b-160 of a binary file's bytes: read at once up to 1 MiB, else in 1 MiB
    chunks into one buffer (as ``hashlib.file_digest`` of Python 3.11)."""
    h = hashlib.blake2b(digest_size=20)
    if size < 1 << 20:
        h.update(fh.read())
        return h.hexdigest()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := fh.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()


def _file_key(path, i) -> FileKey:
    """The content key of file ``path`` (sample ``i``), from the memo when its stat
    signature is the one the memoised digest was read under and was not racy."""
    try:
        signature = _signature(os.stat(path))
        with _FILE_MEMO_LOCK:
            known = _FILE_MEMO.get(path)
        if known is not None and known.source[1] == signature and not known.source[2]:
            return known
        key, signature = _hash_file(path)
    except OSError as exc:
        raise ValueError(f"Sample {i}: cannot read {path!r}: {exc.strerror or exc}.") from exc
    if signature is not None:
        with _FILE_MEMO_LOCK:
            _FILE_MEMO.put(path, key)
    return key


def forget_files() -> None:
    """Forget every remembered file digest (:func:`sktransfer.clear_cache`)."""
    with _FILE_MEMO_LOCK:
        _FILE_MEMO.clear()


# --------------------------------------------------------------------------- identity
def _state_items(module, keep_vars=False):
    """``(name, tensor)`` pairs of the state dict; a quantised layer's packed params unpacked."""
    for name, value in module.state_dict(keep_vars=keep_vars).items():
        if isinstance(value, torch.Tensor):
            yield name, value
        elif isinstance(value, (tuple, list)):  # DynamicQuantizedLinear: (int8 weight, bias)
            for i, t in enumerate(value):
                if isinstance(t, torch.Tensor):
                    yield f"{name}.{i}", t


def _tensor_state(module):
    """Identity of the module's current tensors: replaced or modified tensors change it.

    Walks each submodule's own parameters and buffers (cheaper than ``state_dict``); a
    quantised layer's packed weights live outside those, so such modules use the state dict.
    """
    subs = list(module.modules())
    if any("_packed_params" in vars(m) for m in subs):
        return tuple(
            (name, t.data_ptr(), t._version, tuple(t.shape))
            for name, t in _state_items(module, keep_vars=True)
        )
    return tuple(
        (t.data_ptr(), t._version, tuple(t.shape))
        for m in subs
        for t in (*m._parameters.values(), *m._buffers.values())
        if t is not None
    )


def module_digest(module) -> str:
    """Hash of a module's parameters and buffers.

    Memoised on the module object (stamped with its tensors' identities and
    in-place version counters), so an unchanged module is hashed once and any
    change to its weights gives a new digest.
    """
    state = _tensor_state(module)
    stamp = getattr(module, "_sktransfer_digest", None)
    if stamp is not None and stamp[0] == state:
        return stamp[1]
    h = hashlib.blake2b(digest_size=20)
    for name, t in _state_items(module):
        t = t.detach().cpu()
        if t.is_quantized:  # int8 values plus their scales
            per_tensor = t.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)
            h.update(str(t.q_scale() if per_tensor else t.q_per_channel_scales().tolist()).encode())
            t = t.int_repr()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    value = h.hexdigest()
    stamp_digest(module, value, state)
    return value


def stamp_digest(module, value, state=None) -> None:
    """Record ``value`` as the digest of ``module``'s current tensors."""
    object.__setattr__(module, "_sktransfer_digest", (state or _tensor_state(module), value))


def forget_digest(module) -> None:
    """Drop the memoised digests of ``module`` and its submodules: the next
    :func:`module_digest` hashes the weights again. For modules whose holder may have
    edited them through ``tensor.data``, which no version counter sees."""
    for sub in module.modules():
        sub.__dict__.pop("_sktransfer_digest", None)


def prep_identity(prep) -> str:
    """A stable description of the preprocessing (tokenizer by name, vocab size, length).

    A tokenizer handed out to a caller (``est.preprocessing_``) may have been edited, so it
    is described by its state instead (:func:`tokenizer_state`)."""
    if prep is None:
        return "none"
    fields = dict(vars(prep))
    tok = fields.pop("tokenizer", None)
    if tok is not None:
        fields["tokenizer"] = (type(tok).__name__, getattr(tok, "name_or_path", ""), len(tok))
        if fields.get("handed_out"):
            fields["tokenizer_state"] = tokenizer_state(tok)
    return json.dumps(fields, sort_keys=True, default=str)


def tokenizer_state(tok) -> str:
    """A digest of what decides a tokenizer's ids: its pipeline (normaliser, pre-tokeniser,
    model, vocabulary: the fast tokenizer's JSON), special tokens, length and options."""
    h = hashlib.blake2b(digest_size=20)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    options = {
        "special": getattr(tok, "special_tokens_map", {}),
        "max": getattr(tok, "model_max_length", None),
        "sides": (getattr(tok, "padding_side", None), getattr(tok, "truncation_side", None)),
        "init": getattr(tok, "init_kwargs", {}),
        "lower": getattr(tok, "do_lower_case", None),
    }
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- namespaces
def block_namespace(net, stop: int, prep, kind: str, precision="fp32", channels_last=False) -> str:
    """Cache namespace of the outputs of ``net.blocks[:stop]`` (+ pool at the end).

    Hashes each block's structure (``repr``) and weights, and the preprocessing,
    so a changed weight, architecture, resolution or tokenizer is a miss; outputs
    computed under bf16 autocast or in the channels-last layout (equal up to float
    rounding) get their own namespace.
    """
    modules = list(net.blocks[:stop]) + ([net.pool] if stop == len(net.blocks) else [])
    parts = [kind, stop, len(net.blocks), prep_identity(prep)]
    if kind == "image":  # decoded upright by EXIF orientation since 0.x: older entries differ
        parts.append("exif_upright")
    if precision != "fp32":
        parts.append(f"precision={precision}")
    if channels_last:
        parts.append("channels_last")
    shared = getattr(net, "shares_template", False)
    for m in modules:
        parts += [_structure_digest(m) if shared else digest(repr(m)), module_digest(m)]
    return digest(*parts)


def _structure_digest(module) -> str:
    """``digest(repr(module))``, kept on a registry template's module: the template's
    structure never changes (its weights are still checked, by ``module_digest``)."""
    value = module.__dict__.get("_sktransfer_structure")
    if value is None:
        value = digest(repr(module))
        object.__setattr__(module, "_sktransfer_structure", value)
    return value
