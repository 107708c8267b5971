"""Issue 25, item 4: which transfer strategy wins, by how much, at which label count.

For each set, label count ``n`` (per class; regression: ``n`` x 10 samples) and draw (seeded
stratified subsample of the training pool; the test set is fixed per set), the methods are
fitted on the same samples and scored on the same test set; every cell is mean ± std over
the draws:

* ``frozen``: the frozen probe (``freeze_depth="all"``; regressors: ``alpha`` by 3-fold
  CV over 1e-1..1e4, as a user would pick it, since a fixed ``alpha=1`` interpolates 1,280
  image features);
* ``partial`` / ``full``: the default fine-tune, ``freeze_depth=-2`` / ``0``, no other argument;
* ``reg``: ``freeze_depth=-2`` with the regulariser named in :data:`BEST_REGULARIZER`;
* text classification only: ``contrastive`` (``objective="contrastive"``, no other argument)
  and ``setfit`` (the ``setfit`` package, when installed; see ``bench_fewshot``);
* ``partial_es`` / ``full_es`` / ``reg_es``: the same with ``early_stopping=True`` (the
  default before ``"auto"``, which holds out no validation split below 1,000 samples);
* ``baseline``: no transfer: TF-IDF + logistic regression (texts; char TF-IDF + ridge for
  Whissell, one-vs-rest for debtags), standardised pixels + logistic regression (Fashion-MNIST),
  LBP/intensity texture descriptors + logistic regression (scikit-image textures).

Images at 64 px (EfficientNet-Lite0), texts at ``max_length=64`` (all-MiniLM-L6-v2): only these
and ``random_state`` are set. Rows: ``{set}/n{n}/{method}`` (mean), ``..._std``, and
``{set}/n{n}/best_minus_frozen_pt`` (notes: the winning method), ``{set}/n{n}/{partial,full}
_minus_frozen_pt``.

``--quick`` (what fit ~40 minutes on 2 shared, loaded cores): :data:`QUICK`; ``--full``: every
set, n in (8, 32, 128), 3 draws, every method (hours on this machine). The payload's ``grid``
records exactly which cells ran.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from benchmarks import datasets
from benchmarks._harness import Result, ResultList

NAME = "strategies"
IMAGE_SIZE, MAX_LENGTH = 64, 64
#: the regulariser measured as "best": DELTA, the only one not below plain fine-tuning on both
#: sets of bench_regularizers (+0.07 pt Fashion-MNIST, +0.33 pt Rotten Tomatoes; all within noise)
BEST_REGULARIZER = "delta"
QUICK = {
    "sets": ("fashion_mnist", "rotten_tomatoes"),
    "ns": (8, 32),
    "draws": (0, 1, 2),
    "methods": ("frozen", "partial", "full", "baseline"),
    # full fine-tuning of EfficientNet-Lite0: ~20 s per fit at 32 per class on the 2-core
    # machine alone (10 epochs of 320 images at 64 px), minutes when it is shared; the quick
    # grid leaves it out (--full and the cell runs have it)
    "skip": (("fashion_mnist", "full"),),
}
FULL = {
    "sets": (
        "fashion_mnist",
        "textures",
        "rotated_fmnist",
        "rotten_tomatoes",
        "speeches",
        "whissell",
        "debtags",
    ),  # fmt: skip
    "ns": (8, 32, 128),
    "draws": (0, 1, 2),
    "methods": ("frozen", "partial", "full", "reg", "contrastive", "setfit", "baseline"),
    "skip": (),
}
#: the fine-tunes with a validation split at any n (``early_stopping=True``, the old default)
ES_METHODS = ("partial_es", "full_es", "reg_es")
TEXT_SETS = {"rotten_tomatoes", "speeches", "whissell", "debtags"}
N_TEST = 400


# ------------------------------------------------------------------------------------- the sets
def _pool(name):
    """``(X_pool, y_pool, X_test, y_test, task)``; task: "single" | "multi" | "regression"."""
    if name == "fashion_mnist":
        X, y, X_te, y_te = datasets.load_fashion_mnist(3000, N_TEST, random_state=0)
        return X, y, X_te, y_te, "single"
    if name == "textures":
        from sktransfer.demo.data import load_textures

        X, y, X_te, y_te = load_textures(IMAGE_SIZE, 160, random_state=0)
        return X, y, X_te, y_te, "single"
    if name == "rotated_fmnist":
        X, y, X_te, y_te = datasets.load_rotated_fashion_mnist(1500, N_TEST, 45.0, 0)
        return X, y, X_te, y_te, "regression"
    if name == "rotten_tomatoes":
        t, y, t_te, y_te = datasets.rotten_tomatoes_split(0.2, random_state=0)
        idx = datasets.stratified_indices(y_te, N_TEST, 1)
        return t, y, [t_te[i] for i in idx], y_te[idx], "single"
    if name == "speeches":
        from benchmarks import datasets_political
        from benchmarks.bench_fewshot import POLITICAL_WORDS

        t, y, t_te, y_te = datasets_political.political_split(0.3, 0, *POLITICAL_WORDS)
        idx = datasets.stratified_indices(y_te, min(N_TEST, len(y_te)), 1)
        return list(t), np.asarray(y), [t_te[i] for i in idx], np.asarray(y_te)[idx], "single"
    if name == "whissell":
        t, Y, t_te, Y_te = datasets.whissell_split(0.2, random_state=0)[:4]
        return list(t), np.asarray(Y), list(t_te)[:N_TEST], np.asarray(Y_te)[:N_TEST], "regression"
    if name == "debtags":
        t, Y, t_te, Y_te, _ = datasets.debtags_split()
        return t, Y, t_te[:N_TEST], Y_te[:N_TEST], "multi"
    raise ValueError(f"unknown set {name!r}")


def _draw(y, task, n, seed):
    """Indices of ``n`` per class (``n`` x 10 samples for regression and multi-label)."""
    rng = np.random.default_rng(seed)
    if task == "single":  # exactly n of each class (the pools are imbalanced: RT is 58/42)
        return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)])
    return rng.choice(len(y), size=min(n * 10, len(y)), replace=False)


def _take(X, idx):
    return [X[i] for i in idx] if isinstance(X, list) else X[idx]


# ---------------------------------------------------------------------------------- the methods
def _estimator(name, task, method, seed):
    import sktransfer

    text = name in TEXT_SETS
    kind = {"single": "Classifier", "multi": "Classifier", "regression": "Regressor"}[task]
    cls = getattr(sktransfer, f"Pretrained{'Text' if text else 'Image'}{kind}")
    size = {"max_length": MAX_LENGTH} if text else {"image_size": IMAGE_SIZE}
    es = method.endswith("_es")
    method = method.removesuffix("_es")
    depth = {"frozen": "all", "partial": -2, "full": 0, "reg": -2, "contrastive": "auto"}[method]
    kw = {"regularizer": BEST_REGULARIZER} if method == "reg" else {}
    kw = {**kw, "early_stopping": True} if es else kw
    if method == "contrastive":
        kw = {"objective": "contrastive"}
    est = cls(freeze_depth=depth, random_state=seed, **size, **kw)
    if task == "regression" and method == "frozen":
        from sklearn.model_selection import GridSearchCV

        return GridSearchCV(est, {"alpha": [1e-1, 1e0, 1e1, 1e2, 1e3, 1e4]}, cv=3)
    return est


def _baseline(name, task):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if name in TEXT_SETS:
        if task == "regression":
            vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
            return make_pipeline(vec, RidgeCV(alphas=np.logspace(-2, 3, 11)))
        head = LogisticRegression(max_iter=2000)
        head = OneVsRestClassifier(head) if task == "multi" else head
        return make_pipeline(TfidfVectorizer(sublinear_tf=True), head)
    if name == "textures":
        from sktransfer.demo.descriptors import TextureDescriptors

        first = TextureDescriptors()
    else:
        first = FunctionTransformer(lambda X: np.asarray(X, np.float64).reshape(len(X), -1))
    if task == "regression":
        return make_pipeline(first, StandardScaler(), RidgeCV(alphas=np.logspace(-1, 4, 11)))
    return make_pipeline(first, StandardScaler(), LogisticRegression(max_iter=2000))


def _score(model, X, y, task):
    from sklearn.metrics import f1_score, r2_score

    pred = model.predict(X)
    if task == "regression":
        return float(r2_score(y, pred))
    if task == "multi":
        return float(f1_score(y, pred, average="micro", zero_division=0))
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


def _setfit_score(X, y, X_te, y_te, seed):
    """The ``setfit`` package at its defaults on the packaged MiniLM (None: not installed)."""
    import importlib.util

    if importlib.util.find_spec("setfit") is None:
        return None
    import tempfile

    from benchmarks.bench_fewshot import fit_predict  # the peer's one runner

    with tempfile.TemporaryDirectory() as workdir:
        pred = fit_predict("setfit", X, y, X_te, seed, workdir)[0]
    return float(np.mean(pred == np.asarray(y_te)))


def run_cell(name, pool, n, seed, methods):
    """``{method: score}`` of one draw."""
    X, y, X_te, y_te, task = pool
    idx = _draw(y, task, n, seed)
    X_tr, y_tr = _take(X, idx), y[idx]
    out = {}
    for method in methods:
        if method in ("contrastive", "setfit") and not (name in TEXT_SETS and task == "single"):
            continue
        if method == "setfit":
            score = _setfit_score(X_tr, y_tr, X_te, y_te, seed)
            if score is not None:
                out[method] = score
            continue
        model = (
            _baseline(name, task) if method == "baseline" else _estimator(name, task, method, seed)
        )
        start = time.perf_counter()
        out[method] = _score(model.fit(X_tr, y_tr), X_te, y_te, task)
        print(f"  {name} n={n} draw {seed} {method}: {out[method]:.3f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return out


def run_grid(grid) -> dict:
    """``{"{set}/n{n}": cell}`` for every set and n of ``grid`` (a :data:`QUICK`-shaped dict)."""
    cells = {}
    for name in grid["sets"]:
        pool = _pool(name)
        metric = {"single": "accuracy", "multi": "micro_f1", "regression": "r2"}[pool[4]]
        for n in grid["ns"]:
            start = time.perf_counter()
            methods = [m for m in grid["methods"] if (name, m) not in grid["skip"]]
            per_draw = [run_cell(name, pool, n, seed, methods) for seed in grid["draws"]]
            seconds = time.perf_counter() - start
            scores = {m: [d[m] for d in per_draw] for m in per_draw[0]}
            cells[f"{name}/n{n}"] = {"metric": metric, "draws": list(grid["draws"]),
                                     "scores": scores, "seconds": round(seconds, 1)}  # fmt: skip
    return cells


def rows_from_cells(cells) -> ResultList:
    """The result rows of ``cells`` (mean, std, gaps to the frozen probe, the winner)."""
    rows = ResultList()
    for key, cell in cells.items():
        scores, metric = cell["scores"], cell["metric"]
        for m, values in scores.items():
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(Result(NAME, f"{key}/{m}", mean, "",
                               notes=f"{metric}, {len(values)} draws; std {std:.3f}"))  # fmt: skip
            rows.append(Result(NAME, f"{key}/{m}_std", std, ""))
        means = {m: statistics.fmean(v) for m, v in scores.items()}
        best = max(means, key=means.get)
        margin = 100 * (means[best] - means.get("frozen", means[best]))
        rows.append(Result(NAME, f"{key}/best_minus_frozen_pt", margin, "pt",
                           notes=f"best: {best}"))  # fmt: skip
        for m in ("partial", "full", "reg", "contrastive", "setfit"):
            if m in means and "frozen" in means:
                gap = 100 * (means[m] - means["frozen"])
                rows.append(Result(NAME, f"{key}/{m}_minus_frozen_pt", gap, "pt"))
    return rows


def run(quick: bool = True) -> ResultList:
    grid = QUICK if quick else FULL
    cells = run_grid(grid)
    rows = rows_from_cells(cells)
    rows.extra["grid"] = {"mode": "quick" if quick else "full", **{k: list(v) for k, v in
                                                                  grid.items()}}  # fmt: skip
    rows.extra["cells"] = cells
    return rows


def merge(old: dict, new: dict) -> dict:
    """``old`` cells updated by ``new`` ones: a method measured again replaces its scores; the
    draws of both must agree (a cell's mean ± std is over one set of draws)."""
    out = {k: {**v, "scores": dict(v["scores"])} for k, v in old.items()}
    for key, cell in new.items():
        if key in out and out[key]["draws"] != cell["draws"]:
            raise ValueError(f"{key}: draws {cell['draws']} differ from the stored "
                             f"{out[key]['draws']}; rerun every method of the cell")  # fmt: skip
        if key in out:
            out[key]["scores"].update(cell["scores"])
            out[key]["seconds"] = round(out[key]["seconds"] + cell["seconds"], 1)
        else:
            out[key] = cell
    return out


def main(argv=None) -> int:
    """``python -m benchmarks.bench_strategies --sets S.. --ns N.. [--methods M..]``: run those
    cells (3 draws) and merge them into ``results/strategies.json`` (the grid of issue 25 takes
    hours on a 2-core machine, so it is run, and kept, a few cells at a time)."""
    import argparse
    import json

    from benchmarks._harness import RESULTS_DIR, machine_info, write_results

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--sets", nargs="+", required=True, choices=FULL["sets"])
    parser.add_argument("--ns", nargs="+", type=int, required=True)
    parser.add_argument("--methods", nargs="+", default=list(FULL["methods"]),
                        choices=FULL["methods"] + ES_METHODS)  # fmt: skip
    parser.add_argument("--draws", nargs="+", type=int, default=list(FULL["draws"]))
    args = parser.parse_args(argv)
    grid = {"sets": args.sets, "ns": args.ns, "draws": args.draws, "methods": args.methods,
            "skip": ()}  # fmt: skip
    path = RESULTS_DIR / f"{NAME}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    start = time.perf_counter()
    new = run_grid(grid)
    # read again: another run may have merged its cells meanwhile
    old = json.loads(path.read_text()) if path.exists() else old
    cells = merge(old.get("cells", {}), new)
    ran = {k: sorted(v["scores"]) for k, v in cells.items()}
    write_results(NAME, rows_from_cells(cells), machine_info(), mode="cells",
                  duration_s=round((old.get("duration_s") or 0) + time.perf_counter() - start, 1),
                  extra={"grid": {"mode": "cells", "ran": ran}, "cells": cells})  # fmt: skip
    print(f"merged {sorted(new)} into {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
