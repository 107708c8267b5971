"""Issue 4 / 6: what each transfer workflow buys in accuracy, next to a model without transfer.

The three workflows of ``freeze_depth``, at the library defaults (only ``max_epochs``, the text
``max_length`` and the image ``image_size`` are set, to fit the machine):

* ``frozen``  - "feature extraction": ``freeze_depth="all"`` (frozen backbone + a logistic head);
* ``partial`` - "freeze lower layers": ``freeze_depth=-2`` (the last two blocks and the head train);
* ``full``    - "full fine-tuning": ``freeze_depth=0``.

Data: Rotten Tomatoes with the packaged all-MiniLM-L6-v2, Fashion-MNIST with the packaged
EfficientNet-Lite0, both seeded stratified subsamples of the splits of ``bench_baselines`` (the
same functions), with the baselines of ``bench_baselines`` beside them: TF-IDF + logistic
regression and logistic regression on raw pixels, trained on the same subsample, and on the whole
training split (``*_all_train``; the test subsample is the same).

Quick mode is a small version that fits a 10-minute run on 2 CPU cores (full fine-tuning of MiniLM
is ~12 texts/s there); ``--full`` uses larger subsamples and adds ``l2sp_alpha``,
``layer_decay``, ``lr="auto"`` and ``augment`` variants. The goal (issue 4): full fine-tuning of
the text model beats the frozen probe by >= 5 accuracy points.

Besides the rows, the payload carries ``histories``: ``history_`` (per-epoch train loss, valid
loss, valid accuracy) of every fine-tuned configuration, drawn by ``benchmarks/plots.py``.
"""

from __future__ import annotations

import time

from benchmarks import datasets
from benchmarks._harness import Result, ResultList
from benchmarks.bench_baselines import (
    fashion_mnist_data,
    pixel_logreg_accuracy,
    rotten_tomatoes_data,
    tfidf_logreg_accuracy,
)

NAME = "accuracy"
RANDOM_STATE = 0

#: config label -> (workflow name, freeze_depth); the three workflows in the order they are plotted
WORKFLOWS = {
    "frozen": ("feature extraction", "all"),
    "partial": ("freeze lower layers", -2),
    "full": ("full fine-tuning", 0),
}
#: (n_train, n_test, max_epochs, max_length)
TEXT_SIZES = {True: (320, 320, 2, 64), False: (10_000, 2_500, 3, 64)}
#: (n_train, n_test, max_epochs, image_size)
IMAGE_SIZES = {True: (400, 400, 3, 64), False: (2_000, 2_000, 5, 96)}
GAIN_GOAL = {("rotten_tomatoes", "full"): ">= 5"}


def _subsample(X, y, n, seed):
    """Seeded stratified subsample of ``(X, y)`` (``X`` a list or an array)."""
    idx = datasets.stratified_indices(y, min(n, len(y)), seed)
    if isinstance(X, list):
        return [X[i] for i in idx], y[idx]
    return X[idx], y[idx]


def _configs(extra):
    configs = [(label, {"freeze_depth": depth}) for label, (_, depth) in WORKFLOWS.items()]
    return configs + list(extra)


def _workflow_note(label, params):
    if label in WORKFLOWS:
        workflow, depth = WORKFLOWS[label]
        return f"{workflow} (freeze_depth={depth!r})"
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


def _accuracy(make, data, configs, dataset, note, rows, histories):
    X_tr, y_tr, X_te, y_te = data
    frozen = None
    for label, params in configs:
        start = time.perf_counter()
        clf = make(**params).fit(X_tr, y_tr)
        acc = float(clf.score(X_te, y_te))
        seconds = time.perf_counter() - start
        frozen = acc if label == "frozen" else frozen
        tuned = label != "frozen"
        extra = f"; lr_={clf.lr_:.3g}" if tuned and getattr(clf, "lr_", None) else ""
        what = _workflow_note(label, params)
        rows.append(
            Result(NAME, f"{dataset}/{label}/accuracy", acc, "", notes=f"{what}; {note}{extra}")
        )
        timing = (
            "fit + score wall time; the frozen features it extracts are cached and reused by the "
            "next configs (probe head)"
            if not tuned
            else "fit + score wall time"
        )
        rows.append(Result(NAME, f"{dataset}/{label}/fit_score_time", seconds, "s", notes=timing))
        if label != "frozen" and frozen is not None:
            goal = GAIN_GOAL.get((dataset, label))
            gain = 100 * (acc - frozen)
            rows.append(Result(NAME, f"{dataset}/{label}/gain_over_frozen", gain, "pt", goal))
        if label != "frozen":
            histories[f"{dataset}/{label}"] = {
                "workflow": what,
                "params": {k: v for k, v in params.items()},
                "history": list(clf.history_),
            }


