"""Pickling and the safe save/load format (issue 5: items 1, 2 and 6)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

import sktransfer
from sktransfer import PretrainedImageClassifier, PretrainedTextClassifier
from sktransfer._estimator import pickling
from sktransfer.deploy import is_quantized
from sktransfer.io import archive as _archive
from sktransfer.io import safe_format


def _torchvision_ok():
    try:
        from sktransfer.backbones.compat import import_torchvision

        import_torchvision()
        return True
    except (ImportError, RuntimeError):
        return False


needs_torchvision = pytest.mark.skipif(not _torchvision_ok(), reason="torchvision unavailable")


@pytest.fixture(scope="module")
def resnet_clf(digits_small):
    if not _torchvision_ok():
        pytest.skip("torchvision unavailable")
    X, y = digits_small
    labels = np.array(["zero", "one", "two"])[y[:60] % 3]
    clf = PretrainedImageClassifier(
        "resnet18", weights=None, image_size=32, freeze_depth=-1, max_epochs=1, random_state=0
    )
    return clf.fit(X[:60], labels), X[60:90]


@pytest.fixture(scope="module")
def bert_clf(tiny_bert_dir, texts):
    X, y = texts
    clf = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=1, max_epochs=1, random_state=0)
    return clf.fit(X[:80], y[:80]), X[80:]


def _rewrite(path, edit_meta=None, edit_members=None):
    """Rewrite a saved file with edited (and consistently re-checksummed) contents."""
    with zipfile.ZipFile(path) as zf:
        raw = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(raw.pop(_archive.MANIFEST))
    meta.pop("members")
    if edit_meta:
        edit_meta(meta)
    if edit_members:
        edit_members(raw)
    with open(path, "wb") as fh:
        _archive._write_zip(fh, meta, raw)


def _fitted_attrs(est):
    return {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_")}


def _assert_same_model(a, b, X):
    assert type(a) is type(b)
    assert a.get_params() == b.get_params()
    np.testing.assert_array_equal(a.classes_, b.classes_)
    assert a.classes_.dtype == b.classes_.dtype
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert set(_fitted_attrs(a)) == set(_fitted_attrs(b))
    for key in ("block_names_", "n_blocks_", "n_frozen_blocks_", "backbone_source_", "history_"):
        assert getattr(a, key) == getattr(b, key), key


# --------------------------------------------------------------------------- joblib
@needs_torchvision
def test_joblib_roundtrip_cpu_tensors_and_size(resnet_clf, tmp_path):
    clf, X = resnet_clf
    path = tmp_path / "m.joblib"
    joblib.dump(clf, path)
    weights = sum(t.numel() * t.element_size() for t in clf.module_.state_dict().values())
    assert os.path.getsize(path) <= 1.05 * weights
    loaded = joblib.load(path)
    assert all(t.device.type == "cpu" for t in loaded.module_.state_dict().values())
    _assert_same_model(clf, loaded, X)


def test_joblib_text_model_loads_in_fresh_process(bert_clf, tmp_path):
    """Unpickling imports transformers (tokenizer) first thing in a new process."""
    import subprocess
    import sys

    clf, X = bert_clf
    joblib.dump(clf, tmp_path / "m.joblib")
    code = (
        "import joblib, sys; m = joblib.load(sys.argv[1]); print(','.join(m.predict(sys.argv[2:])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m.joblib"), *X[:4]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().split(",") == list(clf.predict(X[:4]))


def test_pickle_from_newer_version_names_both(bert_clf, monkeypatch):
    clf, _ = bert_clf
    blob = pickle.dumps(clf)
    monkeypatch.setattr(pickling, "sktransfer_version", lambda: "0.0.1")
    with pytest.raises(RuntimeError, match=r"sktransfer 0\.1\.\d.*installed 0\.0\.1"):
        pickle.loads(blob)


# --------------------------------------------------------------------------- safe format
@needs_torchvision
def test_save_load_torchvision_roundtrip(resnet_clf, tmp_path):
    clf, X = resnet_clf
    path = sktransfer.save(clf, tmp_path / "m.skt")
    loaded = sktransfer.load(path)
    _assert_same_model(clf, loaded, X)
    assert loaded.preprocessing_ == clf.preprocessing_
    assert loaded.module_.n_frozen == clf.module_.n_frozen
    assert not loaded.module_.training


def test_save_load_huggingface_roundtrip(bert_clf, tmp_path):
    clf, X = bert_clf
    path = tmp_path / "m.skt"
    sktransfer.save(clf, path)
    loaded = sktransfer.load(path)
    _assert_same_model(clf, loaded, X)
    assert loaded.preprocessing_.max_length == clf.preprocessing_.max_length
    assert (
        loaded.preprocessing_.tokenizer("good film")["input_ids"]
        == (clf.preprocessing_.tokenizer("good film")["input_ids"])
    )
    names = zipfile.ZipFile(path).namelist()
    assert all(n.endswith((".json", ".txt", ".model", ".safetensors")) for n in names), names


@pytest.mark.parametrize(
    "labels",
    [
        np.array([3, 7] * 40),
        np.array([True, False] * 40),
        np.array(["no", "yes"] * 40),
        np.array(["no", "yes"] * 40, dtype=object),
        np.array([1.0, 2.0] * 40),
    ],
    ids=["int", "bool", "unicode", "object", "float"],
)
def test_classes_dtype_roundtrip(tiny_bert_dir, texts, labels, tmp_path):
    X = texts[0][:80]
    clf = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X, labels)
    sktransfer.save(clf, tmp_path / "m.skt")
    loaded = sktransfer.load(tmp_path / "m.skt")
    assert loaded.classes_.dtype == clf.classes_.dtype
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    pred = loaded.predict(X[:10])
    assert pred.dtype == clf.predict(X[:10]).dtype
    assert type(pred[0]) is type(clf.predict(X[:10])[0])


def test_load_runs_no_pickle(bert_clf, tmp_path, monkeypatch):
    clf, X = bert_clf
    sktransfer.save(clf, tmp_path / "m.skt")

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during sktransfer.load")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = sktransfer.load(tmp_path / "m.skt")
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)


def test_truncated_file_refused(bert_clf, tmp_path):
    path = tmp_path / "m.skt"
    sktransfer.save(bert_clf[0], path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated|corrupted"):
        sktransfer.load(path)


def test_flipped_byte_refused(bert_clf, tmp_path):
    path = tmp_path / "m.skt"
    sktransfer.save(bert_clf[0], path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(_archive.WEIGHTS)
    data[info.header_offset + 200] ^= 0xFF  # inside the stored weights
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted|modified"):
        sktransfer.load(path)


def test_member_tampered_with_valid_zip_refused(bert_clf, tmp_path):
    path = tmp_path / "m.skt"
    sktransfer.save(bert_clf[0], path)
    with zipfile.ZipFile(path) as zf:
        raw = {n: zf.read(n) for n in zf.namelist()}
        comment = zf.comment
    weights = bytearray(raw[_archive.WEIGHTS])
    weights[-5] ^= 0x01
    raw[_archive.WEIGHTS] = bytes(weights)
    with zipfile.ZipFile(path, "w") as zf:  # valid CRCs, stale checksums
        for name, data in raw.items():
            zf.writestr(name, data)
        zf.comment = comment
    with pytest.raises(ValueError, match=r"modified.*checksum mismatch in weights"):
        sktransfer.load(path)


def test_manifest_tampered_refused(bert_clf, tmp_path):
    path = tmp_path / "m.skt"
    sktransfer.save(bert_clf[0], path)
    with zipfile.ZipFile(path) as zf:
        raw = {n: zf.read(n) for n in zf.namelist()}
        comment = zf.comment
    raw[_archive.MANIFEST] = raw[_archive.MANIFEST].replace(b'"pos"', b'"POS"')
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in raw.items():
            zf.writestr(name, data)
        zf.comment = comment
    with pytest.raises(ValueError, match="manifest checksum"):
        sktransfer.load(path)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "x.skt"
    path.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a readable sktransfer model"):
        sktransfer.load(path)


def test_newer_format_refused_naming_versions(bert_clf, tmp_path):
    path = tmp_path / "m.skt"
    sktransfer.save(bert_clf[0], path)

    def newer(meta):
        meta["format_version"] = _archive.FORMAT_VERSION + 1
        meta["versions"]["sktransfer"] = "0.9.0"

    _rewrite(path, edit_meta=newer)
    msg = rf"file format {_archive.FORMAT_VERSION + 1}.*0\.9\.0.*{sktransfer.__version__}"
    with pytest.raises(ValueError, match=msg):
        sktransfer.load(path)


def test_newer_sktransfer_version_refused(bert_clf, tmp_path):
    path = tmp_path / "m.skt"
    sktransfer.save(bert_clf[0], path)
    _rewrite(path, edit_meta=lambda m: m["versions"].update(sktransfer="99.1.0"))
    with pytest.raises(RuntimeError, match=rf"99\.1\.0.*{sktransfer.__version__}"):
        sktransfer.load(path)


def test_save_is_atomic(bert_clf, tmp_path, monkeypatch):
    clf, X = bert_clf
    path = tmp_path / "m.skt"
    sktransfer.save(clf, path)
    before = path.read_bytes()
    real = _archive._write_zip

    def crash(fh, meta, members):
        real(fh, meta, members)  # a complete-looking file in the temp ...
        raise OSError("disk full")  # ... and then the writer dies

    monkeypatch.setattr(_archive, "_write_zip", crash)
    with pytest.raises(OSError, match="disk full"):
        sktransfer.save(clf, path)
    with pytest.raises(OSError, match="disk full"):
        sktransfer.save(clf, tmp_path / "new.skt")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.skt"]  # no temp file, no new.skt
    monkeypatch.undo()
    np.testing.assert_allclose(sktransfer.load(path).predict_proba(X), clf.predict_proba(X))


def test_non_plain_param_refused(cnn, digits_small, tmp_path):
    X, y = digits_small
    clf = PretrainedImageClassifier(cnn, image_size=16, random_state=0).fit(X[:40], y[:40] % 2)
    with pytest.raises(TypeError, match="joblib"):
        sktransfer.save(clf, tmp_path / "m.skt")
    assert not (tmp_path / "m.skt").exists()


def test_unfitted_refused(tmp_path):
    with pytest.raises(NotFittedError):
        sktransfer.save(PretrainedTextClassifier(), tmp_path / "m.skt")


def test_store_backbone_checked(bert_clf, tmp_path):
    with pytest.raises(ValueError, match="store_backbone must be"):
        sktransfer.save(bert_clf[0], tmp_path / "m.skt", store_backbone="none")
    with pytest.raises(ValueError, match="packaged backbone"):
        sktransfer.save(bert_clf[0], tmp_path / "m.skt", store_backbone="reference")


def test_load_device_and_quantize(bert_clf, tmp_path):
    clf, X = bert_clf
    sktransfer.save(clf, tmp_path / "m.skt")
    assert sktransfer.load(tmp_path / "m.skt", device="cpu").device == "cpu"
    q = sktransfer.load(tmp_path / "m.skt", quantize="dynamic")
    assert is_quantized(q) and not is_quantized(clf)
    np.testing.assert_allclose(q.predict_proba(X), clf.predict_proba(X), atol=0.05)
    with pytest.raises(ValueError, match="quantize"):
        sktransfer.load(tmp_path / "m.skt", quantize="int4")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            sktransfer.load(tmp_path / "m.skt", device="cuda:0")


def test_embedder_roundtrip(tiny_bert_dir, texts, tmp_path):
    emb = sktransfer.TextEmbedder(tiny_bert_dir).fit(texts[0])
    if not hasattr(emb, "backbone_source_"):
        pytest.skip("TextEmbedder does not record backbone_source_ yet")
    sktransfer.save(emb, tmp_path / "e.skt")
    loaded = sktransfer.load(tmp_path / "e.skt")
    np.testing.assert_allclose(loaded.transform(texts[0]), emb.transform(texts[0]), atol=1e-6)


# --------------------------------------------------------------------------- faults
def test_interrupted_fit_is_never_half_fitted(bert_clf, tiny_bert_dir, texts, monkeypatch):
    import sktransfer._estimator.fit_paths as base

    clf = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=1, max_epochs=1, random_state=0)
    clf.fit(*texts)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(base, "fine_tune", interrupt)
    with pytest.raises(KeyboardInterrupt):
        clf.fit(*texts)
    attrs = _fitted_attrs(clf)
    if attrs:  # kept the best weights so far: then it must be complete and usable
        assert set(attrs) >= set(_fitted_attrs(bert_clf[0]))
        clf.predict(texts[0][:3])
    else:
        with pytest.raises(NotFittedError):
            check_is_fitted(clf)


# --------------------------------------------------------------------------- packaged
@pytest.mark.packaged
def test_packaged_efficientnet_embed_and_reference(digits, tmp_path):
    X, y = digits
    clf = PretrainedImageClassifier(image_size=32, random_state=0).fit(X[:30], y[:30] % 2)
    for mode in ("embed", "reference"):
        path = tmp_path / f"{mode}.skt"
        sktransfer.save(clf, path, store_backbone=mode)
        loaded = sktransfer.load(path)
        _assert_same_model(clf, loaded, X[30:40])
    assert os.path.getsize(tmp_path / "reference.skt") < 100_000  # head only
    assert os.path.getsize(tmp_path / "embed.skt") > 10_000_000  # the whole network


@pytest.mark.packaged
def test_packaged_reference_detects_changed_weights(texts, tmp_path, monkeypatch):
    X, y = texts
    clf = PretrainedTextClassifier(random_state=0).fit(X[:40], y[:40])
    path = tmp_path / "ref.skt"
    sktransfer.save(clf, path, store_backbone="reference")
    assert os.path.getsize(path) < 100_000
    _assert_same_model(clf, sktransfer.load(path), X[40:60])
    real = safe_format.build_net

    def changed(*args, **kwargs):
        net, tok = real(*args, **kwargs)
        with torch.no_grad():
            next(net.blocks[0].parameters()).add_(1.0)
        return net, tok

    monkeypatch.setattr(safe_format, "build_net", changed)
    with pytest.raises(ValueError, match="packaged weights.*differ"):
        sktransfer.load(path)


def test_json_helpers_roundtrip():
    value = {"a": (1, 2.5, "x"), "b": np.array([[1, 2]], dtype=np.int16), "c": [None, True]}
    back = _archive.from_json(json.loads(json.dumps(_archive._to_json(value, "v"))))
    assert back["a"] == (1, 2.5, "x")
    assert back["b"].dtype == np.int16 and back["b"].shape == (1, 2)
    assert back["c"] == [None, True]
    with pytest.raises(TypeError, match="cannot be saved"):
        _archive._to_json({"f": io.BytesIO()}, "v")


def test_a_joblib_file_written_before_the_package_moves_still_loads():
    """tests/data/cnn_classifier_22d6b52.joblib: a frozen classifier on a tiny CNN pickled by
    sktransfer at commit 22d6b52, before io/pickling.py and backbones/_base.py moved; pickle
    finds _rebuild and ImagePreprocessing under their old module paths."""
    import warnings

    import joblib

    data = os.path.join(os.path.dirname(__file__), "data")
    X = np.random.RandomState(0).randint(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (another minor version: a warning, not an error)
        est = joblib.load(os.path.join(data, "cnn_classifier_22d6b52.joblib"))
    expected = np.load(os.path.join(data, "cnn_classifier_22d6b52_proba.npy"))
    np.testing.assert_allclose(est.predict_proba(X), expected, rtol=1e-5, atol=1e-6)
