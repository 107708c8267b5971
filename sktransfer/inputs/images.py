"""Image input adapters: paths, encoded bytes, PIL images and arrays -> RGB -> tensors.

:func:`check_images` validates cheaply up front (files are checked to exist, not
decoded; encoded bytes and binary file objects are read once into ``bytes``, not
decoded: :mod:`sktransfer.inputs.encoded`); :class:`ImageDataset` holds paths and
bytes, not pixels, and decodes with :func:`load_rgb` and :func:`preprocess_image` in
``__getitem__``, so datasets stay small and picklable for ``DataLoader`` workers. Files
and bytes decode alike (the decompression-bomb limit; truncation and corruption are
errors). Any PIL mode becomes RGB properly (16-bit scaled, alpha composited on
white), and an EXIF orientation tag is applied (a phone photo is seen upright, as
viewers show it). Also :func:`load_image_folder` for a class-per-subfolder layout. Error
messages name the offending sample index (and path). Import these from
:mod:`sktransfer.data`."""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from sktransfer.inputs.containers import as_targets, to_list
from sktransfer.inputs.crops import array_pixels, as_uint8, crop_box, pixels_tensor, resample_filter
from sktransfer.inputs.encoded import describe, is_encoded, read_encoded
from sktransfer.inputs.folders import IMAGE_EXTENSIONS, load_image_folder  # noqa: F401 (public here)
from sktransfer.inputs.preprocessing import ImagePreprocessing

_ALLOWED = (
    "a str/Path, encoded image bytes (bytes, bytearray, memoryview, a binary file object), "
    "a PIL.Image.Image or a numpy array"
)


def _check_layout(dtype, shape, i, lead=0):
    """Check dtype and shape of one image (``lead=0``) or an N-image batch (1)."""
    if dtype != np.uint8 and dtype.kind != "f":
        raise TypeError(
            f"Sample {i}: array dtype {dtype} is not supported; "
            "use uint8 (0..255) or float in [0, 1]."
        )
    n = "N, " if lead else ""
    if len(shape) - lead not in (2, 3):
        raise ValueError(f"Sample {i}: image shape must be ({n}H, W) or ({n}H, W, C), got {shape}.")
    if len(shape) - lead == 3 and shape[-1] not in (1, 3, 4):
        hint = " (channels-first? transpose to C last)" if shape[lead] in (1, 3, 4) else ""
        raise ValueError(
            f"Sample {i}: image array of shape {shape} has {shape[-1]} channels; "
            f"expected 1, 3 or 4 channels last{hint}."
        )
    if 0 in shape[lead : lead + 2]:
        raise ValueError(f"Sample {i}: image array is empty (shape {shape}).")


def _check_range(a, i):
    """Float images must be finite and lie in [0, 1]."""
    lo, hi = a.min(), a.max()
    if not (lo >= 0 and hi <= 1):  # NaN fails both comparisons
        if not np.isfinite(a).all():
            raise ValueError(f"Sample {i}: float image contains NaN or infinite values.")
        raise ValueError(
            f"Sample {i}: float image values must lie in [0, 1], got "
            f"[{float(lo):.4g}, {float(hi):.4g}]; divide by 255 or pass uint8."
        )


def _check_pixels(a, i):
    _check_layout(a.dtype, a.shape, i)
    if a.dtype.kind == "f":
        _check_range(a, i)
    return a


def is_closed(im):
    """``Image.close()`` leaves a deferred "Operation on closed image" error in place of
    the pixel core; any use of the image then raises it."""
    return type(getattr(im, "_im", None)).__name__ == "DeferredError"


def closed_error(i):
    return ValueError(f"Sample {i}: the PIL image is closed (Image.close() was called on it).")


def bad_type(item, i):
    name = type(item).__name__
    return TypeError(f"Sample {i}: unsupported image type {name}; expected {_ALLOWED}.")


def _check_batch(X):
    """Validate a numeric N x H x W (x C) array; return per-sample views (no copy)."""
    _check_layout(X.dtype, X.shape, 0, lead=1)
    if X.dtype.kind == "f":
        axes = tuple(range(1, X.ndim))
        lo, hi = X.min(axis=axes), X.max(axis=axes)
        bad = np.flatnonzero(~((lo >= 0) & (hi <= 1)))
        if bad.size:
            _check_range(X[bad[0]], int(bad[0]))
    return list(X)


