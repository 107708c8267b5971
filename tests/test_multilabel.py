"""Multi-label classification (a 0/1 indicator y) in both classifiers, as MLPClassifier."""

from __future__ import annotations

import pickle
import warnings

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV
from sklearn.multiclass import OneVsRestClassifier

import sktransfer
from sktransfer import (
    ImageEmbedder,
    PretrainedImageClassifier,
    PretrainedTextClassifier,
    TextEmbedder,
    cache_info,
    clear_cache,
)
from sktransfer._estimator.targets.multi_label import CONSTANT_LOGIT, MultiLabel
from sktransfer.cache import config_context


def _indicators(t):
    """Three overlapping labels of a digit: odd, > 4, a multiple of 3."""
    return np.stack([t % 2, (t > 4).astype(int), (t % 3 == 0).astype(int)], axis=1)


@pytest.fixture(scope="module")
def digits_ml(digits_small):
    X, t = digits_small
    return X[:160], _indicators(t[:160])


@pytest.fixture(scope="module")
def texts_ml(texts):
    X, labels = texts
    rng = np.random.RandomState(0)
    pos = (labels == "pos").astype(int)
    has_film = np.array(["film" in x.split() for x in X], dtype=int)
    noise = rng.randint(0, 2, len(X))
    return X, np.stack([pos, has_film, noise], axis=1)


def _clf(**kw):
    from conftest import make_cnn

    kw.setdefault("early_stopping", True)  # (tests of the validation split: on at any n)
    return PretrainedImageClassifier(make_cnn(), image_size=16, random_state=0, **kw)


def _ovr_on_features(features, Y, C, sample_weight=None):
    if sample_weight is None:
        return OneVsRestClassifier(LogisticRegression(C=C, max_iter=10_000, tol=1e-8)).fit(
            features, Y
        )
    with sklearn.config_context(enable_metadata_routing=True):
        logistic = LogisticRegression(C=C, max_iter=10_000, tol=1e-8)
        ovr = OneVsRestClassifier(logistic.set_fit_request(sample_weight=True))
        return ovr.fit(features, Y, sample_weight=sample_weight)


