"""Invariant 8: a loaded file is cross-checked, not trusted.

Every file here has valid checksums: it is written by the archive's own writer
(``archive._write_zip``) from a real saved model with one part of its manifest (or
weights) edited. ``sktransfer.load`` either returns an estimator whose ``predict``
works and returns labels from ``classes_``, or raises a ``ValueError`` naming the
path (and the attribute or parameter); never another exception, and predict never
does work or writes files the file chose (see :mod:`sktransfer.io.checks`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sktransfer
from sktransfer import PretrainedTextClassifier, PretrainedTextRegressor, TextEmbedder
from sktransfer.io import archive as _archive
from sktransfer.io import checks, fitted
from sktransfer.io.archive import WEIGHTS

LABELS = np.array(["negative", "neutral", "positive"])  # 3 outputs, labels longer than 1 char


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tiny_bert_dir, texts, tmp_path_factory):
    """``{kind: ((estimator, raw members), test texts)}`` of saved tiny-BERT models."""
    X, y = texts
    labels = LABELS[np.arange(80) % 3]
    Y = np.stack([(y[:80] == "pos"), np.arange(80) % 2, np.arange(80) % 3 == 0], 1).astype(int)
    models = {
        "clf": PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X[:80], labels),
        "reg": PretrainedTextRegressor(tiny_bert_dir).fit(X[:80], np.c_[np.arange(80.0), Y[:, 0]]),
        "ml": PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X[:80], Y),
        "emb": TextEmbedder(tiny_bert_dir).fit(X[:80]),
    }
    out = {}
    directory = tmp_path_factory.mktemp("inv8")
    for kind, est in models.items():
        path = directory / f"{kind}.skt"
        sktransfer.save(est, path)
        with zipfile.ZipFile(path) as zf:
            out[kind] = ((est, {n: zf.read(n) for n in zf.namelist()}), X[80:88])
    return out


def _forge(raw, path, edit_meta=None, edit_state=None):
    """Write ``raw``'s model to ``path`` with an edited manifest / weights, re-checksummed."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    members = dict(raw)
    meta = json.loads(members.pop(_archive.MANIFEST))
    meta.pop("members")
    if edit_meta is not None:
        edit_meta(meta)
    if edit_state is not None:
        state = st_load(members[WEIGHTS])
        edit_state(state)
        members[WEIGHTS] = st_save(state)
    with open(path, "wb") as fh:
        _archive._write_zip(fh, meta, members)
    return path


def _set(section, name, value):
    """An edit of the manifest: ``meta[section][name] = value`` (``section`` None: top level)."""

    def edit(meta):
        (meta if section is None else meta[section])[name] = value

    return edit


def _a(name, value):
    return _set("attributes", name, value)


def _p(name, value):
    return _set("params", name, value)


def _m(name, value):
    return _set("preprocessing", name, value)


def _array(items, dtype):
    return {"__ndarray__": list(items), "dtype": dtype, "shape": [len(items)]}


def _refused(path, *match):
    """``load(path)`` raises a ValueError naming the path and each of ``match``."""
    with pytest.raises(ValueError) as info:
        sktransfer.load(path)
    message = str(info.value)
    assert os.fspath(path) in message, message
    for m in match:
        assert m in message, message
    return message


def _model(request, kind):
    if kind == "img":
        return request.getfixturevalue("image_files")
    return request.getfixturevalue("files")[kind]


# --------------------------------------------------------------------------- cases
def test_labels_round_trip_exactly(files, tmp_path):
    (est, raw), X = files["clf"]
    path = _forge(raw, tmp_path / "m.skt")
    loaded = sktransfer.load(path)
    assert loaded.classes_.dtype == est.classes_.dtype == np.dtype("<U8")
    assert loaded.classes_.tolist() == LABELS.tolist()
    assert set(loaded.predict(X)) <= set(LABELS)


