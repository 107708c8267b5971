"""Int8 dynamic quantisation and ONNX export (issue 5, item 4)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

import sktransfer
from sktransfer import PretrainedImageClassifier, PretrainedTextClassifier
from sktransfer.data import load_rgb, preprocess_image
from sktransfer.deploy import export_onnx, is_quantized, quantize_dynamic


@pytest.fixture(scope="module")
def bert_clf(tiny_bert_dir, texts):
    X, y = texts
    clf = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=1, max_epochs=2, random_state=0)
    return clf.fit(X[:80], y[:80]), X[80:]


@pytest.fixture(scope="module")
def cnn_clf(digits_small):
    from conftest import make_cnn

    X, y = digits_small
    clf = PretrainedImageClassifier(make_cnn(), image_size=16, random_state=0)
    return clf.fit(X[:80], y[:80] % 3), X[80:100]


# --------------------------------------------------------------------------- quantisation
def test_quantize_dynamic_text(bert_clf):
    clf, X = bert_clf
    before = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    q = quantize_dynamic(clf)
    assert q is not clf and is_quantized(q) and not is_quantized(clf)
    assert all(torch.equal(before[k], v) for k, v in clf.module_.state_dict().items())
    assert q.device == "cpu"
    assert isinstance(q.module_.head, torch.nn.Linear)  # the head stays float
    p, p_q = clf.predict_proba(X), q.predict_proba(X)
    np.testing.assert_allclose(p_q.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p_q, p, atol=0.05)
    assert np.mean(q.predict(X) == clf.predict(X)) >= 0.9
    assert not np.array_equal(p_q, p)  # int8 arithmetic really ran
    with pytest.raises(ValueError, match="already quantised"):
        quantize_dynamic(q)


def test_quantized_frozen_model_with_feature_cache(tiny_bert_dir, texts):
    """A quantised copy must neither crash the feature cache nor reuse float features."""
    X, y = texts
    clf = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X[:80], y[:80])
    p = clf.predict_proba(X[80:])  # fills the cache with float features
    q = quantize_dynamic(clf)
    p_q = q.predict_proba(X[80:])
    assert not np.array_equal(p_q, p)
    np.testing.assert_allclose(p_q, p, atol=0.05)


def test_quantized_model_pickles_but_is_not_safe_saved(bert_clf, tmp_path):
    clf, X = bert_clf
    q = quantize_dynamic(clf)
    back = pickle.loads(pickle.dumps(q))
    np.testing.assert_allclose(back.predict_proba(X), q.predict_proba(X), atol=1e-6)
    with pytest.raises(TypeError, match="quantize='dynamic'"):
        sktransfer.save(q, tmp_path / "q.skt")


def test_quantize_warns_without_linear_layers(cnn_clf):
    clf, X = cnn_clf
    with pytest.warns(UserWarning, match="no nn.Linear"):
        q = quantize_dynamic(clf)
    np.testing.assert_allclose(q.predict_proba(X), clf.predict_proba(X), atol=1e-6)


# --------------------------------------------------------------------------- ONNX
def _session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_onnx_image_matches_torch(cnn_clf, tmp_path):
    pytest.importorskip("onnx")
    clf, X = cnn_clf
    path = export_onnx(clf, tmp_path / "cnn.onnx")
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == ["pixel_values"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]  # the target's output
    pixels = np.stack([preprocess_image(load_rgb(x), clf.preprocessing_).numpy() for x in X])
    for n in (1, 7, len(X)):  # dynamic batch axis
        (out,) = sess.run(None, {"pixel_values": pixels[:n]})
        assert out.shape == (n, len(clf.classes_))
        np.testing.assert_allclose(out, clf.predict_proba(X[:n]), atol=1e-5)
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["sktransfer_classes"]) == clf.classes_.tolist()
    assert json.loads(meta["sktransfer_preprocessing"])["image_size"] == 16


def test_export_onnx_multilabel_matches_predict_proba(digits_small, tmp_path):
    """A multi-label model's graph ends in the target's sigmoid, not a softmax."""
    pytest.importorskip("onnx")
    from conftest import make_cnn

    X, y = digits_small
    Y = np.stack([y % 2, (y > 4).astype(int), (y % 3 == 0).astype(int)], axis=1)
    clf = PretrainedImageClassifier(make_cnn(), image_size=16, random_state=0).fit(X[:80], Y[:80])
    sess = _session(export_onnx(clf, tmp_path / "multilabel.onnx"))
    pixels = np.stack([preprocess_image(load_rgb(x), clf.preprocessing_).numpy() for x in X[80:]])
    (out,) = sess.run(None, {"pixel_values": pixels})
    proba = clf.predict_proba(X[80:])
    assert out.shape == proba.shape == (len(pixels), 3)
    assert not np.allclose(proba.sum(axis=1), 1)  # independent labels
    np.testing.assert_allclose(out, proba, atol=1e-5)


def test_export_onnx_text_matches_torch(bert_clf, tmp_path):
    pytest.importorskip("onnx")
    clf, X = bert_clf
    path = export_onnx(clf, tmp_path / "bert.onnx", opset=17)
    sess = _session(path)
    names = [i.name for i in sess.get_inputs()]
    assert names[:2] == ["input_ids", "attention_mask"]
    tok = clf.preprocessing_.tokenizer
    long_text = " ".join(["the movie was really quite good and the acting superb"] * 3)
    batches = [X[:1], X[:9], [long_text, "bad", X[0]], ["good"] * 4]  # batch, length, padding
    for batch in batches:
        enc = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="np")
        (out,) = sess.run(None, {k: enc[k].astype(np.int64) for k in names})
        np.testing.assert_allclose(out, clf.predict_proba(batch), atol=1e-5)
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["sktransfer_classes"]) == ["neg", "pos"]
    # exporting must not change the estimator (eager attention is set on a copy)
    np.testing.assert_allclose(clf.predict_proba(X[:5]), clf.predict_proba(X[:5]))


def test_export_onnx_refuses_quantized(bert_clf, tmp_path):
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="float model"):
        export_onnx(quantize_dynamic(bert_clf[0]), tmp_path / "q.onnx")


@pytest.mark.packaged
def test_quantized_minilm_close_to_float(texts):
    X, y = texts
    clf = PretrainedTextClassifier(random_state=0).fit(X[:60], y[:60])
    q = quantize_dynamic(clf)
    np.testing.assert_allclose(q.predict_proba(X[60:]), clf.predict_proba(X[60:]), atol=0.05)
    assert np.mean(q.predict(X[60:]) == clf.predict(X[60:])) >= 0.95


def test_estimator_methods_delegate_to_deploy(cnn, digits_small, tmp_path):
    from sktransfer import PretrainedImageClassifier

    X, y = digits_small
    clf = PretrainedImageClassifier(cnn, image_size=8, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="dynamic"):
        clf.quantize("static")
    q = clf.quantize()
    assert q is not clf and q.predict(X).shape == (len(X),)
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    clf.export_onnx(tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").stat().st_size > 0
