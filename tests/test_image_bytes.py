"""Encoded images: bytes, bytearray, memoryview and binary file objects wherever images go.

They decode as the file holding them decodes (bombs, truncation, corruption and EXIF alike),
key the cache by their content (the key of that file), name the caller's index when they
fail, and a file object is left where it was found (fit and predict read the same bytes).
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import make_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sktransfer import ImageEmbedder, PretrainedImageClassifier, PretrainedTextClassifier
from sktransfer.cache import cache_info
from sktransfer.data import ImageDataset, check_images, load_rgb, sample_keys
from sktransfer.inputs.preprocessing import ImagePreprocessing

NAME = "test-image-bytes-tiny"
SIDE = 8
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _backbone():
    """A registered tiny CNN: a backbone given by name takes the image path for any X."""
    from sktransfer.backbones import list_backbones
    from sktransfer.backbones.custom import backbone_from_module
    from sktransfer.backbones.registry import is_registered, register_backbone

    list_backbones()  # the built-in entries first
    if not is_registered(NAME):

        @register_backbone(NAME, modality="image", source="test")
        def load(weights="default"):
            return backbone_from_module(make_cnn(seed=7), "image")

    return NAME


def _encode(array, fmt="PNG", **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def _clf(**kw):
    return PretrainedImageClassifier(_backbone(), image_size=SIDE, random_state=0, **kw)


def _pixels(im):
    return np.asarray(im).astype(int)


@pytest.fixture(scope="module")
def encoded(digits):
    X, y = digits
    return [_encode(a) for a in X[:60]], y[:60]


@pytest.fixture(scope="module")
def fitted(encoded):
    X, y = encoded
    return _clf().fit(X, y)


# ------------------------------------------------------------------ accepted forms
def _forms(data, tmp_path):
    path = tmp_path / "img.bin"
    path.write_bytes(data)
    offset = io.BytesIO(b"junk" + data)
    offset.seek(4)  # read from where the caller left it
    return {
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "BytesIO": io.BytesIO(data),
        "BytesIO at 4": offset,
        "open rb": open(path, "rb"),  # noqa: SIM115 - closed below
        "open rb unbuffered": open(path, "rb", buffering=0),  # noqa: SIM115
    }


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_every_form_decodes_as_the_file_does(tmp_path, fmt):
    a = np.random.RandomState(0).randint(0, 256, (9, 13, 3), dtype=np.uint8)
    data = _encode(a if fmt != "GIF" else a[..., 0], fmt)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    want = _pixels(load_rgb(str(path)))
    forms = _forms(data, tmp_path)
    items = check_images(list(forms.values()))
    assert all(type(item) is bytes and item == data for item in items)
    file_key = sample_keys([str(path)])[0]
    for name, form in forms.items():
        start = form.tell() if hasattr(form, "tell") else None
        assert np.array_equal(_pixels(load_rgb(form, index=0)), want), name
        assert sample_keys([form]) == [file_key], name  # an upload shares the file's entry
        if start is not None:
            assert form.tell() == start, name  # left where it was found
            form.close()


def test_exif_orientation_is_applied_to_bytes():
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    upright = load_rgb(buf.getvalue())
    assert upright.size == (10, 20) and np.asarray(upright)[:10].mean() > 200
    assert buf.tell() == len(buf.getvalue())  # (only check_images / load_rgb read it)
    buf.seek(0)
    assert load_rgb(buf).size == (10, 20) and buf.tell() == 0


# ------------------------------------------------------------------ estimators
def test_fit_predict_and_embed_on_bytes_match_arrays(digits, encoded, fitted):
    X, _ = digits
    data, _ = encoded
    want = fitted.predict_proba(X[:60])  # PNG is lossless: the same pixels
    np.testing.assert_array_equal(fitted.predict_proba(data), want)
    np.testing.assert_array_equal(fitted.predict_proba([bytearray(b) for b in data]), want)
    np.testing.assert_array_equal(fitted.predict_proba([io.BytesIO(b) for b in data]), want)
    np.testing.assert_array_equal(fitted.predict(data), fitted.predict(X[:60]))
    emb = ImageEmbedder(_backbone(), image_size=SIDE).fit(data[:4])
    np.testing.assert_array_equal(emb.transform(data[:10]), emb.transform(X[:10]))


def test_fine_tune_with_augmentation_on_file_objects(digits):
    X, y = digits
    files = [io.BytesIO(_encode(a)) for a in X[:40]]
    clf = _clf(freeze_depth=0, max_epochs=1, augment="light", early_stopping=False)
    proba = clf.fit(files, y[:40]).predict_proba(files)
    assert proba.shape == (40, len(clf.classes_)) and np.isfinite(proba).all()
    assert all(f.tell() == 0 for f in files)


def test_file_objects_give_the_same_results_in_fit_and_predict(digits, tmp_path, fresh_cache):
    X, y = digits
    paths = []
    for i in range(30):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(_encode(X[i]))
    handles = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed below
    try:
        clf = _clf().fit(handles, y[:30])
        first = clf.predict_proba(handles)
        assert all(h.tell() == 0 for h in handles)
        np.testing.assert_array_equal(clf.predict_proba(handles), first)
        np.testing.assert_array_equal(clf.predict_proba([str(p) for p in paths]), first)
        assert cache_info()["backbone_forwards"] == 30  # bytes and paths share entries
    finally:
        for h in handles:
            h.close()


class _Stream(io.RawIOBase):
    """A stream that cannot seek (a pipe, a socket, an HTTP response)."""

    def __init__(self, data):
        self._data = data

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), len(self._data))
        buf[:n], self._data = self._data[:n], self._data[n:]
        return n


def test_a_stream_that_cannot_seek_is_read_once(encoded, fitted):
    data, _ = encoded
    streams = [io.BufferedReader(_Stream(b)) for b in data[:3]]
    np.testing.assert_array_equal(fitted.predict_proba(streams), fitted.predict_proba(data[:3]))
    with pytest.raises(ValueError, match=r"Sample 0: the encoded image is empty.*seek\(0\)"):
        fitted.predict(streams)


def test_concurrent_reads_of_shared_file_objects(encoded):
    data, _ = encoded
    files = [io.BytesIO(b) for b in data[:20]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: check_images(files), range(40)))
    assert all(r == data[:20] for r in results)
    assert all(f.tell() == 0 for f in files)


def test_datasets_of_bytes_pickle_for_workers(encoded):
    data, _ = encoded
    prep = ImagePreprocessing(image_size=SIDE, mean=(0.5,) * 3, std=(0.5,) * 3)
    ds = ImageDataset(check_images([io.BytesIO(b) for b in data[:3]]), prep)
    again = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(again[2][0].numpy(), ds[2][0].numpy())


def test_bytes_with_a_module_backbone(digits):
    X, y = digits
    clf = PretrainedImageClassifier(make_cnn(), image_size=SIDE, random_state=0)
    data = [_encode(a) for a in X[:20]]
    clf.fit(data, y[:20])
    np.testing.assert_array_equal(clf.predict_proba(data), clf.predict_proba(X[:20]))


def test_text_estimators_refuse_bytes():
    with pytest.raises(TypeError, match=r"Sample 1: expected a str, got bytes"):
        PretrainedTextClassifier("unused").fit(["a text", b"\x89PNG\r\n\x1a\n"], [0, 1])


# ------------------------------------------------------------------ errors name the index
def test_decoding_errors_name_the_callers_index(encoded, fitted, monkeypatch):
    data, _ = encoded
    good = data[0]
    fitted.predict([good])  # a cache hit: the bad sample is the only miss
    cases = {
        b"<html>503 Service Unavailable</html>": "not an image format",
        good[: len(good) // 2]: "truncated",
        good[:40] + b"\xff" * 10 + good[50:]: r"\): \w",  # a damaged chunk
    }
    for bad, why in cases.items():
        with pytest.raises(ValueError, match=rf"Sample 2: cannot read image bytes \(.*{why}"):
            fitted.predict([good, good, bad])
    big = _encode(np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2x the limit: an error
    with pytest.raises(ValueError, match=r"Sample 1: cannot read image bytes.*MAX_IMAGE_PIXELS"):
        load_rgb(io.BytesIO(big), index=1)


def test_check_time_refusals_name_the_index(tmp_path, encoded):
    good = encoded[0][0]
    released = memoryview(good)
    released.release()
    closed = io.BytesIO(good)
    closed.close()
    at_end = io.BytesIO(good)
    at_end.read()
    (tmp_path / "t.png").write_bytes(good)
    with open(tmp_path / "t.png") as text_mode:
        refusals = [
            (b"", ValueError, "empty"),
            (at_end, ValueError, r"empty.*seek\(0\)"),
            (released, ValueError, "memoryview"),
            (closed, ValueError, "closed"),
            (text_mode, TypeError, "text mode.*'rb'"),
            (b"photos/cat.JPG", TypeError, "look like a file path"),
        ]
        for bad, kind, match in refusals:
            with pytest.raises(kind, match=rf"Sample 2: .*{match}"):
                check_images([good, good, bad])
            with pytest.raises(kind, match=rf"Sample 4: .*{match}"):
                sample_keys([bad], index=[4])


def test_containers_of_bytes():
    with pytest.raises(TypeError, match=r"one bytes; pass \[X\]") as exc:
        check_images(b"\x89PNG" + bytes(10**6))
    assert len(str(exc.value)) < 200  # no repr of the megabyte
    with pytest.raises(TypeError, match=r"one BytesIO"):
        check_images(io.BytesIO(b"\x89PNG"))
    with pytest.raises(TypeError, match=r"dtype \|S.*NUL"):
        check_images(np.array([b"\x89PNG\x00", b"BM\x00"]))


class _AsyncUpload:
    """Like starlette's UploadFile: ``read`` is a coroutine function."""

    async def read(self):
        return b"\x89PNG"


