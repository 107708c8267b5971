"""The safe format reaches every backbone source through its ``rebuild`` (issue 14 item 4).

Adding a source is one registration: save and load need no edit. Also: what a source is
handed (the file's data members, never the manifest's word for them), and text models
loading bit-identically, frozen ones included.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import sktransfer
from sktransfer import PretrainedTextClassifier
from sktransfer._estimator.ownership import read_preprocessing
from sktransfer.io import archive as _archive


@pytest.fixture(scope="module")
def bert_clf(tiny_bert_dir, texts):
    X, y = texts
    clf = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=1, max_epochs=1, random_state=0)
    return clf.fit(X[:80], y[:80]), X[80:]


def _rewrite(path, edit_meta):
    """Rewrite a saved file with an edited (and consistently re-checksummed) manifest."""
    with zipfile.ZipFile(path) as zf:
        raw = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(raw.pop(_archive.MANIFEST))
    meta.pop("members")
    edit_meta(meta)
    with open(path, "wb") as fh:
        _archive._write_zip(fh, meta, raw)


def test_load_uses_a_registered_sources_rebuild(bert_clf, tmp_path):
    """Adding a backbone source is one registration: save and load then use its rebuild."""
    from sktransfer.backbones import registry
    from sktransfer.backbones.hf_text_members import HF_CONFIG, rebuild_huggingface

    clf, X = bert_clf
    seen = []

    def rebuild(source, arch):
        seen.append((dict(source), dict(arch)))
        return rebuild_huggingface(source, arch)

    toy = registry.BackboneSource("toy_h6", "text", "-", "-", "-", rebuild=rebuild)
    clf.backbone_source_, real = {"kind": "toy_h6", "name": "toy"}, clf.backbone_source_
    try:
        with pytest.raises(TypeError, match="cannot be rebuilt"):
            sktransfer.save(clf, tmp_path / "m.skt")  # not registered yet
        registry.register_source(toy)
        sktransfer.save(clf, tmp_path / "m.skt")
        # a manifest cannot forge the members the source is handed
        _rewrite(tmp_path / "m.skt", lambda m: m["arch"].update(members={HF_CONFIG: "{}"}))
        loaded = sktransfer.load(tmp_path / "m.skt")
    finally:
        clf.backbone_source_ = real
        registry._SOURCES.pop("toy_h6", None)
    assert [s for s, _ in seen] == [{"kind": "toy_h6", "name": "toy"}]
    arch = seen[0][1]
    members = zipfile.ZipFile(tmp_path / "m.skt").namelist()
    assert set(arch["members"]) == {n for n in members if n.startswith(("backbone/", "tokenizer/"))}
    assert arch["members"][HF_CONFIG].startswith(b"{")
    with pytest.raises(TypeError):
        arch["members"]["x"] = b""  # read-only
    assert arch["weight_bytes"] == sum(
        t.numel() * t.element_size() for t in clf.module_.state_dict().values()
    )
    assert arch["preprocessing"]["max_length"] == clf.preprocessing_.max_length
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_unregistered_kind_cannot_be_loaded(bert_clf, tmp_path):
    clf, _ = bert_clf
    sktransfer.save(clf, tmp_path / "m.skt")

    def edit(meta):
        meta.update(backbone_source={"kind": "nope"})
        meta["attributes"]["backbone_source_"] = {"kind": "nope"}  # consistent: both say so

    _rewrite(tmp_path / "m.skt", edit)
    with pytest.raises(ValueError, match="no backbone source can rebuild"):
        sktransfer.load(tmp_path / "m.skt")


def test_frozen_text_model_loads_bit_identical(tiny_bert_dir, texts, tmp_path):
    """Frozen features are cached per text: the loaded model must hit the same entries.

    Its tokenizer keeps the saved ``name_or_path`` (the cache keys preprocessing by it), not
    the temporary directory it was read from; otherwise it recomputes the probe's features
    in other batches (other padding), which differ in the last float bits.
    """
    X, y = texts
    rng = np.random.RandomState(0)
    many = [" ".join(rng.choice(X, rng.randint(1, 8))) for _ in range(150)]
    clf = PretrainedTextClassifier(tiny_bert_dir, max_length=48, random_state=0)
    clf.fit(X[:80], y[:80])
    clf.predict_proba(many)  # cached in batches of these 150 texts
    probe = many[:40]
    expected = clf.predict_proba(probe)
    for _ in range(2):  # every load gets the same cache namespace
        sktransfer.save(clf, tmp_path / "m.skt")
        loaded = sktransfer.load(tmp_path / "m.skt")
        # (read without handing them out: a handed-out tokenizer is keyed by its state)
        tok = read_preprocessing(loaded).tokenizer
        assert tok.name_or_path == read_preprocessing(clf).tokenizer.name_or_path
        np.testing.assert_array_equal(loaded.predict_proba(probe), expected)


@pytest.mark.parametrize("attn", ["kernels-community/flash-attn", 3])
def test_unknown_attention_implementation_refused(bert_clf, tmp_path, attn):
    """A hub kernel id would make transformers fetch and run its code: refused."""
    clf, _ = bert_clf
    sktransfer.save(clf, tmp_path / "m.skt")
    assert json.loads(zipfile.ZipFile(tmp_path / "m.skt").read(_archive.MANIFEST))["arch"][
        "attn_implementation"
    ] in ("sdpa", "eager")
    _rewrite(tmp_path / "m.skt", lambda m: m["arch"].update(attn_implementation=attn))
    with pytest.raises(ValueError, match="refusing attn_implementation"):
        sktransfer.load(tmp_path / "m.skt")