def _two(*edits):
    def edit(meta):
        for e in edits:
            e(meta)

    return edit


# (model, edit, what the message names): the cases first, then other instances
# fmt: off
CASES = {
    "2 classes, 3 outputs": ("clf", _a("classes_", _array("ab", "<U1")), ["classes_", "3 outputs"]),
    "4 classes, 3 outputs": ("clf", _a("classes_", _array("abcd", "<U1")), ["classes_", "3 out"]),
    "2 classes and n_outputs_ 2": (
        "clf", _two(_a("classes_", _array("ab", "<U1")), _a("n_outputs_", 2)),
        ["n_outputs_", "head of shape (3, 32)"],
    ),
    "<U1 labels": ("clf", _a("classes_", _array(LABELS, "<U1")), ["'negative' would become 'n'"]),
    "regression classifier": (
        "clf", _a("target_type_", "regression"), ["target_type_", "PretrainedTextClassifier"]
    ),
    "single_label regressor": (
        "reg", _a("target_type_", "single_label"), ["target_type_", "PretrainedTextRegressor"]
    ),
    "unknown target": ("clf", _a("target_type_", "bogus"), ["target_type_"]),
    "int target": ("clf", _a("target_type_", 3), ["target_type_"]),
    "multi_label single-label": ("clf", _a("target_type_", "multi_label"), ["classes_", "arange"]),
    "image_size 3000": ("img", _m("image_size", 3000), ["image_size 3000", "1024"]),
    "image_size 1025": ("img", _m("image_size", 1025), ["image_size"]),
    "image_size 0": ("img", _m("image_size", 0), ["image_size"]),
    "image_size float": ("img", _m("image_size", 7.5), ["image_size"]),
    "image_size str": ("img", _m("image_size", "224"), ["image_size"]),
    "image_size None": ("img", _m("image_size", None), ["image_size"]),
    "resize_size": ("img", _m("resize_size", 100_000), ["resize_size"]),
    "mean NaN": ("img", _m("mean", {"__tuple__": [0.5, float("nan"), 0.5]}), ["mean"]),
    "std 0": ("img", _m("std", {"__tuple__": [0.0, 1.0, 1.0]}), ["std"]),
    "interpolation": ("img", _m("interpolation", "lanczos"), ["interpolation"]),
    "extra field": ("img", _m("extra", 1), ["fields"]),
    "tta": ("img", _p("tta", 10**6), ["tta"]),
    "max_length": ("clf", _m("max_length", 65), ["max_length 65", "64 positions"]),
    "pooling": ("clf", _m("pooling", "max"), ["pooling"]),
    "lr str": ("clf", _p("lr", "fast"), ["'lr' parameter"]),
    "max_epochs float": ("clf", _p("max_epochs", 2.5), ["'max_epochs' parameter"]),
    "freeze_depth": ("clf", _p("freeze_depth", 99), ["freeze_depth"]),
    "inference_batch_size": ("clf", _p("inference_batch_size", 10**9), ["inference_batch_size"]),
    "embedder batch_size": ("emb", _p("batch_size", 10**9), ["batch_size"]),
    "backbone dict": ("clf", _p("backbone", {"kind": "x"}), ["backbone"]),
    "unknown param": ("clf", _p("no_such_param", 1), ["no_such_param"]),
    "n_features_out_": ("clf", _a("n_features_out_", 31), ["n_features_out_"]),
    "n_blocks_": ("clf", _a("n_blocks_", 2), ["n_blocks_"]),
    "n_frozen_blocks_": ("clf", _a("n_frozen_blocks_", 1), ["n_frozen_blocks_"]),
    "n_frozen": ("clf", _set(None, "n_frozen", 7), ["7 frozen blocks"]),
    "input_kind_": ("clf", _a("input_kind_", "vector"), ["input_kind_"]),
    "shadow a method": ("clf", _a("predict", 1), ["'predict'"]),
    "regressor attr": ("clf", _a("y_mean_", _array([0.0], "<f8")), ["y_mean_"]),
    "unsorted": ("clf", _a("classes_", _array("bac", "<U1")), ["sorted"]),
    "duplicate": ("clf", _a("classes_", _array("aac", "<U1")), ["distinct"]),
    "mixed labels": ("clf", _a("classes_", _array(["a", 1, "c"], "|O")), ["mixes"]),
    "history_": ("clf", _a("history_", "x"), ["history_"]),
    "multi-label classes": ("ml", _a("classes_", _array([0, 1, 5], "<i8")), ["arange"]),
    "y_scale_ 0": ("reg", _a("y_scale_", _array([1.0, 0.0], "<f8")), ["y_scale_"]),
    "y_mean_ NaN": ("reg", _a("y_mean_", _array([1.0, float("nan")], "<f8")), ["y_mean_"]),
    "y_mean_ shape": ("reg", _a("y_mean_", _array([1.0], "<f8")), ["shape (2,)"]),
    "y_ndim_": ("reg", _a("y_ndim_", 1), ["y_ndim_"]),
    "regressor classes_": ("reg", _a("classes_", _array("ab", "<U1")), ["classes_"]),
    "embedder classes_": ("emb", _a("classes_", _array("ab", "<U1")), ["classes_"]),
    "embedder features": ("emb", _a("n_features_out_", 64), ["n_features_out_"]),
    "source": ("clf", _a("backbone_source_", {"kind": "huggingface", "path": "/x"}), ["backbone"]),
    "missing attribute": ("reg", lambda m: m["attributes"].pop("y_scale_"), ["y_scale_"]),
    "modality": ("clf", _set(None, "estimator", "PretrainedImageClassifier"), ["image model"]),
    "store_backbone": ("clf", _set(None, "store_backbone", "elsewhere"), ["store_backbone"]),
    "shape -1": ("ml", _a("classes_", {**_array([1, 2], "<i8"), "shape": [-1]}), ["shape"]),
    "int8 overflow": ("ml", _a("classes_", _array([300, 1, 2], "|i1")), ["cannot hold"]),
    "str as int": ("ml", _a("classes_", _array(["1", "2", "3"], "<i8")), ["exactly"]),
}
# fmt: on


