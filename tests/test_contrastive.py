"""objective="contrastive" (SetFit-style pairs, cosine-similarity loss, exact head)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import make_texts
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from sktransfer import PretrainedTextClassifier, TextEmbedder
from sktransfer.cache import cache_info
from sktransfer.training.contrastive import cosine_similarity_loss, sentence_pairs

FAST = dict(num_iterations=3, max_epochs=3, lr=1e-3, batch_size=16, random_state=0)


@pytest.fixture(scope="module")
def data():
    return make_texts(40)


def _clf(path, **kw):
    kw = {"objective": "contrastive", "freeze_depth": 0, **FAST, **kw}
    return PretrainedTextClassifier(path, **kw)


def _pooled(clf, X):
    """The fitted encoder's pooled embeddings (the head's input), L2-normalised."""
    import torch

    from sktransfer.inputs.texts import make_text_collate

    net = clf.module_.eval()
    batch = make_text_collate(clf.preprocessing_)([(t, 0) for t in X])[0]
    with torch.no_grad():
        emb = net.features(batch).numpy().astype(np.float64)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def _same_minus_diff(emb, y):
    sim = emb @ emb.T
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    return sim[same & off].mean() - sim[~same].mean()


def test_sentence_pairs_follow_setfit():
    y = np.array([0, 0, 1, 1, 1, 2, 2])
    pairs, labels = sentence_pairs(y, 4, seed=3)
    assert pairs.shape == (2 * 4 * len(y), 2) and labels.shape == (len(pairs),)
    assert np.array_equal(labels[0::2], np.ones(4 * len(y)))  # positive, negative, ...
    assert np.array_equal(labels[1::2], np.zeros(4 * len(y)))
    assert np.array_equal(pairs[0::2, 0], np.tile(np.arange(len(y)), 4))  # each sample, in order
    assert np.array_equal(y[pairs[:, 0]] == y[pairs[:, 1]], labels == 1)
    assert np.all(pairs[:, 0] != pairs[:, 1])  # never a sentence with itself
    # every other same-class member is drawn as a partner at some point
    many, _ = sentence_pairs(y, 200, seed=0)
    pos = many[0::2]
    assert set(pos[pos[:, 0] == 2, 1]) == {3, 4}
    again, _ = sentence_pairs(y, 4, seed=3)
    assert np.array_equal(pairs, again)
    assert not np.array_equal(pairs, sentence_pairs(y, 4, seed=4)[0])


def test_cosine_similarity_loss_is_mse_of_cosine():
    import torch

    u = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])  # cos = 1, -1
    t = torch.tensor([1.0, 0.0])
    w = torch.ones(2)
    assert float(cosine_similarity_loss(u, v, t, w)) == pytest.approx((0 + 1) / 2)
    w = torch.tensor([1.0, 3.0])
    assert float(cosine_similarity_loss(u, v, t, w)) == pytest.approx(3 / 4)


def test_contrastive_pulls_same_label_together(tiny_bert_dir, data, fresh_cache):
    X, y = data
    before = TextEmbedder(tiny_bert_dir).fit_transform(X).astype(np.float64)
    before /= np.linalg.norm(before, axis=1, keepdims=True)
    clf = _clf(tiny_bert_dir).fit(X, y)
    after = _pooled(clf, X)
    gap_before, gap_after = _same_minus_diff(before, y), _same_minus_diff(after, y)
    assert gap_after > gap_before + 0.1, (gap_before, gap_after)
    probe = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X, y)
    assert clf.score(X, y) >= probe.score(X, y)
    # history_: the contrastive epochs (loss going down), then the exact head
    phases = [row["phase"] for row in clf.history_]
    assert phases == ["contrastive"] * FAST["max_epochs"] + ["head"]
    losses = [row["train_loss"] for row in clf.history_[:-1]]
    assert losses[-1] < losses[0]
    assert clf.history_[0]["n_pairs"] == 2 * FAST["num_iterations"] * len(X)
    assert clf.target_type_ == "single_label" and list(clf.classes_) == ["neg", "pos"]


def test_head_is_the_exact_solver_on_new_embeddings(tiny_bert_dir, data, fresh_cache):
    import torch

    from sktransfer.inputs.texts import make_text_collate
    from sktransfer.training.heads import fit_linear_head

    X, y = data
    clf = _clf(tiny_bert_dir, max_epochs=1).fit(X, y)
    batch = make_text_collate(clf.preprocessing_)([(t, 0) for t in X])[0]
    with torch.no_grad():
        emb = clf.module_.eval().features(batch).numpy()  # as the backbone pools (no renorm)
    idx = np.searchsorted(clf.classes_, y)
    head, _ = fit_linear_head(emb, idx, 2, np.ones(len(X)), C=clf.C)
    np.testing.assert_allclose(
        clf.module_.head.weight.detach().numpy(), head.weight.detach().numpy(), atol=1e-3
    )


def test_reproducible_with_random_state(tiny_bert_dir, data, fresh_cache):
    X, y = data
    a = _clf(tiny_bert_dir, max_epochs=2).fit(X, y)
    b = _clf(tiny_bert_dir, max_epochs=2).fit(X, y)
    pa, pb = a.predict_proba(X), b.predict_proba(X)
    assert np.array_equal(pa, pb)
    for (na, wa), (nb, wb) in zip(a.module_.state_dict().items(), b.module_.state_dict().items()):
        assert na == nb and np.array_equal(wa.numpy(), wb.numpy()), na
    c = _clf(tiny_bert_dir, max_epochs=2, random_state=1).fit(X, y)
    assert not np.array_equal(pa, c.predict_proba(X))


def test_frozen_prefix_comes_from_the_cache(tiny_bert_dir, data, fresh_cache):
    X, y = data
    a = _clf(tiny_bert_dir, freeze_depth=-1, max_epochs=1).fit(X, y)
    forwards = cache_info()["backbone_forwards"]
    b = _clf(tiny_bert_dir, freeze_depth=-1, max_epochs=1, lr=3e-4).fit(X, y)
    assert cache_info()["backbone_forwards"] == forwards  # the prefix: all cache hits
    assert not np.array_equal(a.predict_proba(X), b.predict_proba(X))
    # the frozen blocks really stayed frozen, the last one trained
    n = a.n_frozen_blocks_
    assert n == a.n_blocks_ - 1
    c = _clf(tiny_bert_dir, freeze_depth=-1, max_epochs=1, lr=1e-2).fit(X, y)
    for i in range(n):
        sa, sc = a.module_.blocks[i].state_dict(), c.module_.blocks[i].state_dict()
        assert all(np.array_equal(sa[k].numpy(), sc[k].numpy()) for k in sa)
    last_a, last_c = a.module_.blocks[n].state_dict(), c.module_.blocks[n].state_dict()
    assert any(not np.array_equal(last_a[k].numpy(), last_c[k].numpy()) for k in last_a)


def test_uncached_equals_cached(tiny_bert_dir, data):
    from sktransfer.cache import config_context

    X, y = data
    with config_context(cache=False):
        a = _clf(tiny_bert_dir, freeze_depth=-1, max_epochs=1).fit(X, y)
    with config_context(cache=True, cache_dir=""):
        b = _clf(tiny_bert_dir, freeze_depth=-1, max_epochs=1).fit(X, y)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=1e-5)


def test_errors_are_named(tiny_bert_dir, data):
    X, y = data
    y1 = y.copy()
    y1[7] = "odd"  # a class with one example
    with pytest.raises(ValueError, match=r"class 'odd' has one example \(sample 7\)"):
        _clf(tiny_bert_dir).fit(X, y1)
    with pytest.raises(ValueError, match="freeze_depth='all'"):
        _clf(tiny_bert_dir, freeze_depth="all").fit(X, y)
    Y = np.ones((len(X), 2), dtype=int)  # every sample shares a label with every other
    with pytest.raises(ValueError, match="found no sentence pairs: y gives none"):
        _clf(tiny_bert_dir).fit(X, Y)
    with pytest.raises(ValueError, match="lr='auto'"):
        _clf(tiny_bert_dir, lr="auto").fit(X, y)
    with pytest.raises(ValueError, match="objective"):
        PretrainedTextClassifier(tiny_bert_dir, objective="triplet").fit(X, y)
    with pytest.raises(ValueError, match="num_iterations"):
        _clf(tiny_bert_dir, num_iterations=0).fit(X, y)
    # a failed fit leaves an unfitted estimator; the same one then fits
    clf = _clf(tiny_bert_dir, max_epochs=1)
    with pytest.raises(ValueError):
        clf.fit(X, y1)
    assert not hasattr(clf, "classes_")
    assert clf.fit(X, y).predict(X[:2]).shape == (2,)


def test_default_objective_unchanged(tiny_bert_dir, data, fresh_cache):
    X, y = data
    clf = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=0, max_epochs=1, random_state=0)
    assert clf.get_params()["objective"] == "cross_entropy"
    clf.fit(X, y)
    assert "phase" not in clf.history_[0] or clf.history_[0]["phase"] != "contrastive"
    assert "train_loss" in clf.history_[0] and len(clf.history_) == 1  # one epoch trained
    clf.set_params(early_stopping=True).fit(X, y)
    assert "valid_acc" in clf.history_[0]


def test_grid_search_clone_and_pickle(tiny_bert_dir, data, fresh_cache):
    X, y = data
    est = _clf(tiny_bert_dir, freeze_depth=-1, max_epochs=1, num_iterations=2)
    assert clone(est).get_params() == est.get_params()
    search = GridSearchCV(
        est, {"objective": ["cross_entropy", "contrastive"], "num_iterations": [1, 2]}, cv=2
    )
    search.fit(X, y)
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    best = search.best_estimator_
    restored = pickle.loads(pickle.dumps(best))
    np.testing.assert_array_equal(restored.predict_proba(X), best.predict_proba(X))


def test_zero_weight_samples_make_no_pairs(tiny_bert_dir, data, fresh_cache):
    X, y = data
    sw = np.ones(len(X))
    sw[:4] = 0.0
    clf = _clf(tiny_bert_dir, max_epochs=1, num_iterations=2).fit(X, y, sample_weight=sw)
    pairs, _ = sentence_pairs(np.searchsorted(clf.classes_, y), 2, seed=clf._seed())
    n_kept = int(np.all(sw[pairs] > 0, axis=1).sum())
    assert n_kept < len(pairs)
    assert clf.history_[0]["n_pairs"] == n_kept
    full = _clf(tiny_bert_dir, max_epochs=1, num_iterations=2).fit(X, y)
    assert full.history_[0]["n_pairs"] == 2 * 2 * len(X)


def test_multilabel_pairs_follow_setfit():
    Y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 1, 1]])
    pairs, labels = sentence_pairs(Y, 3, seed=0)
    share = (Y[pairs[:, 0]] & Y[pairs[:, 1]]).any(axis=1)
    assert np.array_equal(share, labels == 1)  # positives share a label, negatives none
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert 5 not in pairs[:, 0]  # sample 5 shares a label with everyone: no negative
    # one positive + one negative per label of each other sample and round
    n_labels = Y[:5].sum()
    assert len(pairs) == 2 * 3 * n_labels
    assert np.array_equal(pairs, sentence_pairs(Y, 3, seed=0)[0])


def test_contrastive_multilabel(tiny_bert_dir, data, fresh_cache):
    X, y = data
    rng = np.random.RandomState(0)
    Y = np.stack([y == "pos", y == "neg", rng.rand(len(y)) < 0.3], axis=1).astype(int)
    clf = _clf(tiny_bert_dir).fit(X, Y)
    assert clf.target_type_ == "multi_label"
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3)
    assert clf.predict(X).shape == (len(X), 3)
    assert [row["phase"] for row in clf.history_][-1] == "head"
    pos = np.asarray(y) == "pos"
    assert ((proba[:, 0] >= 0.5) == pos).mean() >= 0.9  # the separable label is learnt
    emb = _pooled(clf, X)
    assert _same_minus_diff(emb, np.asarray(y)) > 0.1


def test_safe_format_round_trip(tiny_bert_dir, data, fresh_cache, tmp_path):
    import sktransfer

    X, y = data
    clf = _clf(tiny_bert_dir, max_epochs=1, num_iterations=1).fit(X, y)
    path = tmp_path / "model.skt"
    sktransfer.save(clf, path)
    loaded = sktransfer.load(path)
    assert loaded.get_params()["objective"] == "contrastive"
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    assert loaded.history_ == clf.history_


def test_default_freeze_depth_trains_the_whole_encoder(tiny_bert_dir, data, fresh_cache):
    """The default constructor just works: freeze_depth='auto' is 0 for this objective."""
    X, y = data
    kw = dict(objective="contrastive", max_epochs=1, num_iterations=2, random_state=0)
    clf = PretrainedTextClassifier(tiny_bert_dir, **kw).fit(X, y)
    assert clf.freeze_depth == "auto"
    assert clf.n_frozen_blocks_ == 0
    explicit = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=0, **kw).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), explicit.predict_proba(X), atol=1e-6)
    # the same "auto" with the default objective is the frozen probe
    probe = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X, y)
    assert probe.n_frozen_blocks_ == probe.n_blocks_
