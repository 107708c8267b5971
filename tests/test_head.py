"""The probe-head solver: scikit-learn's objective, solved in cheaper exact coordinates."""

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.linear_model import LogisticRegression

from sktransfer.training import heads as head


def _problem(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    y = np.arange(n) % k
    X = np.abs(centers[y] + 2.0 * rng.standard_normal((n, d))) + 3.0  # ReLU-like, large mean
    return X, y


def _objective(X, y, W, b, C):
    """scikit-learn's: mean cross-entropy + ||coef||^2 / (2 C n), one coef vector if binary."""
    logp = log_softmax(X @ W.T + b, axis=1)
    coef = W[1] - W[0] if len(W) == 2 else W
    return -logp[np.arange(len(y)), y].mean() + (coef**2).sum() / (2 * C * len(y))


def _fit(X, y, k, **kw):
    h, info = head.fit_linear_head(X, y, k, **kw)
    return h.weight.detach().double().numpy(), h.bias.detach().double().numpy(), info


@pytest.fixture(autouse=True)
def _fresh_memo():
    head.clear_memo()
    yield
    head.clear_memo()


@pytest.mark.parametrize("n, d, k", [(40, 200, 3), (40, 200, 2), (300, 30, 3)])
def test_reaches_logistic_regression_optimum(n, d, k):
    X, y = _problem(n, d, k)
    C = 0.5
    W, b, info = _fit(X, y, k, C=C)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    W_ref, b_ref = ref.coef_, ref.intercept_
    if k == 2:  # scikit-learn's one vector as a softmax pair
        W_ref, b_ref = np.vstack([0 * W_ref, W_ref]), np.r_[0.0, b_ref]
    best = _objective(X, y, W_ref, b_ref, C)
    assert info["converged"]
    assert info["train_loss"] == pytest.approx(_objective(X, y, W, b, C), rel=1e-5)
    assert _objective(X, y, W, b, C) - best < 1e-4 * best
    np.testing.assert_array_equal((X @ W.T + b).argmax(1), (X @ W_ref.T + b_ref).argmax(1))


def test_wide_features_solve_in_the_row_space():
    X, y = _problem(40, 200, 3)
    _fit(X, y, 3)
    ((mu, Z, Q),) = head._BASES.data.values()
    assert Q.shape == (200, 40) and Z.shape == (40, 40)
    np.testing.assert_allclose(Q.T @ Q, np.eye(40), atol=1e-10)
    np.testing.assert_allclose(mu, X.mean(axis=0))
    X_tall, y_tall = _problem(300, 30, 3)
    head.clear_memo()
    _fit(X_tall, y_tall, 3)
    assert head._coordinates(X_tall, np.ones(300), b"k")[2] is None  # n > d / 2: centred only
    assert not head._BASES  # (and no copy of the features kept)
    # many duplicates: 300 rows but only 10 distinct ones, 2 * 10 <= 30
    X_dup = np.repeat(X_tall[:10], 30, axis=0)
    mu, Z, Q = head._coordinates(X_dup, np.ones(300), b"dup")
    assert Q.shape == (30, 10) and Z.shape == (300, 10)


def test_shifting_every_feature_only_moves_the_intercept():
    # centring makes the solve see identical coordinates: same weights, intercept - W @ shift
    X, y = _problem(40, 200, 3)
    shift = np.linspace(-5.0, 50.0, X.shape[1])
    W, b, _ = _fit(X, y, 3)
    W2, b2, _ = _fit(X + shift, y, 3)
    np.testing.assert_allclose(W2, W, atol=1e-6)
    np.testing.assert_allclose(b2, b - W @ shift, rtol=1e-4, atol=1e-4)


def test_a_repeated_row_equals_a_doubled_weight():
    X, y = _problem(40, 200, 3)
    w = np.ones(40)
    w[:5] = 2.0
    w[5] = 0.0  # weight 0 == absent
    keep = np.r_[np.arange(40), np.arange(5)]
    keep = keep[keep != 5]
    order = np.random.default_rng(1).permutation(len(keep))
    W, b, _ = _fit(X, y, 3, sample_weight=w)
    W2, b2, _ = _fit(X[keep][order], y[keep][order], 3)
    np.testing.assert_allclose(W2, W, atol=1e-7)
    np.testing.assert_allclose(b2, b, atol=1e-7)


def test_coordinates_are_reused_across_C(monkeypatch):
    qr, calls = np.linalg.qr, []
    monkeypatch.setattr(np.linalg, "qr", lambda a: calls.append(a.shape) or qr(a))
    X, y = _problem(40, 200, 3)
    for C in (0.1, 1.0, 10.0):
        _fit(X, y, 3, C=C)
    assert calls == [(200, 40)]  # one factorisation for the three solves
    assert len(head._BASES) == 1 and head.STATS["head_solves"] == 3