@pytest.mark.parametrize("case", sorted(CASES))
def test_inconsistent_file_is_refused_naming_path_and_value(request, tmp_path, case):
    kind, edit, match = CASES[case]
    (est, raw), _ = _model(request, kind)
    start = time.perf_counter()
    _refused(_forge(raw, tmp_path / "m.skt", edit), *match)
    assert time.perf_counter() - start < 10  # refused before any work the file sizes


def test_cache_dir_never_travels(files, tmp_path):
    """Saved: the default (None). An older file's value: reset with a warning; predict
    creates nothing there."""
    (est, raw), X = files["clf"]
    chosen = tmp_path / "chosen-by-the-file"
    est.set_params(cache_dir=str(tmp_path / "mine"), device="cpu")
    try:
        sktransfer.save(est, tmp_path / "saved.skt")
    finally:
        est.set_params(cache_dir=None, device="auto")
    params = json.loads(zipfile.ZipFile(tmp_path / "saved.skt").read(_archive.MANIFEST))["params"]
    assert params["cache_dir"] is None and params["device"] == "auto"

    def edit(meta):
        meta["params"].update(cache_dir=str(chosen), device="cuda:7", num_workers=64)

    path = _forge(raw, tmp_path / "m.skt", edit)
    with pytest.warns(checks.LoadWarning, match="cache_dir=.*device='cuda:7'.*num_workers=64"):
        loaded = sktransfer.load(path)
    assert (loaded.cache_dir, loaded.device, loaded.num_workers) == (None, "auto", 0)
    from sktransfer.cache import config_context

    with config_context(cache=True):
        loaded.predict(X)
    assert not chosen.exists()