def test_async_reads_are_refused():
    with pytest.raises(TypeError, match=r"Sample 0: .*async.*await"):
        check_images([_AsyncUpload()])


def test_large_content_keys_as_its_file(tmp_path):
    """Files from 1 MiB are hashed in chunks: still the key of the same bytes."""
    data = b"\x89PNG" + np.random.RandomState(0).bytes(3 << 19)
    (tmp_path / "big.png").write_bytes(data)
    assert sample_keys([io.BytesIO(data)]) == sample_keys([str(tmp_path / "big.png")])
    assert sample_keys([data[:-1] + b"\x00"]) != sample_keys([data])


# ------------------------------------------------------------------ properties
PREFIXES = st.sampled_from(
    [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF89a", b"II*\x00", b"RIFF"]
)


def _decodes_or_names_index_1(blob, wrap):
    try:
        items = check_images([np.zeros((2, 2), np.uint8), wrap(blob)])
        im = load_rgb(items[1], index=1)
    except ValueError as exc:
        assert str(exc).startswith("Sample 1: "), exc
        return
    except TypeError as exc:  # only a path given as bytes
        assert "look like a file path" in str(exc) and str(exc).startswith("Sample 1: ")
        return
    assert im.mode == "RGB" and min(im.size) >= 1


@settings(FAST, max_examples=200)
@given(data=st.binary(max_size=400), prefix=PREFIXES, wrap=st.sampled_from([bytes, io.BytesIO]))
def test_random_bytes_decode_or_name_the_index(data, prefix, wrap):
    _decodes_or_names_index_1(prefix + data, wrap)


_RNG = np.random.RandomState(1)
VALID = [
    _encode(_RNG.randint(0, 256, (6, 7, 3), dtype=np.uint8), fmt, **kw)
    for fmt, kw in [("PNG", {}), ("JPEG", {}), ("BMP", {}), ("GIF", {}), ("TIFF", {}),
                    ("WEBP", {}), ("TIFF", {"compression": "tiff_deflate"})]
]  # fmt: skip


@settings(FAST, max_examples=200)
@given(
    base=st.sampled_from(VALID),
    flips=st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 10**4)),
)
def test_damaged_real_images_decode_or_name_the_index(base, flips, cut):
    """Real files with flipped bytes and cut short: the decoders' own error paths."""
    blob = bytearray(base)
    for pos, value in flips:
        blob[pos % len(blob)] = value
    _decodes_or_names_index_1(bytes(blob[:cut]), bytes)


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=300), prefix=PREFIXES)
def test_random_bytes_through_predict_name_the_index(fitted, encoded, data, prefix):
    good = encoded[0][0]
    try:
        proba = fitted.predict_proba([good, good, prefix + data])
    except (ValueError, TypeError) as exc:
        assert str(exc).startswith("Sample 2: "), exc
        return
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1)


@settings(FAST, max_examples=200)
@given(a=st.binary(min_size=1, max_size=64), b=st.binary(min_size=1, max_size=64))
def test_equal_content_equal_key_different_content_different_key(a, b):
    forms = [a, bytearray(a), memoryview(a), io.BytesIO(a)]
    try:
        keys = sample_keys(forms + [b])
    except TypeError:  # a path given as bytes
        return
    assert len(set(keys[:4])) == 1
    assert (keys[0] == keys[4]) == (a == b)
    with tempfile.NamedTemporaryFile(delete=False) as fh:
        fh.write(a)
    try:
        assert sample_keys([fh.name]) == keys[:1]  # the key of a file holding the bytes
    finally:
        os.unlink(fh.name)
