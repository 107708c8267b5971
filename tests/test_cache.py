"""The content-addressed feature/activation cache: reuse, invalidation, bounds, faults."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from sktransfer import (
    ImageEmbedder,
    PretrainedImageClassifier,
    TextEmbedder,
    cache_info,
    clear_cache,
)
from sktransfer.cache import config_context, disk, lookup
from sktransfer.cache.keys import digest, sample_keys

pytestmark = pytest.mark.usefixtures("fresh_cache")  # conftest.py


def _clf(cnn, **kw):
    return PretrainedImageClassifier(cnn, image_size=8, batch_size=64, random_state=0, **kw)


def test_grid_search_runs_the_backbone_once_per_unique_sample(cnn, digits_small):
    X, y = digits_small
    search = GridSearchCV(_clf(cnn), {"C": [0.1, 1.0, 10.0], "lr": [1e-4, 1e-3]}, cv=5, refit=True)
    search.fit(X, y)
    info = cache_info()
    # 6 configs x 5 folds (+ refit) fits and as many scorings: one forward per sample
    assert info["backbone_forwards"] == len(X)
    assert info["hits"] >= 6 * 5 * len(X)
    search.predict(X)
    assert cache_info()["backbone_forwards"] == len(X)


def test_embedder_and_frozen_classifier_share_entries(cnn, digits_small):
    X, y = digits_small
    clf = _clf(cnn).fit(X, y)
    assert cache_info()["backbone_forwards"] == len(X)
    feats = ImageEmbedder(cnn, image_size=8, batch_size=64).fit(X).transform(X)
    assert cache_info()["backbone_forwards"] == len(X)  # same layout, same entries
    head = clf.module_.head
    with torch.no_grad():
        logits = head(torch.from_numpy(feats)).numpy()
    np.testing.assert_allclose(softmax(logits, axis=1), clf.predict_proba(X), atol=1e-6)


def test_grid_points_that_differ_only_in_lr_share_one_head_solve(cnn, digits_small):
    X, y = digits_small
    search = GridSearchCV(_clf(cnn), {"C": [0.1, 1.0], "lr": [1e-4, 1e-3, 1e-2]}, cv=3).fit(X, y)
    info = cache_info()
    # frozen: lr never reaches the head. 2 C x 3 folds solves, + 1 for the refit on all of X
    assert info["head_solves"] == 2 * 3 + 1
    assert info["head_hits"] == 2 * 3 * 2
    # a memoised head is the solved head: same coefficients as a fit with an empty memo
    best = search.best_estimator_
    clear_cache()
    cold = _clf(cnn, **search.best_params_).fit(X, y)
    assert cache_info()["head_solves"] == 1 and cache_info()["head_hits"] == 0
    torch.testing.assert_close(cold.module_.head.weight, best.module_.head.weight, rtol=0, atol=0)
    # the memo hands out copies: changing one estimator's head leaves the next fit alone
    with torch.no_grad():
        cold.module_.head.weight.zero_()
    again = _clf(cnn, **search.best_params_).fit(X, y)
    assert cache_info()["head_hits"] == 1
    torch.testing.assert_close(again.module_.head.weight, best.module_.head.weight)
    # different labels or weights are a different problem
    _clf(cnn).fit(X, y, sample_weight=np.linspace(1, 2, len(y)))
    assert cache_info()["head_solves"] == 2


def test_partial_fine_tuning_caches_each_boundary_once(cnn, digits_small):
    X, y = digits_small
    search = GridSearchCV(
        _clf(cnn, max_epochs=1),
        {"freeze_depth": [2, 3], "lr": [1e-3, 3e-3]},
        cv=3,
    )
    search.fit(X, y)
    # pooled features (for the head warm start) + the block-2 and block-3 boundaries
    assert cache_info()["backbone_forwards"] == 3 * len(X)


def test_cached_and_uncached_paths_agree(cnn, digits_small):
    X, y = digits_small
    cached = _clf(cnn, freeze_depth=2, max_epochs=2, lr=1e-3).fit(X, y).predict_proba(X)
    with config_context(cache=False):
        plain = _clf(cnn, freeze_depth=2, max_epochs=2, lr=1e-3).fit(X, y).predict_proba(X)
    np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-6)
    assert cache_info()["hits"] > 0


def test_changed_file_is_a_miss(cnn, tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    emb = ImageEmbedder(cnn, image_size=8).fit(paths)
    first = emb.transform(paths)
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(paths[2])
    os.utime(paths[2], ns=(1, 1))  # a different mtime even on coarse clocks
    before = cache_info()
    second = emb.transform(paths)
    after = cache_info()
    assert after["misses"] - before["misses"] == 1
    assert after["hits"] - before["hits"] == 5
    np.testing.assert_array_equal(np.delete(first, 2, 0), np.delete(second, 2, 0))
    assert not np.allclose(first[2], second[2])


def test_changed_weights_are_a_miss(cnn, digits_small):
    X, _ = digits_small
    a = ImageEmbedder(cnn, image_size=8).fit(X).transform(X)
    with torch.no_grad():
        cnn[0][0].weight.add_(0.5)
    before = cache_info()["misses"]
    b = ImageEmbedder(cnn, image_size=8).fit(X).transform(X)
    assert cache_info()["misses"] - before == len(X)
    assert not np.allclose(a, b)


def test_memory_bound_is_honoured_with_lru_eviction():
    with config_context(cache_max_bytes=10 * 400):  # ten 100-float entries
        rows = lambda idx: [np.full(100, i, np.float32) for i in idx]  # noqa: E731
        keys = [f"k{i}" for i in range(12)]
        lookup("ns", keys, rows)
        info = cache_info()
        assert info["bytes"] <= 10 * 400 and info["entries"] == 10 and info["evictions"] == 2
        lookup("ns", ["k2"], rows)  # touch k2: now most recently used
        lookup("ns", ["new"], rows)  # evicts the least recently used (k3), not k2
        before = cache_info()["misses"]
        lookup("ns", ["k2"], rows)
        assert cache_info()["misses"] == before
        lookup("ns", ["k3"], rows)
        assert cache_info()["misses"] == before + 1


def test_corrupt_disk_entries_are_recomputed(cnn, digits_small, tmp_path):
    X, _ = digits_small
    X = X[:20]
    with config_context(cache_dir=str(tmp_path)):
        emb = ImageEmbedder(cnn, image_size=8).fit(X)
        expected = emb.transform(X)
        files = sorted(tmp_path.rglob("*.sktc"))
        assert len(files) == 20
        files[0].write_bytes(files[0].read_bytes()[:-7])  # truncated
        blob = bytearray(files[1].read_bytes())
        blob[-3] ^= 0xFF  # one flipped bit pattern in the payload
        files[1].write_bytes(bytes(blob))
        files[2].write_bytes(b"garbage")
        clear_cache()  # memory tier empty: reads must go to disk
        again = emb.transform(X)
        np.testing.assert_array_equal(again, expected)
        info = cache_info()
        assert info["disk_hits"] == 17 and info["misses"] == 3


def _writer(cache_dir, seed, n):
    from sktransfer.cache import config_context, lookup

    with config_context(cache_dir=cache_dir):
        for round_ in range(5):
            lookup(
                f"ns{round_}",
                [f"k{i}" for i in range(n)],
                lambda idx: [np.arange(512, dtype=np.float32) + i for i in idx],
            )


def test_concurrent_writers_do_not_corrupt(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s, 40)) for s in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert not list(tmp_path.rglob("*.tmp"))
    with config_context(cache_dir=str(tmp_path)):
        clear_cache()
        for round_ in range(5):
            out = lookup(f"ns{round_}", [f"k{i}" for i in range(40)], pytest.fail)
            for i, row in enumerate(out):
                np.testing.assert_array_equal(row, np.arange(512, dtype=np.float32) + i)
    assert os.path.exists(disk.entry_path(str(tmp_path), digest("ns0", "k0")))


def test_cache_survives_clone_and_is_not_pickled(cnn, digits_small):
    X, y = digits_small
    clf = _clf(cnn).fit(X, y)
    forwards = cache_info()["backbone_forwards"]
    clone(clf).fit(X, y)
    assert cache_info()["backbone_forwards"] == forwards
    small = len(pickle.dumps(clf))
    for _ in range(3):  # grow the cache a lot; the pickle must not grow with it
        lookup("other", [str(i) for i in range(300)], lambda idx: [np.ones(1000)] * len(idx))
    assert abs(len(pickle.dumps(clf)) - small) < 200


def test_text_embedder_second_transform_is_free(tiny_bert_dir, texts):
    X, _ = texts
    emb = TextEmbedder(tiny_bert_dir).fit(X)
    a = emb.transform(X)
    forwards = cache_info()["backbone_forwards"]
    b = emb.transform(list(X))
    assert cache_info()["backbone_forwards"] == forwards
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (len(X), 32)


def _register_tiny(name):
    from conftest import make_cnn

    from sktransfer.backbones import list_backbones
    from sktransfer.backbones.custom import backbone_from_module
    from sktransfer.backbones.registry import register_backbone

    list_backbones()  # the built-in entries first

    @register_backbone(name, modality="image", source="test")
    def load(weights="default"):
        return backbone_from_module(make_cnn(seed=3), "image")

    return name


def test_frozen_cpu_models_share_the_registry_template_and_never_change_it(digits_small):
    from sktransfer.backbones import resolve_backbone

    X, y = digits_small
    name = _register_tiny("test-tiny-shared")
    template = resolve_backbone(name, "image", share=True)
    weights = [p.detach().clone() for _, b in template.blocks for p in b.parameters()]
    tuned = dict(freeze_depth=1, max_epochs=1, lr=1e-3)
    before = _clf(name, **tuned).fit(X, y).predict_proba(X)

    a, b = _clf(name).fit(X, y), _clf(name, C=0.1).fit(X, y)
    assert a._net().blocks[0] is b._net().blocks[0] is template.blocks[0][1]  # no copies
    conv = next(m for m in template.blocks[0][1].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # loaded that way
    # fine-tuning copies: the same model whether or not frozen fits came first
    tuned_est = _clf(name, **tuned).fit(X, y)
    assert tuned_est.module_.blocks[1] is not template.blocks[1][1]
    np.testing.assert_array_equal(tuned_est.predict_proba(X), before)
    # moving a sharing model copies it first: the template stays where it is
    a._module_on(torch.device("meta"))
    assert a.module_.blocks[0] is not template.blocks[0][1]
    assert all(p.device.type == "cpu" for _, blk in template.blocks for p in blk.parameters())
    after = [p for _, blk in template.blocks for p in blk.parameters()]
    assert all(torch.equal(u, v) for u, v in zip(weights, after))
    np.testing.assert_array_equal(b.predict_proba(X), clone(b).fit(X, y).predict_proba(X))
    # the frozen fits flipped the template's requires_grad / train flags; copies are as loaded
    fresh = resolve_backbone(name, "image")
    assert all(p.requires_grad for _, blk in fresh.blocks for p in blk.parameters())
    assert all(m.training for _, blk in fresh.blocks for m in blk.modules())


def test_lru_evicts_least_recently_used_within_its_limit():
    from sktransfer.cache.lru import LRU

    lru = LRU(10, sizeof=len)
    lru.put("a", "xxxx")
    lru.put("b", "xxxx")
    assert lru.get("a") == "xxxx"  # refreshes a: b is now the oldest
    lru.put("c", "xxxx")  # 12 > 10: evict b
    assert "b" not in lru and "a" in lru and "c" in lru
    assert lru.size == 8 and lru.evictions == 1
    lru.put("huge", "x" * 11)  # never fits: not stored, nothing evicted for it
    assert "huge" not in lru and len(lru) == 2
    lru.limit = 4
    lru.trim()
    assert list(lru.data) == ["c"] and lru.evictions == 2


# --------------------------------------------------------------------------- invariant 3
# (the rest of invariant 3 is in tests/invariants/test_inv3_cache.py)
def _rows(idx):
    return [np.arange(24, dtype=np.float32).reshape(2, 12) * (i + 1) for i in idx]


def test_pil_images_equal_in_pixels_but_not_in_what_decoding_uses_differ(cnn, tmp_path):
    idx = np.arange(64, dtype=np.uint8).reshape(8, 8) % 4
    a, b = Image.new("P", (8, 8)), Image.new("P", (8, 8))
    a.putdata(idx.ravel().tolist())
    b.putdata(idx.ravel().tolist())
    a.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
    b.putpalette([255, 255, 255, 0, 255, 255, 255, 0, 255, 255, 255, 0] * 64)
    rgb = Image.fromarray(np.repeat(idx[..., None] * 60, 3, axis=2))
    turned = rgb.copy()
    exif = turned.getexif()
    exif[0x0112] = 6  # rotated 90 degrees
    turned.save(tmp_path / "t.jpg", exif=exif)
    plain_jpg = tmp_path / "p.jpg"
    rgb.save(plain_jpg)
    turned = Image.open(tmp_path / "t.jpg")
    plain = Image.open(plain_jpg)
    emb = ImageEmbedder(cnn, image_size=8).fit([a])
    with config_context(cache=False):
        fresh = emb.transform([a, b, plain, turned])
    np.testing.assert_array_equal(emb.transform([a, b, plain, turned]), fresh)
    assert len(set(sample_keys([a, b]))) == 2
    assert len(set(sample_keys([plain, turned]))) == 2


def test_a_fifo_is_keyed_without_blocking_and_never_stored(tmp_path):
    fifo = str(tmp_path / "x.png")
    os.mkfifo(fifo)
    k1, k2 = sample_keys([fifo, fifo])
    assert k1 != k2 and k1.startswith("stream:") and not k1.unchanged()
    lookup("ns", [k1], _rows)
    assert cache_info()["entries"] == 0


def test_values_handed_out_are_read_only(tmp_path):
    (first,) = lookup("ns", ["k"], _rows, cache_dir=str(tmp_path))
    clear_cache()
    (again,) = lookup("ns", ["k"], pytest.fail, cache_dir=str(tmp_path))
    for value in (first, again):
        with pytest.raises(ValueError, match="read-only"):
            value[0, 0] = 7
    with pytest.raises(ValueError):
        again.setflags(write=True)  # a view of the bytes read: cannot be made writable


def test_cache_dir_of_the_wrong_type_is_named():
    with pytest.raises(TypeError, match="cache_dir"):
        with config_context(cache_dir=123):
            pass