@pytest.mark.parametrize("bad", ["nan", "inf", "int"])
def test_weights_are_finite_floats(files, tmp_path, bad):
    (est, raw), _ = files["clf"]

    def edit(state):
        w = state["head.weight"]
        if bad == "int":
            state["head.weight"] = w.round().to(torch.int32)
        else:
            w[0, 0] = float(bad)

    message = _refused(_forge(raw, tmp_path / "m.skt", edit_state=edit), "head.weight")
    assert ("int32" in message) == (bad == "int")


def test_every_saved_attribute_has_a_check(files):
    """A new fitted attribute needs its check in sktransfer/io/fitted.py (CHECKS)."""
    for kind, ((_est, raw), _X) in files.items():
        saved = json.loads(raw[_archive.MANIFEST])["attributes"]
        assert set(saved) <= set(fitted.CHECKS), (kind, set(saved) - set(fitted.CHECKS))


def test_lr_range_test_record_passes_its_check():
    ctx = {}
    fitted.CHECKS["lr_find_"]("lr_find_", {"lrs": [1e-5, 1e-3], "losses": [0.7, float("nan")]}, ctx)
    fitted.CHECKS["lr_"]("lr_", None, ctx)
    with pytest.raises(ValueError, match="lr_find_"):
        fitted.CHECKS["lr_find_"]("lr_find_", {"lrs": "x"}, ctx)
    with pytest.raises(ValueError, match="lr_"):
        fitted.CHECKS["lr_"]("lr_", float("inf"), ctx)


def test_save_refuses_what_load_would_refuse(files, tmp_path):
    (est, raw), _ = files["clf"]
    prep = est.preprocessing_
    try:
        est.preprocessing_ = dataclasses.replace(prep, max_length=10_000)
        with pytest.raises(ValueError, match="cannot save.*max_length"):
            sktransfer.save(est, tmp_path / "m.skt")
    finally:
        est.preprocessing_ = prep
    assert not (tmp_path / "m.skt").exists()


# --------------------------------------------------------------------------- property
def _classes_edits():
    """Random labels in a random dtype, or 3 valid ones (sorted, distinct, wide enough)."""
    words = st.text(alphabet="abcxyz", min_size=0, max_size=9)
    random = st.tuples(
        st.one_of(
            st.lists(words, min_size=0, max_size=5),
            st.lists(st.integers(-3, 300), min_size=0, max_size=5),
        ),
        st.sampled_from(["<U1", "<U3", "<U9", "<i8", "|i1", "<f8", "|O"]),
    )
    valid = st.one_of(
        st.lists(words, min_size=3, max_size=3, unique=True).map(
            lambda w: (sorted(w), f"<U{max(1, *map(len, w))}")
        ),
        st.lists(st.integers(-3, 300), min_size=3, max_size=3, unique=True).map(
            lambda v: (sorted(v), "<i8")
        ),
    )
    return st.tuples(st.just("classes"), st.one_of(random, valid)).map(lambda t: (t[0], *t[1]))


_VALID_PARAMS = {
    "lr": 1e-3, "C": 0.5, "max_epochs": 2, "verbose": 0, "precision": "fp32",
    "inference_batch_size": 3, "freeze_depth": -1, "cache_dir": "/tmp/sktransfer-chosen",
    "device": "cpu", "class_weight": "balanced", "random_state": 7,
}  # fmt: skip
_ANY_VALUE = st.one_of(
    st.integers(-2, 10**6), st.floats(allow_nan=True), st.text(max_size=6), st.none(),
    st.booleans(), st.sampled_from(["auto", "cpu", "all", "fp32", "balanced"]),
)  # fmt: skip
_EDITS = st.one_of(
    _classes_edits(),
    st.tuples(
        st.just("target_type"),
        st.sampled_from(["single_label"] * 4 + ["multi_label", "regression", "", "x", None, 1]),
    ),
    st.tuples(st.just("n_outputs"), st.sampled_from([3, 3, 3, -1, 0, 2, 4, 10**9])),
    st.tuples(
        st.just("max_length"),
        st.one_of(st.integers(2, 64), st.integers(-2, 100_000), st.none()),
    ),
    st.sampled_from(sorted(_VALID_PARAMS)).flatmap(
        lambda name: st.tuples(
            st.just("param"), st.just(name), st.one_of(st.just(_VALID_PARAMS[name]), _ANY_VALUE)
        )
    ),
)