def check_images(X):
    """Validate image input and normalise it to a list of per-sample items.

    Parameters
    ----------
    X : list, tuple, numpy array or pandas Series
        File paths (str or Path), encoded images (the bytes of an image file as
        ``bytes``, ``bytearray`` or ``memoryview``, or a binary file object such as
        ``open(p, "rb")`` or ``io.BytesIO``), ``PIL.Image.Image`` objects or numpy
        arrays of shape (H, W) or (H, W, C) with C in {1, 3, 4}, dtype uint8 or float
        in [0, 1]; sizes may differ. A numeric array of shape (N, H, W) or
        (N, H, W, C) is split into per-sample views without copying.

    Returns
    -------
    items : list
        One ``str`` path, ``bytes``, ``PIL.Image.Image`` or ``numpy.ndarray`` per
        sample. Files are only checked to exist, not decoded. Encoded images become
        ``bytes``, not decoded: a file object is read from its position to its end
        and sought back there (:func:`sktransfer.inputs.encoded.read_encoded`).

    Raises
    ------
    TypeError
        If ``X`` is a single string or a numpy bytes array (dtype ``S``: numpy drops
        trailing NUL bytes), or a sample has an unsupported type or dtype, is a
        text-mode file or a path given as bytes.
    ValueError
        If ``X`` is empty, a path is not an existing file, encoded content is empty
        or unreadable, or an array has the wrong shape or out-of-range values. The
        message names the sample index.
    """
    if isinstance(X, np.ndarray) and X.dtype.kind == "S":
        raise TypeError(
            f"X is a numpy array of dtype {X.dtype}, which drops each item's trailing NUL "
            "bytes (corrupting encoded images); pass a list or an object array of bytes."
        )
    if isinstance(X, np.ndarray) and X.dtype.kind in "biufc":
        if X.ndim >= 1 and len(X) == 0:
            raise ValueError("X is empty: at least one image is required.")
        return _check_batch(X)
    if is_encoded(X):  # (not its lines, nor its bytes as numbers; no repr of megabytes)
        raise TypeError(f"Expected a list of images, got one {type(X).__name__}; pass [X].")
    items = to_list(X, "images (paths, bytes, PIL images or arrays)")
    if not items:
        raise ValueError("X is empty: at least one image is required.")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            path = str(os.fspath(item))
            if not os.path.isfile(path):
                why = "is not a file" if os.path.exists(path) else "does not exist"
                raise ValueError(f"Sample {i}: path {path!r} {why}.")
            out.append(path)
        elif isinstance(item, np.ndarray):
            out.append(_check_pixels(item, i))
        elif isinstance(item, Image.Image):
            if is_closed(item):
                raise closed_error(i)
            out.append(item)
        elif is_encoded(item):
            out.append(read_encoded(item, i))
        else:
            raise bad_type(item, i)
    return out


def _composite_on_white(im):
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _high_depth_to_l(im):
    """Scale a 16-bit, 32-bit integer or float single-channel image to 8-bit L.

    The scale depends on the mode alone, never on the pixels (a range read off the
    content mapped 250 to 250 in one image and 300 to 1 in another): ``I;16*`` and ``I``
    (32-bit integers, in practice 16-bit data: scanners, microscopes, depth maps) as
    0..65535, ``F`` as 0..1, the float convention of arrays. Values outside the range
    saturate; NaN is black. Monotone: a brighter input is never a darker pixel.
    """
    a = np.asarray(im).astype(np.float64)
    scale = 1.0 if im.mode == "F" else 65535.0
    a = np.nan_to_num(a / scale, nan=0.0, posinf=1.0, neginf=0.0)
    a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(a, mode="L")


def _to_rgb(im):
    """Convert a PIL image of any mode to RGB (alpha composited on white)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_l(im).convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        return _composite_on_white(im.convert("LA") if mode == "La" else im)
    return im.convert("RGB")


def _array_to_pil(a):
    a = np.ascontiguousarray(as_uint8(a))
    if a.ndim == 2:
        return Image.fromarray(a, mode="L").convert("RGB")
    if a.shape[2] == 4:
        return _composite_on_white(Image.fromarray(a, mode="RGBA"))
    return Image.fromarray(a, mode="RGB")


def _upright(im):
    """Apply the EXIF orientation tag (if any, and not the identity)."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: show the pixels as stored
        return im
    return ImageOps.exif_transpose(im) if orientation not in (1, None) else im


def _pixel_limit_message(what, exc):
    return (
        f"cannot read {what}: {exc} To read images this large on purpose, "
        "raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None for trusted files)."
    )


_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def _decode(source, what, where):
    """Open, decode and turn upright ``source`` (a path or a binary stream); any failure,
    a decompression bomb included, is a ValueError naming ``where`` and ``what``."""
    try:
        with Image.open(source) as im:
            im.load()  # decode now; leaving `with` closes only the file
            return _to_rgb(_upright(im))
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{where}: {_pixel_limit_message(what, exc)}") from exc
    except UnidentifiedImageError as exc:
        if isinstance(source, (str, os.PathLike)):
            raise ValueError(f"{where}: cannot read {what}: {exc}") from exc
        msg = f"{where}: cannot read {what}: not an image format PIL can identify."
        raise ValueError(msg) from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt image may fail in any decoder
        why = exc if isinstance(exc, _READ_ERRORS) else f"{type(exc).__name__}: {exc}"
        raise ValueError(f"{where}: cannot read {what}: {why}") from exc


