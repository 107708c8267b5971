"""Hostile input: every outcome is a correct result or a ValueError/TypeError naming the
caller's index (and path). Property-based over the input adapters, plus the named cases."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from conftest import make_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import sktransfer
from sktransfer import ImageEmbedder, PretrainedImageClassifier, PretrainedTextClassifier
from sktransfer.cache import cache_info, config_context
from sktransfer.data import load_rgb

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def image_clf(digits):
    X, y = digits
    return PretrainedImageClassifier(make_cnn(), image_size=8, random_state=0).fit(X[:80], y[:80])


@pytest.fixture(scope="module")
def text_clf(tiny_bert_dir, texts):
    X, y = texts
    return PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X[:40], y[:40])


def _png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def _assert_good_or_named(fn, index, what=None):
    """``fn()`` returns a finite probability matrix, or raises ValueError/TypeError naming
    ``Sample <index>`` (and ``what``, e.g. the path)."""
    try:
        proba = fn()
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert f"Sample {index}" in msg, msg
        if what is not None:
            assert what in msg, msg
        return None
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1)
    return proba


# ------------------------------------------------------------------ property-based
@FAST
@given(data=st.binary(max_size=300), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"BM"]))
def test_random_bytes_as_image_files(image_clf, digits, data, prefix):
    with tempfile.TemporaryDirectory() as tmp:
        good = _png(os.path.join(tmp, "good.png"), digits[0][0])
        bad = os.path.join(tmp, "random.png")
        with open(bad, "wb") as fh:
            fh.write(prefix + data)
        _assert_good_or_named(lambda: image_clf.predict_proba([good, good, bad]), 2, bad)


DTYPES = st.sampled_from(
    ["uint8", "int8", "int16", "uint16", "int64", "float16", "float32", "float64", "bool",
     "complex64"]
)  # fmt: skip


@FAST
@given(
    arr=DTYPES.flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6))
    )
)
def test_arrays_of_random_dtypes_and_shapes(image_clf, digits, arr):
    good = digits[0][0]
    _assert_good_or_named(lambda: image_clf.predict_proba([good, arr]), 1)


SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)


@settings(max_examples=30, deadline=None)
@given(text=st.lists(st.one_of(st.characters(), SURROGATES), max_size=40).map("".join))
def test_random_unicode_texts(text_clf, text):
    _assert_good_or_named(lambda: text_clf.predict_proba(["a good film", text]), 1)


LABELS = st.one_of(
    st.integers(-3, 3), st.sampled_from(["a", "b", ""]), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.none(),
)  # fmt: skip


@FAST
@given(y=st.lists(LABELS, min_size=0, max_size=12))
def test_random_label_vectors(y):
    rng = np.random.RandomState(0)
    X = rng.rand(len(y), 5).astype(np.float32)
    clf = PretrainedImageClassifier(make_cnn()[:0], random_state=0)  # empty Sequential: vectors
    try:
        with config_context(cache=False):
            clf.fit(X, y)
    except (ValueError, TypeError) as exc:
        assert not hasattr(clf, "classes_"), "a failed fit left fitted attributes"
        missing = [i for i, v in enumerate(y) if v is None or (isinstance(v, float) and v != v)]
        if missing and len(y) == len(X) and len(y):
            assert f"y[{missing[0]}]" in str(exc) or "y" in str(exc)
        return
    assert list(clf.classes_) == sorted(set(clf.classes_))
    assert set(clf.predict(X)) <= set(clf.classes_)


# ------------------------------------------------------------------ the caller's index
def test_error_names_the_callers_index_after_cache_hits(image_clf, digits, tmp_path):
    good = _png(tmp_path / "good.png", digits[0][0])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    image_clf.predict([good])  # `good` is now a cache hit; the corrupt one the only miss
    with pytest.raises(ValueError, match=f"Sample 2: cannot read image file '{corrupt}'"):
        image_clf.predict([good, good, str(corrupt)])


@pytest.mark.parametrize("head_init", ["probe", "random"])
def test_fine_tune_error_names_the_callers_index(digits, tmp_path, head_init):
    X, y = digits
    paths = [_png(tmp_path / f"{i}.png", X[i]) for i in range(60)]
    (tmp_path / "50.png").write_bytes(b"broken")
    clf = PretrainedImageClassifier(
        make_cnn(), freeze_depth=0, head_init=head_init, image_size=8, max_epochs=1,
        random_state=0,
    )  # fmt: skip
    with config_context(cache=False):  # (random: the bad file is first read in training)
        with pytest.raises(ValueError, match="Sample 50: cannot read image file"):
            clf.fit(paths, y[:60])


# ------------------------------------------------------------------ named cases
def test_decompression_bomb_is_a_value_error_naming_the_path(tmp_path, monkeypatch):
    path = _png(tmp_path / "big.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64*64 > 2x the limit: an error
    with pytest.raises(ValueError, match=r"Sample 3: .*big\.png.*MAX_IMAGE_PIXELS"):
        load_rgb(path, index=3)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "phone.jpg"
    im.save(path, exif=exif, quality=95)
    upright = load_rgb(str(path))
    assert upright.size == (10, 20)  # width and height swapped
    top = np.asarray(upright)[:10].mean()
    assert top > 200  # the white half is on top after the rotation
    with Image.open(path) as opened:  # a PIL image with the tag is turned too
        assert load_rgb(opened).size == (10, 20)


def test_closed_pil_image_names_the_sample(image_clf, digits):
    closed = Image.fromarray(digits[0][1])
    closed.close()
    with pytest.raises(ValueError, match="Sample 1: the PIL image is closed"):
        image_clf.predict([Image.fromarray(digits[0][0]), closed])


def test_lone_surrogate_names_the_index(text_clf):
    bad = b"caf\xe9".decode("utf-8", errors="surrogateescape")
    with pytest.raises(ValueError, match="Sample 2: text is not valid Unicode"):
        text_clf.predict(["fine", "also fine", bad])


@pytest.mark.parametrize("device", ["mps", "xla", "cpu:1", "gpu", "cuda:x", ""])
def test_unknown_devices_are_value_errors_listing_the_forms(digits, device):
    X, y = digits
    clf = PretrainedImageClassifier(make_cnn(), image_size=8, device=device)
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        clf.fit(X[:20], y[:20])
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        ImageEmbedder(make_cnn(), image_size=8, device=device).fit(X[:2])


def test_negative_sample_weight_is_refused(digits):
    X, y = digits
    w = np.ones(20)
    w[3] = -0.5
    clf = PretrainedImageClassifier(make_cnn(), image_size=8)
    with pytest.raises(ValueError, match=r"sample_weight\[3\] is -0.5"):
        clf.fit(X[:20], y[:20], sample_weight=w)
    with pytest.raises(ValueError, match="at least one non-zero"):
        clf.fit(X[:20], y[:20], sample_weight=np.zeros(20))


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_unusable_cache_dir_fails_before_any_backbone_work(digits, tmp_path, where):
    X, y = digits
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    cache_dir = blocker if where == "file" else blocker / "cache"
    sktransfer.clear_cache()
    before = cache_info()["backbone_forwards"]
    clf = PretrainedImageClassifier(make_cnn(), image_size=8, cache_dir=str(cache_dir))
    with pytest.raises(ValueError, match="cache_dir .* (is not a directory|cannot be written)"):
        clf.fit(X[:20], y[:20])
    assert cache_info()["backbone_forwards"] == before  # refused before extraction
    assert blocker.read_text() == "not a directory"
    with pytest.raises(ValueError, match="cache_dir"):
        ImageEmbedder(make_cnn(), image_size=8, cache_dir=str(cache_dir)).fit(X[:2])


def test_read_only_cache_dir_is_refused(digits, tmp_path):
    if os.geteuid() == 0:
        # root writes into 0o555 directories; a read-only file system is the real case
        pytest.skip("permission bits do not stop root")
    X, y = digits
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        clf = PretrainedImageClassifier(make_cnn(), image_size=8, cache_dir=str(ro))
        with pytest.raises(ValueError, match="cannot be written"):
            clf.fit(X[:20], y[:20])
    finally:
        ro.chmod(0o755)