def _baselines(dataset, model, fn, data, all_train, note, rows):
    X_tr, y_tr, X_te, y_te = data
    acc = fn(X_tr, y_tr, X_te, y_te)
    rows.append(
        Result(NAME, f"{dataset}/baseline_{model}/accuracy", acc, "",
               notes=f"no transfer, the same {len(y_tr)} training samples; {note}")
    )  # fmt: skip
    acc_all = fn(all_train[0], all_train[1], X_te, y_te)
    rows.append(
        Result(NAME, f"{dataset}/baseline_{model}_all_train/accuracy", acc_all, "",
               notes=f"no transfer, all {len(all_train[1])} training samples, same test samples")
    )  # fmt: skip


def text_accuracy(quick, rows, histories):
    from sktransfer import PretrainedTextClassifier

    n_train, n_test, epochs, max_length = TEXT_SIZES[quick]
    t_tr, y_tr, t_te, y_te = rotten_tomatoes_data(RANDOM_STATE)
    data = (
        *_subsample(t_tr, y_tr, n_train, RANDOM_STATE),
        *_subsample(t_te, y_te, n_test, RANDOM_STATE + 1),
    )
    note = (
        f"all-MiniLM-L6-v2, n_train={len(data[1])}, n_test={len(data[3])}, "
        f"max_length={max_length}, max_epochs={epochs}"
    )
    _baselines(
        "rotten_tomatoes", "tfidf_logreg", tfidf_logreg_accuracy, data, (t_tr, y_tr), note, rows
    )

    def make(**kw):
        return PretrainedTextClassifier(
            max_length=max_length, max_epochs=epochs, random_state=RANDOM_STATE, **kw
        )

    extra = []
    if not quick:
        extra = [
            ("partial_l2sp", {"freeze_depth": -2, "l2sp_alpha": 0.01}),
            ("partial_lr_auto", {"freeze_depth": -2, "lr": "auto"}),
            ("full_layer_decay", {"freeze_depth": 0, "layer_decay": 0.8, "lr": 1e-4}),
        ]
    _accuracy(make, data, _configs(extra), "rotten_tomatoes", note, rows, histories)


def image_accuracy(quick, rows, histories):
    from sktransfer import PretrainedImageClassifier

    n_train, n_test, epochs, size = IMAGE_SIZES[quick]
    X_tr, y_tr, X_te, y_te = fashion_mnist_data(quick, RANDOM_STATE)
    data = (
        *_subsample(X_tr, y_tr, n_train, RANDOM_STATE),
        *_subsample(X_te, y_te, n_test, RANDOM_STATE + 1),
    )
    note = (
        f"efficientnet_lite0 {size}px, n_train={len(data[1])}, n_test={len(data[3])}, "
        f"max_epochs={epochs}"
    )
    _baselines(
        "fashion_mnist", "pixel_logreg", pixel_logreg_accuracy, data, (X_tr, y_tr), note, rows
    )

    def make(**kw):
        return PretrainedImageClassifier(
            image_size=size, max_epochs=epochs, random_state=RANDOM_STATE, **kw
        )

    extra = []
    if not quick:
        extra = [
            ("partial_augment_light", {"freeze_depth": -2, "augment": "light"}),
            ("partial_lr_auto", {"freeze_depth": -2, "lr": "auto"}),
        ]
    _accuracy(make, data, _configs(extra), "fashion_mnist", note, rows, histories)


def run(quick: bool) -> ResultList:
    rows = ResultList()
    histories: dict = {}
    rows.extra["histories"] = histories
    text_accuracy(quick, rows, histories)
    image_accuracy(quick, rows, histories)
    return rows