def load_rgb(item, index=None):
    """Decode one item from :func:`check_images` into an RGB PIL image.

    Parameters
    ----------
    item : str, Path, bytes-like, binary file object, PIL.Image.Image or numpy.ndarray
        A file path, an encoded image (``bytes``, ``bytearray``, ``memoryview``, or a
        binary file object, read as :func:`check_images` reads it), an image in any PIL
        mode, or a uint8 / float [0, 1] array of shape (H, W), (H, W, 1), (H, W, 3) or
        (H, W, 4).
    index : int, optional
        The sample index, used in error messages.

    Returns
    -------
    image : PIL.Image.Image
        Mode ``"RGB"``, turned upright by its EXIF orientation tag. Transparency is
        composited on white; 16-bit images are scaled by their full range
        (0..65535 -> 0..255), 32-bit and float images by their value range.

    Raises
    ------
    ValueError
        If a file or encoded image cannot be read or decoded (truncated, corrupt, not
        an image), is larger than PIL's decompression-bomb limit
        (``PIL.Image.MAX_IMAGE_PIXELS``), or a PIL image is closed; the message names
        index and path (or size and first bytes). Files and bytes decode alike.
    """
    where = "Image" if index is None else f"Sample {index}"
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        return _decode(path, f"image file {path!r}", where)
    if isinstance(item, Image.Image):
        if is_closed(item):
            raise closed_error("?" if index is None else index)
        try:
            return _to_rgb(_upright(item))
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ValueError(f"{where}: cannot decode the PIL image: {exc}") from exc
    if isinstance(item, np.ndarray):
        _check_pixels(item, "?" if index is None else index)
        return _array_to_pil(item)
    if is_encoded(item):
        data = read_encoded(item, "?" if index is None else index)
        return _decode(io.BytesIO(data), describe(data), where)
    raise bad_type(item, "?" if index is None else index)


def preprocess_image(img, prep: ImagePreprocessing, normalize: bool = True):
    """Resize, centre-crop and normalise an image into a model-ready tensor.

    The shorter side is resized to ``prep.resize_size or prep.image_size``, the
    centre ``image_size`` square is cropped, scaled to [0, 1] and normalised.

    Parameters
    ----------
    img : PIL.Image.Image
        The image (converted to RGB if needed).
    prep : ImagePreprocessing
        Sizes, mean, std and interpolation.
    normalize : bool, default=True
        False: stop after the crop and return the uint8 pixels; ``(x / 255 - mean) / std``
        of them in float32 is exactly the normalised tensor.

    Returns
    -------
    tensor : torch.Tensor
        float32 (uint8 when ``normalize=False``) of shape (3, image_size, image_size);
        the uint8 one is a view of ``(H, W, 3)`` pixels (channels-last strides).
    """
    resample = resample_filter(prep)
    if img.mode != "RGB":
        img = _to_rgb(img)
    (new_w, new_h), box = crop_box(*img.size, prep)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample)
    if box != (0, 0, new_w, new_h):
        img = img.crop(box)
    return pixels_tensor(np.asarray(img), prep, normalize)


class ImageDataset(torch.utils.data.Dataset):
    """A lazy image dataset: decodes and preprocesses in ``__getitem__``.

    Parameters
    ----------
    items : list
        Output of :func:`check_images` (paths are kept as paths).
    prep : ImagePreprocessing
        How to turn an RGB image into a tensor.
    y : array-like, optional
        Targets; ``y[i]`` is returned as given. When None the target is 0.
    transform : callable, optional
        PIL -> PIL augmentation applied after decoding, before preprocessing.
    normalize : bool, default=True
        False: samples are the uint8 pixels (see :func:`preprocess_image`); the
        estimators load them so and normalise whole batches on the model's device.
    index : sequence of int, optional
        The caller's index of each item, for error messages when ``items`` is a
        subset (cache misses, a training split); default ``0..n-1``.
    """

    def __init__(self, items, prep, y=None, transform=None, normalize=True, index=None):
        self.items = list(items)
        self.prep = prep
        self.y = as_targets(y, len(self.items))
        self.transform = transform
        self.normalize = normalize
        self.index = None if index is None else [int(i) for i in index]
        if self.index is not None and len(self.index) != len(self.items):
            raise ValueError(f"index has {len(self.index)} entries for {len(self.items)} items.")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        if self.transform is None and isinstance(item, np.ndarray):
            _check_pixels(item, i if self.index is None else self.index[i])
            x = array_pixels(item, self.prep, self.normalize)  # no resize: sliced, not PIL
            if x is not None:
                return x, (0 if self.y is None else self.y[i])
        img = load_rgb(item, index=i if self.index is None else self.index[i])
        if self.transform is not None:
            img = self.transform(img)
        x = preprocess_image(img, self.prep, self.normalize)
        return x, (0 if self.y is None else self.y[i])
