"""Inference micro-batches, length-sorted texts and the remembered shape probe.

Behaviour, not speed (the speeds live in ``benchmarks/bench_inference.py``): texts run
longest first and come back in input order; outputs do not depend on the micro-batch size
(and the cache namespace does not either); a user module's probe forward is paid once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_batch_invariant, make_cnn, make_texts
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from sktransfer import (
    ImageEmbedder,
    PretrainedImageClassifier,
    PretrainedTextClassifier,
    TextEmbedder,
    cache_info,
    clear_cache,
)
from sktransfer.cache import config_context
from sktransfer.inputs.texts import TextCollate
from sktransfer.runtime import microbatch
from sktransfer.runtime.microbatch import inference_batch_size, length_order, restore_order

pytestmark = pytest.mark.usefixtures("fresh_cache")  # conftest.py


def _ragged_texts(n=40, seed=0):
    """Texts of 1..9 words, in no length order."""
    texts, labels = make_texts(n, seed)
    rng = np.random.RandomState(seed)
    words = [t.split() * 2 for t in texts]
    return [" ".join(w[: rng.randint(1, 10)]) for w in words], labels


class _BatchSpy:
    """Records the texts of every tokenised batch (TextCollate.__call__)."""

    def __init__(self, monkeypatch):
        self.batches = []
        real = TextCollate.__call__
        spy = self

        def call(self, batch):
            spy.batches.append([t for t, _ in batch])
            return real(self, batch)

        monkeypatch.setattr(TextCollate, "__call__", call)


def _token_counts(tokenizer, texts):
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


# --------------------------------------------------------------------------- the sizes
def test_automatic_micro_batch_per_device_and_input():
    class Prep:
        image_size = 224

    assert inference_batch_size(None, "image", "cpu", Prep()) == 4
    Prep.image_size = 64
    assert inference_batch_size(None, "image", "cpu", Prep()) == 4 * 224 * 224 // (64 * 64)
    Prep.image_size = 8
    assert inference_batch_size(None, "image", "cpu", Prep()) == 64  # clamped
    Prep.image_size = 1024
    assert inference_batch_size(None, "image", "cpu", Prep()) == 1
    assert inference_batch_size(None, "image", "cuda", None) == 256
    assert inference_batch_size(None, "text", "cpu") == microbatch.TEXT_BATCH["cpu"]
    assert inference_batch_size(None, "text", "cuda:0") == microbatch.TEXT_BATCH["cuda"]
    assert inference_batch_size(7, "image", "cpu", Prep()) == 7  # forced


def test_automatic_micro_batches_are_balanced_over_the_items():
    class Prep:
        image_size = 64

    rule = inference_batch_size(None, "image", "cpu", Prep())
    assert rule == 49
    assert inference_batch_size(None, "image", "cpu", Prep(), n=256) == 43  # 6 x 43, not 5 + 11
    assert inference_batch_size(None, "image", "cpu", Prep(), n=98) == 49  # already even
    assert inference_batch_size(None, "image", "cpu", Prep(), n=10) == 49  # one batch anyway
    assert inference_batch_size(None, "text", "cpu", n=33) == 17
    assert inference_batch_size(7, "image", "cpu", Prep(), n=256) == 7  # forced: as given
    for n in range(1, 300):
        size = microbatch.balanced(rule, n)
        assert -(-n // size) == -(-n // rule) and size <= rule  # as few batches, no larger


def _batch_sizes(module):
    """Batch sizes through ``module``'s first layer (the hook survives the fits' copies)."""
    seen = []
    module[0].register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    return seen


def test_an_embedders_automatic_batches_are_balanced(digits_small):
    X, _ = digits_small
    cnn = make_cnn()
    sizes = _batch_sizes(cnn)
    emb = ImageEmbedder(cnn, image_size=8).fit(X)
    with config_context(cache=False):
        sizes.clear()
        ref = emb.transform(X[:100])
        assert sizes == [50, 50]  # 8 px: the rule's 64, balanced over 100 images
        sizes.clear()
        forced = emb.set_params(batch_size=64).transform(X[:100])
    assert sizes == [64, 36]
    assert_batch_invariant(forced, ref)


def test_inference_batch_size_is_a_plain_parameter():
    clf = PretrainedImageClassifier(inference_batch_size=3)
    assert clf.get_params()["inference_batch_size"] == 3
    assert PretrainedTextClassifier().get_params()["inference_batch_size"] is None
    assert clone(clf).inference_batch_size == 3
    assert ImageEmbedder().get_params()["batch_size"] is None  # an embedder's only batch
    with pytest.raises(ValueError, match="inference_batch_size"):
        PretrainedImageClassifier(make_cnn(), inference_batch_size=0).fit(
            np.zeros((4, 8, 8), np.uint8), [0, 1] * 2
        )


def test_length_order_and_restore():
    texts = ["ab", "abcd", "a", "abcd", "abc"]
    order = length_order(texts, "text")
    assert list(order) == [1, 3, 4, 0, 2]  # longest first, ties in input order
    rows = [texts[i].upper() for i in order]
    assert restore_order(rows, order) == [t.upper() for t in texts]
    arr = np.arange(5)[order] * 10
    np.testing.assert_array_equal(restore_order(arr, order), np.arange(5) * 10)
    assert length_order(texts, "image") is None and length_order(["x"], "text") is None


# --------------------------------------------------------------------------- length sorting
def test_text_embedder_sorts_by_tokens_and_restores_the_order(tiny_bert_dir, monkeypatch):
    X, _ = _ragged_texts()
    emb = TextEmbedder(tiny_bert_dir, batch_size=4).fit(X[:2])
    tok = emb.preprocessing_.tokenizer
    counts = _token_counts(tok, X)
    assert counts != sorted(counts, reverse=True)  # the input is not already sorted
    spy = _BatchSpy(monkeypatch)
    out = emb.transform(X)
    seen = [t for b in spy.batches for t in b]
    assert sorted(seen) == sorted(X)
    assert _token_counts(tok, seen) == sorted(counts, reverse=True)  # longest first
    assert all(len(b) == 4 for b in spy.batches[:-1])
    # order restored: each row is its own text's embedding, as computed alone (no padding)
    with config_context(cache=False):
        alone = np.stack([emb.transform([t])[0] for t in X])
    np.testing.assert_allclose(out, alone, rtol=1e-5, atol=1e-6)


def test_text_classifier_predicts_in_input_order_at_every_depth(tiny_bert_dir, monkeypatch):
    X, y = _ragged_texts(48, seed=1)
    kw = dict(random_state=0, max_epochs=1, early_stopping=False, batch_size=8)
    for depth in ["all", 1, 0]:  # cached features; cached token states; raw texts
        clf = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=depth, **kw).fit(X, y)
        spy = _BatchSpy(monkeypatch)
        clear_cache()  # predict runs the network again
        proba = clf.predict_proba(X)
        seen = [t for b in spy.batches for t in b]
        counts = _token_counts(clf.preprocessing_.tokenizer, seen)
        assert counts == sorted(counts, reverse=True), depth
        monkeypatch.undo()
        with config_context(cache=False):
            one = np.concatenate([clf.predict_proba([t]) for t in X[:12]])
        np.testing.assert_allclose(proba[:12], one, rtol=1e-5, atol=1e-6, err_msg=str(depth))


def test_training_batches_stay_shuffled(tiny_bert_dir, monkeypatch):
    X, y = _ragged_texts(32, seed=2)
    tok = TextEmbedder(tiny_bert_dir).fit(X[:1]).preprocessing_.tokenizer
    spy = _BatchSpy(monkeypatch)
    PretrainedTextClassifier(
        tiny_bert_dir, freeze_depth=0, head_init="random", max_epochs=2, batch_size=16,
        early_stopping=False, random_state=0,
    ).fit(X, y)  # fmt: skip
    assert len(spy.batches) == 4  # 2 epochs x 2 training batches, no inference batch
    seen = [t for b in spy.batches[:2] for t in b]
    assert sorted(seen) == sorted(X) and seen != X  # one epoch: every text, shuffled
    counts = _token_counts(tok, seen)
    assert counts != sorted(counts, reverse=True)  # not length-sorted
    assert spy.batches[2:] != spy.batches[:2]  # reshuffled each epoch


# --------------------------------------------------------------------------- micro-batch sizes
@pytest.mark.parametrize("size", [1, 3, 64])
def test_image_outputs_agree_across_micro_batch_sizes(digits_small, size):
    X, y = digits_small
    X, y = X[:60], y[:60]
    ref = ImageEmbedder(make_cnn(), image_size=8).fit(X).transform(X)
    with config_context(cache=False):
        feats = ImageEmbedder(make_cnn(), image_size=8, batch_size=size).fit(X).transform(X)
    assert_batch_invariant(feats, ref)  # a per-sample CNN: equal up to kernel rounding
    forwards = cache_info()["backbone_forwards"]
    # the cache namespace does not change with the size: served without a forward
    again = ImageEmbedder(make_cnn(), image_size=8, batch_size=size).fit(X).transform(X)
    assert cache_info()["backbone_forwards"] == forwards
    np.testing.assert_array_equal(again, ref)
    clf = PretrainedImageClassifier(make_cnn(), image_size=8, random_state=0)
    a = clf.fit(X, y).predict_proba(X)
    with config_context(cache=False):
        b = clone(clf).set_params(inference_batch_size=size).fit(X, y).predict_proba(X)
    assert_batch_invariant(a, b)


def test_text_outputs_match_across_micro_batch_sizes(tiny_bert_dir):
    X, _ = _ragged_texts(30, seed=3)
    with config_context(cache=False):
        outs = [TextEmbedder(tiny_bert_dir, batch_size=s).fit(X).transform(X) for s in (1, 5, None)]
    for out in outs[1:]:  # padding changes the GEMM shapes: equal up to float rounding
        np.testing.assert_allclose(out, outs[0], rtol=1e-5, atol=1e-6)


def test_the_loaders_use_the_inference_size_not_the_training_one(digits_small):
    X, y = digits_small
    X, y = X[:192], y[:192]  # 3 x 64: the rule's size, balanced or not
    cnn = make_cnn()
    sizes = _batch_sizes(cnn)
    clf = PretrainedImageClassifier(cnn, image_size=8, batch_size=16, random_state=0)
    clf.fit(X, y).predict(X)
    assert sizes == [64, 64, 64]  # 8 px: the CPU rule's clamp (predict: from the cache)
    sizes.clear()
    clear_cache()
    clf.set_params(inference_batch_size=5).fit(X, y)
    assert set(sizes[:-1]) == {5} and sum(sizes) == 192


# --------------------------------------------------------------------------- the probe
class _Counter:
    """Counts the samples through a module's forward: the hook is a function, which
    ``clone``'s and the fits' deep copies share (a callable object would be copied)."""

    def __init__(self, module):
        seen = self.seen = []
        module.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))

    @property
    def samples(self):
        return sum(self.seen)


def test_probe_forward_is_paid_once_per_module_in_a_search(digits_small):
    X, y = digits_small
    X, y = X[:90], y[:90]
    cnn = make_cnn(seed=5)
    count = _Counter(cnn[0])
    clf = PretrainedImageClassifier(
        cnn, image_size=8, freeze_depth=2, head_init="random", max_epochs=1, random_state=0
    )
    GridSearchCV(clf, {"lr": [1e-4, 1e-3], "weight_decay": [0.0, 0.1]}, cv=2).fit(X, y)
    # 8 fits + refit: boundary activations are cached (one forward of block 0 per unique
    # sample) and the shape probe (one sample) runs once, not once per fit
    assert count.samples == len(X) + 1


def test_frozen_fit_and_embedder_need_no_probe_after_features(digits_small):
    X, y = digits_small
    cnn = make_cnn(seed=6)
    count = _Counter(cnn[0])
    PretrainedImageClassifier(cnn, image_size=8, random_state=0).fit(X, y)
    assert count.samples == len(X)  # no probe: the features tell the size
    emb = ImageEmbedder(cnn, image_size=8).fit(X)  # the size is remembered
    assert count.samples == len(X) and emb.n_features_out_ == 64
    other = make_cnn(seed=17)  # other weights (no other test uses them): probed, once
    count_other = _Counter(other[0])
    ImageEmbedder(other, image_size=8).fit(X[:5])
    ImageEmbedder(other, image_size=8).fit(X[:5])
    assert count_other.samples == 1


def test_lazy_modules_are_still_materialised(digits_small):
    X, y = digits_small
    lazy = torch.nn.Sequential(torch.nn.LazyConv2d(4, 3), torch.nn.Flatten())
    clf = PretrainedImageClassifier(lazy, image_size=8, random_state=0).fit(X, y)
    assert clf.n_features_out_ == 4 * 6 * 6
    assert clf.predict(X[:3]).shape == (3,)
