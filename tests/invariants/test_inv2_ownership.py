"""Invariant 2: one estimator never changes another.

Frozen CPU estimators run the registry's loaded template without copying it; reading
``module_`` hands out a private copy first (copy on access). Whatever a caller does to
one estimator's ``module_`` — any tensor, any edit, through ``.data`` or not — the other
estimators, the estimators fitted later and the registry's template are unchanged, and
the edited estimator itself predicts with its edited weights (never stale cache entries).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import make_cnn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sktransfer import ImageEmbedder, PretrainedImageClassifier, clear_cache
from sktransfer.backbones import list_backbones, resolve_backbone
from sktransfer.backbones.custom import backbone_from_module
from sktransfer.backbones.registry import is_registered, register_backbone

NAME = "test-inv2-tiny"
_NAMES = itertools.count()
SIDE = 16


def _register(name=NAME):
    list_backbones()  # the built-in entries first
    if not is_registered(name):

        @register_backbone(name, modality="image", source="test")
        def load(weights="default"):
            return backbone_from_module(make_cnn(seed=5), "image")

    return name


def _images(n, seed):
    return np.random.RandomState(seed).randint(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)


def _clf(name=NAME, **kw):
    return PretrainedImageClassifier(name, image_size=SIDE, random_state=0, **kw)


@pytest.fixture(scope="module")
def data():
    _register()
    X = _images(40, 0)
    y = np.arange(40) % 3
    return X, y


def _edit(net, which, how, scale):
    params = [p for p in net.parameters()]
    p = params[which % len(params)]
    with torch.no_grad():
        if how == "data_zero":
            p.data.zero_()
        elif how == "mul":
            p.mul_(scale)
        elif how == "replace":
            p.data = torch.full_like(p, scale)
        else:  # "add" through the version-tracked path
            p.add_(scale)


def test_zeroing_one_estimators_weights_moves_no_other(data):
    """The issue's reproduction: zero a.module_ in place; b and later fits are unmoved."""
    X, y = data
    clear_cache()
    a, b = _clf().fit(X, y), _clf(C=0.5).fit(X, y)
    X_new = _images(8, 1)
    with torch.no_grad():
        for p in a.module_.blocks[1].parameters():
            p.zero_()
    b_new = b.predict_proba(X_new)
    later = _clf(C=0.5).fit(X, y).predict_proba(X_new)
    clear_cache()  # a reference computed from scratch: nothing served from the cache
    reference = _clf(C=0.5).fit(X, y).predict_proba(X_new)
    np.testing.assert_array_equal(b_new, reference)
    np.testing.assert_array_equal(later, reference)
    template = resolve_backbone(NAME, "image", share=True)
    assert all(p.abs().sum() > 0 for p in template.blocks[1][1].parameters())


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.integers(0, 50),
    how=st.sampled_from(["data_zero", "mul", "replace", "add"]),
    scale=st.sampled_from([0.0, 0.5, -1.0, 3.0]),
    embedder=st.booleans(),
)
def test_any_edit_of_one_estimator_stays_in_it(data, which, how, scale, embedder):
    X, y = data
    X_new = _images(6, which)
    # a backbone of its own per example: a broken build would carry one example's edit
    # into the next one's template, where it could cancel what this one checks
    name = _register(f"{NAME}-{next(_NAMES)}")
    make = (
        (lambda: ImageEmbedder(name, image_size=SIDE).fit(X))
        if embedder
        else (lambda: _clf(name).fit(X, y))
    )
    out = (lambda est, Z: est.transform(Z)) if embedder else (lambda est, Z: est.predict_proba(Z))
    a, b = make(), make()
    before_b = out(b, X_new)
    before_a = out(a, X_new)  # cached now: a stale entry would hide a's own edit
    net = a.module_
    _edit(net, which, how, scale)
    if which % 2:  # half the time from scratch: nothing from the cache may hide a change
        clear_cache()
    np.testing.assert_array_equal(out(b, X_new), before_b)
    np.testing.assert_array_equal(out(make(), X_new), before_b)
    # a predicts with its edited weights: what a private copy of them predicts, uncached
    clear_cache()
    expected = out(a, X_new)
    clear_cache()
    fresh = make()
    fresh.module_.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(out(fresh, X_new), expected)
    assert before_a.shape == expected.shape


def test_reading_module_of_a_fine_tuned_estimator_does_not_copy(data):
    X, y = data
    est = _clf(freeze_depth=-1, max_epochs=1).fit(X, y)
    assert est.module_ is est.module_  # its own network already: no copy per access


def test_weights_replaced_under_a_restored_mtime_are_loaded_again(tmp_path):
    """The registry keeps loaded backbones by their weights file: a file copied over with
    ``cp -p`` (same size and mtime, new bytes) must not be served from the old load."""
    import os
    import shutil

    from sktransfer.backbones.registry import _weights_key

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"0" * 64)
    b.write_bytes(b"1" * 64)
    target = tmp_path / "weights.pt"
    shutil.copy2(a, target)
    before = _weights_key(str(target))
    st = os.stat(target)
    shutil.copy2(b, target)  # cp -p: the bytes change, size and mtime are restored
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(target).st_mtime_ns == st.st_mtime_ns
    assert _weights_key(str(target)) != before


def test_saving_reads_the_network_without_copying_it(tmp_path):
    """Library code that only reads the network (sktransfer.save, is_quantized) does not
    hand it out: no private copy of the shared backbone, the digest memo kept."""
    import sktransfer
    from sktransfer.deploy import is_quantized

    X = np.random.RandomState(0).randint(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    a = PretrainedImageClassifier(image_size=32, random_state=0).fit(X, np.arange(12) % 2)
    shared = vars(a)["module_"]
    assert shared.shares_template  # the packaged backbone, frozen on the CPU
    sktransfer.save(a, tmp_path / "a.skt")
    assert not is_quantized(a)
    assert vars(a)["module_"] is shared and not getattr(shared, "handed_out", False)


def test_editing_one_estimators_tokenizer_moves_no_other(tiny_bert_dir):
    """A text model's tokenizer is the registry's loaded one, shared by the estimators of
    that backbone: reading ``preprocessing_`` hands out a private copy, and the cache keys
    an edited tokenizer by its state (not its name), so the edit reaches its own estimator."""
    from conftest import make_texts
    from tokenizers import normalizers

    from sktransfer import PretrainedTextClassifier

    texts, labels = make_texts(40)
    new, _ = make_texts(8, seed=3)
    a = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(texts, labels)
    b = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(texts, labels)
    before_a, before_b = a.predict_proba(new), b.predict_proba(new)  # (now cached)
    tok = a.preprocessing_.tokenizer
    tok.backend_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace("good", "awful")]
    )
    # exact by construction: b and a later fit read b's cached features (one process)
    np.testing.assert_array_equal(b.predict_proba(new), before_b)
    later = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(texts, labels)
    np.testing.assert_array_equal(later.predict_proba(new), before_b)
    assert not np.array_equal(a.predict_proba(new), before_a)  # the edit reached a, uncached
