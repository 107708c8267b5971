"""The exact frozen-mode heads on extracted features, memoised: multinomial logistic
regression (classifiers, :func:`fit_linear_head`) and ridge regression (regressors,
:func:`fit_ridge_head`).

Frozen mode (and the head warm start before fine-tuning, ``head_init="probe"``) fits the
head to convergence with SciPy's L-BFGS-B on the same objective and stopping rule as
scikit-learn's ``LogisticRegression(C=C, solver="lbfgs")``: L2 on the weights, not the
intercept; one weight vector for two classes; ``gtol=tol`` on the mean loss.

Solutions are memoised by content: the digest of the features, labels and weights plus
``(n_classes, C, tol, max_iter)``. In a GridSearchCV over a frozen model, every grid point
that differs only in parameters the head never sees (``lr``, ``max_epochs``, ...) asks for
the same solve on the same fold, and gets the stored one. :func:`sktransfer.clear_cache`
empties the memo; :func:`sktransfer.cache_info` counts ``head_solves`` and ``head_hits``.

Two exact reparametrisations make each solve cheaper without changing the problem
(:func:`_coordinates`): the features are centred (the unpenalised intercept absorbs
the shift), which halves the L-BFGS iterations on post-ReLU features with a large mean,
and with at most half as many distinct samples as features (a CV fold of a few hundred
images against 1280 features) the weights are sought in the span of the samples, with
n instead of d unknowns per class. The optimum is the same; only the ``gtol`` test
bounds the largest gradient entry in these coordinates, so the stopping point can
differ from scikit-learn's by the tolerance.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from sktransfer.cache import register_memo
from sktransfer.cache.lru import LRU

SINGLE_THREAD_FLOPS = 5e7  # n * d * k up to which the solver uses one BLAS thread
QR_SINGLE_THREAD_FLOPS = 1e9  # n * n * d up to which the QR uses one BLAS thread
MEMO_SIZE = 64  # solutions kept (each k * (d + 1) floats: ~100 KB for 10 classes x 1280)
BASIS_SIZE = 8  # row-space bases kept, one per CV fold (each (n + d) * n floats)

_MEMO = LRU(MEMO_SIZE)
_BASES = LRU(BASIS_SIZE)
_LOCK = threading.Lock()
STATS = {"head_solves": 0, "head_hits": 0}


def clear_memo() -> None:
    """Forget every stored solution and reset the counters."""
    with _LOCK:
        _MEMO.clear()
        _BASES.clear()
        for k in STATS:
            STATS[k] = 0


register_memo(clear_memo, lambda: dict(STATS))  # clear_cache empties it, cache_info counts


def _digest(*parts, params=()) -> bytes:
    h = hashlib.sha256()  # SHA-NI on x86-64: ~2x BLAKE2b's speed on megabytes of features
    for a in parts:
        if isinstance(a, bytes):  # an earlier digest
            h.update(a)
            continue
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).data)
    h.update(repr(params).encode())
    return h.digest()


def _coordinates(X, w, xw_key):
    """``(mu, Z, Q)``: the solve runs on ``Z`` and maps back by ``W = A @ Q.T``.

    * Centring on the weighted mean ``mu``: ``X @ W.T + b == (X - mu) @ W.T + (b + W @ mu)``
      and the intercept is not penalised, so the problem on ``X - mu`` has the same
      optimal ``W``.
    * Row space, when the distinct positively weighted rows number at most d / 2: every
      gradient ``resid.T @ (X - mu) + W / C`` lies in the span of those rows minus
      ``mu``, so the optimum and every L-BFGS iterate from 0 are ``W = A @ Q.T`` for an
      orthonormal basis ``Q`` (d x u) of that span, with ``||W|| = ||A||``: u unknowns
      per class, not d. Otherwise ``Q`` is None and ``Z = X - mu``.

    Everything here depends only on the set of distinct rows that carry weight (sorted)
    and on ``mu``: repeating a sample and doubling its weight give the same coordinates,
    as scikit-learn's sample-weight equivalence expects. Row-space coordinates are kept
    per (features, weights) in ``_BASES``, so the C values of a grid reuse one fold's QR.
    """
    with _LOCK:
        hit = _BASES.get(xw_key)
        if hit is not None:
            return hit
    d = X.shape[1]
    mu = (w @ X) / w.sum()
    Z, Q = X - mu, None
    weighted = X[w > 0]
    if 2 * _n_distinct_at_least(weighted) <= d:
        rows = np.unique(weighted, axis=0)  # sorted: the same for repeated or weighted samples
        u = len(rows)
        if 2 * u <= d:
            with threadpool_limits(limits=1 if u * u * d <= QR_SINGLE_THREAD_FLOPS else None):
                Q = np.linalg.qr((rows - mu).T)[0]
                Z = Z @ Q
    if Q is None:  # centring alone: O(n d) to redo, not worth holding a copy of X
        return mu, Z, Q
    with _LOCK:
        _BASES.put(xw_key, (mu, Z, Q))
    return mu, Z, Q


def _n_distinct_at_least(X) -> int:
    """A lower bound on the number of distinct rows, in O(n d): distinct projections on a
    fixed direction are distinct rows (equal projections of different rows only undercount)."""
    direction = np.random.default_rng(0).standard_normal(X.shape[1])
    return len(np.unique(X @ direction))


def linear_head(W, b) -> nn.Linear:
    """``nn.Linear`` holding ``W`` (k, d) and ``b`` (k,) as float32. Built without its
    random initialisation: that would draw from torch's global generator, the caller's."""
    head = torch.nn.utils.skip_init(nn.Linear, W.shape[1], W.shape[0])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(W).float())
        head.bias.copy_(torch.from_numpy(b).float())
    return head


def fit_linear_head(
    features, labels, n_classes, sample_weight=None, C=1.0, max_iter=1000, tol=1e-4
):  # fmt: skip
    """Multinomial logistic regression by L-BFGS; returns ``(nn.Linear, info)``.

    Minimises ``sum_i w_i CE_i / sum(w) + ||W||^2 / (2 C sum(w))`` (scikit-learn's
    ``LogisticRegression`` objective and stopping rule: ``gtol=tol``, ``ftol=64 eps``)
    in float64, in the coordinates of :func:`_coordinates`. ``info``: ``train_loss``,
    ``n_iter``, ``converged``.
    """
    X = np.asarray(features)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n, d = X.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    xw_key = _digest(X, w)  # of the features as given (float32 features: half the bytes)
    key = _digest(xw_key, y, params=(n_classes, float(C), float(tol), int(max_iter)))

    def solve():
        mu, Z, Q = _coordinates(X.astype(np.float64, copy=False), w, xw_key)
        W, b, info = _solve(Z, y, w, n_classes, C, max_iter, tol)
        if Q is not None:
            W = W @ Q.T
        return W, b - W @ mu, info

    W, b, info = _memoised(key, solve)
    return linear_head(W, b), info


def _solve(X, y, w, n_classes, C, max_iter, tol):
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    n, d = X.shape
    w_sum = w.sum()
    k = 1 if n_classes == 2 else n_classes
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def loss_grad(theta):
        W = theta[: k * d].reshape(k, d)
        b = theta[k * d :]
        z = X @ W.T + b
        if k == 1:  # binary: logistic loss on z, labels in {0, 1}
            z = z[:, 0]
            losses = np.logaddexp(0.0, z) - y * z
            resid = (1.0 / (1.0 + np.exp(-z)) - y)[:, None]
        else:
            logp = log_softmax(z, axis=1)
            losses = -(onehot * logp).sum(axis=1)
            resid = np.exp(logp) - onehot
        resid = resid * (w / w_sum)[:, None]
        loss = (w * losses).sum() / w_sum + (W**2).sum() / (2.0 * C * w_sum)
        grad_W = resid.T @ X + W / (C * w_sum)
        return loss, np.concatenate([grad_W.ravel(), resid.sum(axis=0)])

    # small products run faster on one BLAS thread, and many times faster when the
    # cores are shared (idle BLAS threads spin); large ones keep the user's setting
    limit = 1 if n * d * k <= SINGLE_THREAD_FLOPS else None
    with threadpool_limits(limits=limit, user_api="blas"):
        res = minimize(
            loss_grad,
            np.zeros(k * d + k),
            jac=True,
            method="L-BFGS-B",
            options={
                "maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps,
            },
        )  # fmt: skip
    W, b = res.x[: k * d].reshape(k, d), res.x[k * d :]
    if k == 1:  # softmax over [-z/2, z/2] == sigmoid(z)
        W, b = np.concatenate([-W / 2, W / 2]), np.concatenate([-b / 2, b / 2])
    info = {"train_loss": float(res.fun), "n_iter": int(res.nit), "converged": bool(res.success)}
    return W, b, info


def fit_ridge_head(features, targets, sample_weight=None, alpha=1.0):
    """Ridge regression solved exactly in float64; returns ``(nn.Linear, info)``.

    Minimises ``sum_i w_i ||y_i - B x_i - c||^2 + alpha ||B||^2`` (the objective of
    ``sklearn.linear_model.Ridge(alpha, fit_intercept=True)`` with ``sample_weight``):
    ``X`` and ``Y`` are centred on their weighted means and ``B`` solves
    ``(Xc' W Xc + alpha I) B' = Xc' W Yc``; the intercept is ``c = y_mean - B x_mean``.
    With fewer weighted samples than features the dual (kernel) form solves the
    ``n x n`` system ``(K + alpha I) A = sqrt(W) Yc``, ``B' = Xs' A`` instead (the same
    solution, exactly). ``alpha=0`` is the minimum-norm least-squares solution.

    ``targets`` of shape ``(n, k)``: the head has ``k`` outputs. The objective is
    separable per output and scaling an output scales both of its terms alike, so
    solving on standardised targets gives the standardised image of the solution on
    the original ones. Memoised like :func:`fit_linear_head` (same memo and counters),
    keyed by the digest of the features, weights and targets plus ``alpha``.
    ``info``: ``train_loss`` (the weighted mean over samples of the mean squared error
    over outputs, the fine-tuning loss's definition), ``n_iter`` (1).
    """
    X = np.asarray(features)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    Y = np.asarray(targets, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    n, d = X.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    xw_key = _digest(X, w)
    key = _digest(xw_key, Y, params=("ridge", float(alpha)))
    B, b, info = _memoised(key, lambda: _solve_ridge(X.astype(np.float64, copy=False), Y, w, alpha))
    return linear_head(B, b), info


def _solve_ridge(X, Y, w, alpha):
    """``(B, b, info)`` of the weighted ridge problem (see :func:`fit_ridge_head`)."""
    from scipy import linalg

    d = X.shape[1]
    w_sum = w.sum()
    x_mean, y_mean = (w @ X) / w_sum, (w @ Y) / w_sum
    keep = w > 0  # zero-weight rows add nothing to either side
    root = np.sqrt(w[keep])[:, None]
    Xs, Ys = (X[keep] - x_mean) * root, (Y[keep] - y_mean) * root
    m = len(Xs)
    with threadpool_limits(limits=1 if m * d * min(m, d) <= QR_SINGLE_THREAD_FLOPS else None):
        if alpha == 0:
            B = linalg.lstsq(Xs, Ys, lapack_driver="gelsd")[0].T
        elif m < d:  # dual: B' = Xs' (Xs Xs' + alpha I)^-1 Ys
            K = Xs @ Xs.T
            K[np.diag_indices_from(K)] += alpha
            B = (Xs.T @ linalg.solve(K, Ys, assume_a="pos")).T
        else:
            G = Xs.T @ Xs
            G[np.diag_indices_from(G)] += alpha
            B = linalg.solve(G, Xs.T @ Ys, assume_a="pos").T
    b = y_mean - B @ x_mean
    resid = Y - X @ B.T - b
    info = {"train_loss": float(w @ (resid**2).mean(axis=1) / w_sum), "n_iter": 1}
    return B, b, info


def _memoised(key, solve):
    """``solve()``'s ``(W, b, info)``, from the memo when this problem was solved before;
    counts ``head_hits`` / ``head_solves``. ``info`` is a fresh copy each time."""
    with _LOCK:
        hit = _MEMO.get(key)
        if hit is not None:
            STATS["head_hits"] += 1
    if hit is None:
        hit = solve()
        with _LOCK:
            STATS["head_solves"] += 1
            _MEMO.put(key, hit)
    W, b, info = hit
    return W, b, dict(info)