# --------------------------------------------------------------------------- frozen = OvR
@pytest.mark.parametrize("C", [0.05, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_frozen_matches_one_vs_rest_logistic(digits_ml, C, weighted):
    from conftest import make_cnn

    X, Y = digits_ml
    train, test = slice(0, 110), slice(110, None)
    sw = np.linspace(0.5, 2.0, 110) if weighted else None
    clf = _clf(C=C).fit(X[train], Y[train], sample_weight=sw)
    assert clf.target_type_ == "multi_label" and clf.n_outputs_ == 3
    np.testing.assert_array_equal(clf.classes_, np.arange(3))
    feats = ImageEmbedder(make_cnn(), image_size=16).fit(X).transform(X)
    ovr = _ovr_on_features(feats[train], Y[train], C, sw)

    proba = clf.predict_proba(X[test])
    assert proba.shape == (50, 3) and proba.dtype == np.float64
    assert not np.allclose(proba.sum(axis=1), 1.0)  # independent labels, not a softmax
    np.testing.assert_allclose(proba, ovr.predict_proba(feats[test]), atol=2e-3)
    pred = clf.predict(X[test])
    assert pred.shape == (50, 3) and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (proba >= 0.5).astype(int))
    ovr_pred = ovr.predict(feats[test])
    for average in ("micro", "macro"):
        ours = f1_score(Y[test], pred, average=average)
        theirs = f1_score(Y[test], ovr_pred, average=average)
        assert abs(ours - theirs) <= 0.005, (average, ours, theirs)
    # score is ClassifierMixin's: subset accuracy, as in scikit-learn
    assert clf.score(X[test], Y[test]) == pytest.approx(accuracy_score(Y[test], pred))


def test_frozen_head_is_one_logistic_per_label(digits_ml):
    """Each label's row of the head is the binary logistic head of that column alone."""
    X, Y = digits_ml
    multi = _clf().fit(X, Y)
    for j in range(Y.shape[1]):
        single = _clf().fit(X, Y[:, j])
        w2, b2 = single.module_.head.weight.detach(), single.module_.head.bias.detach()
        torch.testing.assert_close(multi.module_.head.weight[j].detach(), w2[1] - w2[0])
        torch.testing.assert_close(multi.module_.head.bias[j].detach(), b2[1] - b2[0])


def test_sparse_bool_and_list_y_are_the_same_target(digits_ml):
    X, Y = digits_ml
    X, Y = X[:60], Y[:60]
    expected = _clf().fit(X, Y).predict_proba(X)
    for y in (sp.csr_matrix(Y), Y.astype(bool), Y.astype(float), Y.tolist()):
        clf = _clf().fit(X, y)
        assert clf.target_type_ == "multi_label"
        np.testing.assert_allclose(clf.predict_proba(X), expected, atol=1e-6)


def test_one_column_y_stays_single_label(digits_ml):
    X, Y = digits_ml
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = _clf().fit(X[:60], Y[:60, :1])
    assert any("column" in str(w.message).lower() for w in caught)  # DataConversionWarning
    assert clf.target_type_ == "single_label" and clf.predict(X[:5]).ndim == 1


# --------------------------------------------------------------------------- constant labels
def test_constant_label_columns(digits_ml):
    from conftest import make_cnn

    X, Y = digits_ml
    Y = np.column_stack([Y[:, 0], np.zeros(len(Y), int), np.ones(len(Y), int), Y[:, 1]])
    clf = _clf().fit(X, Y)
    proba = clf.predict_proba(X)
    head = clf.module_.head.requires_grad_(False)
    assert float(head.bias[1]) == -CONSTANT_LOGIT and float(head.bias[2]) == CONSTANT_LOGIT
    assert float(head.weight[1:3].abs().max()) == 0.0
    np.testing.assert_allclose(proba[:, 1], 0.0, atol=3e-9)
    np.testing.assert_allclose(proba[:, 2], 1.0, atol=3e-9)
    np.testing.assert_array_equal(clf.predict(X)[:, 1:3], Y[:, 1:3])
    # the other labels are what one-vs-rest (constant predictors for constant labels) gives
    feats = ImageEmbedder(make_cnn(), image_size=16).fit(X).transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OvR warns about the constant labels
        ovr = _ovr_on_features(feats, Y, 1.0)
    np.testing.assert_allclose(proba, ovr.predict_proba(feats), atol=2e-3)
    # a label constant among the weighted samples is constant too (zero weight = absent)
    sw = np.where(Y[:, 0] == 1, 0.0, 1.0)
    weighted = _clf().fit(X, Y, sample_weight=sw)
    assert float(weighted.module_.head.bias.detach()[0]) == -CONSTANT_LOGIT
    # and fine-tuning from such a head stays finite
    ft = _clf(freeze_depth=0, max_epochs=2, lr=1e-3).fit(X, Y)
    assert np.isfinite(ft.predict_proba(X)).all()
    assert all(np.isfinite(row["train_loss"]) for row in ft.history_)


# --------------------------------------------------------------------------- fine-tuning
def test_fine_tuning_records_bce_and_micro_f1(digits_ml):
    X, Y = digits_ml
    clf = _clf(freeze_depth=0, max_epochs=3, lr=1e-3, n_iter_no_change=5).fit(X, Y)
    assert [row["epoch"] for row in clf.history_] == [1, 2, 3]
    for row in clf.history_:
        assert 0.0 <= row["valid_f1"] <= 1.0
        assert np.isfinite(row["valid_loss"]) and np.isfinite(row["train_loss"])
    assert clf.predict_proba(X[:7]).shape == (7, 3)
    assert clf.predict(X[:7]).shape == (7, 3)
    # the kept model is the best epoch's: its valid_loss is the weighted BCE of the final
    # model on the validation rows (one batch of them), its valid_f1 their micro F1
    _, valid_idx = clf._split(MultiLabel().encode(clf, Y, len(Y)), clf._seed())
    best = next(row for row in clf.history_ if row["best"])
    proba = clf.predict_proba(X[valid_idx])
    bce = -(Y[valid_idx] * np.log(proba) + (1 - Y[valid_idx]) * np.log(1 - proba)).mean()
    assert best["valid_loss"] == pytest.approx(bce, rel=1e-4)
    f1 = f1_score(Y[valid_idx], (proba >= 0.5).astype(int), average="micro")
    assert best["valid_f1"] == pytest.approx(f1)


def test_loss_and_metric_definitions():
    target = MultiLabel()
    rng = np.random.RandomState(0)
    logits = torch.from_numpy(rng.randn(40, 4)).float()
    targets = torch.from_numpy(rng.randint(0, 2, (40, 4))).float()
    weights = torch.from_numpy(rng.uniform(0, 2, 40)).float()
    p = torch.sigmoid(logits.double())
    per_sample = -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean(dim=1)
    expected = float((per_sample * weights).sum() / weights.sum())
    assert float(target.loss(logits, targets, weights)) == pytest.approx(expected, rel=1e-5)
    pred = (p >= 0.5).numpy().astype(int)
    f1 = f1_score(targets.numpy(), pred, average="micro")
    assert target.score(logits, targets) == pytest.approx(f1)
    # nothing to find and nothing predicted: perfect (zero_division=1.0)
    zeros = torch.zeros(5, 3)
    assert target.score(-torch.ones(5, 3), zeros) == 1.0
    assert target.score(torch.ones(5, 3), zeros) == 0.0


# --------------------------------------------------------------------------- text
def test_text_classifier_multi_label(tiny_bert_dir, texts_ml):
    X, Y = texts_ml
    train, test = slice(0, 80), slice(80, None)
    clf = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X[train], Y[train])
    assert clf.target_type_ == "multi_label"
    feats = TextEmbedder(tiny_bert_dir).fit(X).transform(X)
    ovr = _ovr_on_features(feats[train], Y[train], 1.0)
    expected = ovr.predict_proba(feats[test])
    np.testing.assert_allclose(clf.predict_proba(X[test]), expected, atol=2e-3)
    pred = clf.predict(X[test])
    assert pred.shape == (40, 3)
    for average in ("micro", "macro"):
        diff = f1_score(Y[test], pred, average=average) - f1_score(
            Y[test], ovr.predict(feats[test]), average=average
        )
        assert abs(diff) <= 0.005
    ft = PretrainedTextClassifier(
        tiny_bert_dir,
        freeze_depth=-1,
        max_epochs=2,
        lr=1e-3,
        random_state=0,
        early_stopping=True,
    ).fit(X, Y)
    assert "valid_f1" in ft.history_[-1] and ft.predict(X[:3]).shape == (3, 3)


