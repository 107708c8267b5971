"""Baselines without transfer learning, on the seeded splits that the sktransfer benchmarks use.

* Rotten Tomatoes: TF-IDF (scikit-learn defaults) + logistic regression, seeded stratified 80/20.
* digits and Fashion-MNIST: logistic regression on raw pixels scaled to [0, 1]
  (Fashion-MNIST quick: a stratified 10k train / 2k test subsample; full: the official 60k / 10k).

Other benchmark modules import the functions below so that their numbers are comparable, e.g.
``from benchmarks.bench_baselines import tfidf_logreg_accuracy, fashion_mnist_data``.
The goals are sanity floors: a baseline below its floor means the data or the split is wrong.
BLAS runs single-threaded here (``n_threads=1``): same numbers on every machine, and far faster
on a busy 2-core machine than 2 threads that spin waiting for each other.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from benchmarks import datasets
from benchmarks._harness import Result, limit_threads

NAME = "baselines"

QUICK_N_TRAIN = 10_000
QUICK_N_TEST = 2_000
RANDOM_STATE = 0
MAX_ITER = 1000


# ----------------------------------------------------------------------------------- shared splits
def rotten_tomatoes_data(random_state: int = RANDOM_STATE):
    """``(texts_train, y_train, texts_test, y_test)``: seeded stratified 80/20, all 12.7k."""
    return datasets.rotten_tomatoes_split(test_size=0.2, random_state=random_state)


def digits_data(random_state: int = RANDOM_STATE):
    """``(X_train, y_train, X_test, y_test)``: digits uint8 (n, 8, 8), seeded stratified 80/20."""
    return datasets.digits_split(test_size=0.2, random_state=random_state)


def fashion_mnist_data(quick: bool, random_state: int = RANDOM_STATE):
    """``(X_train, y_train, X_test, y_test)``: stratified 10k/2k if ``quick``, else 60k/10k."""
    if quick:
        return datasets.load_fashion_mnist(QUICK_N_TRAIN, QUICK_N_TEST, random_state=random_state)
    return datasets.load_fashion_mnist(random_state=random_state)


# --------------------------------------------------------------------------------------- baselines
def tfidf_logreg_accuracy(
    texts_train=None,
    y_train=None,
    texts_test=None,
    y_test=None,
    *,
    random_state=RANDOM_STATE,
    n_threads=1,
):
    """Test accuracy of ``TfidfVectorizer() + LogisticRegression`` (default: Rotten Tomatoes).

    BLAS runs on ``n_threads`` (default 1; None leaves the pools alone), see ``limit_threads``.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if texts_train is None:
        texts_train, y_train, texts_test, y_test = rotten_tomatoes_data(random_state)
    model = make_pipeline(
        TfidfVectorizer(), LogisticRegression(max_iter=MAX_ITER, random_state=random_state)
    )
    with limit_threads(n_threads):
        model.fit(texts_train, y_train)
        return float(model.score(texts_test, y_test))


def _pixels(X) -> np.ndarray:
    X = np.asarray(X)
    return X.reshape(len(X), -1).astype(np.float32) / np.float32(255.0)


def pixel_logreg_accuracy(
    X_train, y_train, X_test, y_test, *, max_iter=MAX_ITER, random_state=RANDOM_STATE, n_threads=1
):
    """Test accuracy of ``LogisticRegression`` (lbfgs) on flattened images scaled to [0, 1].

    BLAS runs on ``n_threads`` (default 1): the result is then the same on every machine, and on a
    busy 2-core machine one thread was 1.5-60x faster than two (None: leave the thread pools alone).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=max_iter, random_state=random_state)
    with warnings.catch_warnings(), limit_threads(n_threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(_pixels(X_train), y_train)
        return float(model.score(_pixels(X_test), y_test))


def digits_pixel_logreg_accuracy(random_state: int = RANDOM_STATE) -> float:
    return pixel_logreg_accuracy(*digits_data(random_state), random_state=random_state)


def fashion_mnist_pixel_logreg_accuracy(quick: bool, random_state: int = RANDOM_STATE) -> float:
    return pixel_logreg_accuracy(
        *fashion_mnist_data(quick, random_state), random_state=random_state
    )


# ---------------------------------------------------------------------------------------------- run
def _timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def run(quick: bool) -> list[Result]:
    rows: list[Result] = []

    def add(dataset, model, goal, data, fn):
        acc, seconds = _timed(fn, *data)
        size = f"n_train={len(data[1])}, n_test={len(data[3])}"
        rows.append(
            Result(
                NAME, f"{dataset}/{model}/accuracy", acc, "", goal, notes=f"{size}; sanity floor"
            )
        )
        rows.append(Result(NAME, f"{dataset}/{model}/fit_predict_time", seconds, "s", notes=size))

    add("rotten_tomatoes", "tfidf_logreg", ">= 0.74", rotten_tomatoes_data(), tfidf_logreg_accuracy)
    add("digits", "pixel_logreg", ">= 0.93", digits_data(), pixel_logreg_accuracy)
    add(
        "fashion_mnist", "pixel_logreg", ">= 0.80", fashion_mnist_data(quick), pixel_logreg_accuracy
    )
    return rows