def _apply(meta, edit):
    what, *args = edit
    attrs = meta["attributes"]
    if what == "classes":
        labels, dtype = args
        attrs["classes_"] = _array(labels, dtype)
    elif what == "target_type":
        attrs["target_type_"] = args[0]
    elif what == "n_outputs":
        attrs["n_outputs_"] = args[0]
    elif what == "max_length":
        meta["preprocessing"]["max_length"] = args[0]
    else:
        meta["params"][args[0]] = args[1]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=st.lists(_EDITS, min_size=1, max_size=3))
def test_any_edit_loads_a_working_model_or_is_refused_naming_the_path(files, tmp_path, edits):
    (est, raw), X = files["clf"]
    path = _forge(raw, tmp_path / "m.skt", lambda meta: [_apply(meta, e) for e in edits])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", checks.LoadWarning)
        try:
            loaded = sktransfer.load(path)
        except ValueError as exc:
            assert os.fspath(path) in str(exc), exc
            event("refused")
            return
    event("loaded")
    pred = loaded.predict(X)
    assert len(pred) == len(X)
    assert set(pred.tolist()) <= set(loaded.classes_.tolist())
    assert loaded.cache_dir is None and loaded.device == "auto"


# --------------------------------------------------------------------------- image model
def _torchvision_ok():
    try:
        from sktransfer.backbones.compat import import_torchvision

        import_torchvision()
        return True
    except (ImportError, RuntimeError):
        return False


@pytest.fixture(scope="module")
def image_files(digits_small, tmp_path_factory):
    if not _torchvision_ok():
        pytest.skip("torchvision unavailable")
    from sktransfer import PretrainedImageClassifier

    X, y = digits_small
    clf = PretrainedImageClassifier("mobilenet_v3_small", weights=None, image_size=32)
    clf.fit(X[:30], y[:30] % 3)
    path = tmp_path_factory.mktemp("inv8img") / "img.skt"
    sktransfer.save(clf, path)
    with zipfile.ZipFile(path) as zf:
        return (clf, {n: zf.read(n) for n in zf.namelist()}), X[30:34]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    size=st.one_of(st.integers(-10, 5000), st.sampled_from([8, 32, 1024])),
    resize=st.one_of(st.none(), st.integers(-10, 5000)),
    interpolation=st.sampled_from(["bilinear", "bicubic", "nearest", "box", ""]),
    tta=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_image_preprocessing_edits_load_bounded_or_are_refused(
    image_files, tmp_path, size, resize, interpolation, tta
):
    (est, raw), X = image_files

    def edit(meta):
        meta["preprocessing"].update(image_size=size, resize_size=resize)
        meta["preprocessing"]["interpolation"] = interpolation
        meta["params"]["tta"] = tta

    path = _forge(raw, tmp_path / "m.skt", edit)
    try:
        loaded = sktransfer.load(path)
    except ValueError as exc:
        assert os.fspath(path) in str(exc), exc
        event("refused")
        return
    event("loaded")
    assert loaded.preprocessing_.image_size <= checks.MAX_IMAGE_SIZE
    assert (loaded.tta or 0) <= checks.PREDICT_BOUNDS["tta"]
    if size * (1 + (loaded.tta or 0)) <= 512:  # keep the predict part of the test quick
        assert set(loaded.predict(X).tolist()) <= set(loaded.classes_.tolist())