# --------------------------------------------------------------------------- search
def test_grid_search_one_forward_per_sample_and_one_solve_per_label(digits_ml):
    X, Y = digits_ml
    clear_cache()
    with config_context(cache=True, cache_dir=""):
        grid = {"C": [0.1, 1.0], "lr": [1e-4, 1e-3]}
        search = GridSearchCV(_clf(), grid, cv=3, scoring="f1_micro").fit(X, Y)
        info = cache_info()
    clear_cache()
    assert info["backbone_forwards"] == len(X)
    # frozen: lr never reaches the head; 3 labels x (2 C x 3 folds + the refit)
    assert info["head_solves"] == 3 * (2 * 3 + 1)
    assert info["head_hits"] == 3 * 2 * 3
    assert search.best_params_["C"] in (0.1, 1.0)
    assert search.predict(X[:4]).shape == (4, 3)


# --------------------------------------------------------------------------- bad input
def test_bad_values_name_their_index(digits_ml):
    X, Y = digits_ml
    X, Y = X[:20], Y[:20].copy()
    Y[3, 1] = 2
    with pytest.raises(ValueError, match=r"y\[3, 1\] is 2\b.*0 and 1"):
        _clf().fit(X, Y)
    Yf = Y.astype(float)
    Yf[3, 1], Yf[5, 2] = 1, np.nan
    with pytest.raises(ValueError, match=r"y\[5, 2\] is nan"):
        _clf().fit(X, Yf)
    Ys = np.array([["a", "b"]] * 20)
    with pytest.raises(ValueError, match=r"y\[0, 0\] is 'a'"):
        _clf().fit(X, Ys)
    with pytest.raises(ValueError, match="X has 20 samples but y has 19 rows"):
        _clf().fit(X, _indicators(np.arange(19)))
    with pytest.raises(ValueError, match="class_weight"):
        _clf(class_weight="balanced").fit(X, _indicators(np.arange(20)))
    with pytest.raises(ValueError, match="1-D"):  # 3-D y: neither target reads it
        _clf().fit(X, np.zeros((20, 2, 2), int))


# --------------------------------------------------------------------------- persistence
def test_pickle_and_joblib_round_trip(digits_ml, tmp_path):
    X, Y = digits_ml
    clf = _clf().fit(X[:80], Y[:80])
    expected = clf.predict_proba(X[80:])
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X[80:]), expected)
    joblib.dump(clf, tmp_path / "m.joblib")
    loaded = joblib.load(tmp_path / "m.joblib")
    assert loaded.target_type_ == "multi_label"
    np.testing.assert_array_equal(loaded.predict(X[80:]), clf.predict(X[80:]))


def test_safe_format_round_trip(tiny_bert_dir, texts_ml, tmp_path):
    X, Y = texts_ml
    clf = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X, Y)
    sktransfer.save(clf, tmp_path / "m.skt")
    loaded = sktransfer.load(tmp_path / "m.skt")
    assert loaded.target_type_ == "multi_label" and loaded.n_outputs_ == 3
    np.testing.assert_array_equal(loaded.classes_, np.arange(3))
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
