"""Issue 25, item 1: why the default fine-tune loses to the frozen probe, with its curves.

Run: ``python -m benchmarks.diagnose_finetune [--sets S ...] [--variants V ...] [--out PATH]``
(about 10 to 25 minutes for everything on 2 shared CPU cores). For each set it fits the frozen
probe, the default partial (``freeze_depth=-2``) and full (``freeze_depth=0``) fine-tunes and a
few one-knob variants of them (:data:`VARIANTS`), prints every fit's ``history_`` (per-epoch
train loss, validation loss and score, the epoch kept) and its test score, and writes them all to
``benchmarks/results/diagnose_finetune.json``. Only the named knob differs from the default
estimator (``image_size=64`` and the text ``max_length=64`` are set to fit the machine).

Sets (seeded draws of the loaders in :mod:`benchmarks.datasets`):

* ``rotated_fmnist``: image regression, Fashion-MNIST items turned by an angle in [-45, 45]
  degrees, predict the angle (1,000 training / 500 test images, 64 px, EfficientNet-Lite0); R².
* ``fashion_mnist``: 32 images per class (320), 500 test images, 64 px; accuracy.
* ``rotten_tomatoes``: 64 snippets per class (128), 400 test snippets, all-MiniLM-L6-v2; accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import datasets
from benchmarks._harness import RESULTS_DIR, machine_info

SEED = 0
OUT = Path(RESULTS_DIR) / "diagnose_finetune.json"

#: variant -> (freeze_depth, extra constructor arguments); the first three are the defaults
VARIANTS = {
    "frozen": ("all", {}),
    "frozen_cv": ("all", {}),  # regression: alpha by 3-fold CV (1e-1..1e4), a tuned probe
    "frozen_alpha1": ("all", {"alpha": 1.0}),  # regression: Ridge's (and the old) default
    "partial": (-2, {}),
    "full": (0, {}),
    # one knob each, on the partial fine-tune
    "partial_random_head": (-2, {"head_init": "random"}),
    "partial_lr1e-3": (-2, {"lr": 1e-3}),
    "partial_layer_decay": (-2, {"layer_decay": 0.5}),
    "partial_train_bn": (-2, {"train_bn": True}),
    "partial_augment": (-2, {"augment": "light"}),
    "partial_patience": (-2, {"max_epochs": 20, "n_iter_no_change": 6}),
    "full_lr1e-3": (0, {"lr": 1e-3}),
    "partial_C0.05": (-2, {"C": 0.05}),  # classifiers: a probe head that does not interpolate
}
DEFAULT_VARIANTS = ("frozen", "partial", "full")
IMAGE_ONLY = {"partial_train_bn", "partial_augment"}
CLASSIFIER_ONLY = {"partial_C0.05"}
REGRESSION_ONLY = {"frozen_alpha1"}


def _stratified(X, y, per_class, seed):
    idx = datasets.stratified_indices(y, per_class * len(np.unique(y)), seed)
    return [X[i] for i in idx] if isinstance(X, list) else X[idx], y[idx]


def load_set(name, seed=SEED):
    """``(kind, make(freeze_depth, **kw) -> estimator, X_tr, y_tr, X_te, y_te, note)``."""
    if name == "rotated_fmnist":
        from sktransfer import PretrainedImageRegressor

        X_tr, y_tr, X_te, y_te = datasets.load_rotated_fashion_mnist(1000, 500, 45.0, seed)

        def make(depth, **kw):
            return PretrainedImageRegressor(
                freeze_depth=depth, image_size=64, random_state=seed, **kw
            )

        return "image", make, X_tr, y_tr, X_te, y_te, "1000 train / 500 test, 64 px, R2"
    if name == "fashion_mnist":
        from sktransfer import PretrainedImageClassifier

        X, y, X_te, y_te = datasets.load_fashion_mnist(2000, 500, random_state=seed)
        X_tr, y_tr = _stratified(X, y, 32, seed)

        def make(depth, **kw):
            return PretrainedImageClassifier(
                freeze_depth=depth, image_size=64, random_state=seed, **kw
            )

        return "image", make, X_tr, y_tr, X_te, y_te, "32/class (320) train, 500 test, 64 px"
    if name == "rotten_tomatoes":
        from sktransfer import PretrainedTextClassifier

        t_tr, y, t_te, y_te = datasets.rotten_tomatoes_split(0.2, random_state=seed)
        X_tr, y_tr = _stratified(t_tr, y, 64, seed)
        X_te, y_te = _stratified(t_te, y_te, 200, seed + 1)

        def make(depth, **kw):
            return PretrainedTextClassifier(
                freeze_depth=depth, max_length=64, random_state=seed, **kw
            )

        return "text", make, X_tr, y_tr, X_te, y_te, "64/class (128) train, 400 test"
    if name == "speeches":  # bench_strategies' pool and test set, 32 per class (draw 0)
        from benchmarks import bench_strategies
        from sktransfer import PretrainedTextClassifier

        t, y, X_te, y_te, _ = bench_strategies._pool("speeches")
        idx = bench_strategies._draw(y, "single", 32, seed)
        X_tr, y_tr = [t[i] for i in idx], y[idx]

        def make(depth, **kw):
            return PretrainedTextClassifier(
                freeze_depth=depth, max_length=64, random_state=seed, **kw
            )

        return "text", make, X_tr, y_tr, X_te, y_te, "32/class (64) train, 400 test"
    raise ValueError(
        f"unknown set {name!r}; known: rotated_fmnist, fashion_mnist, rotten_tomatoes, speeches"
    )


def run_set(name, variants, say=print):
    kind, make, X_tr, y_tr, X_te, y_te, note = load_set(name)
    runs = {}
    for v in variants:
        regression = name == "rotated_fmnist"
        if (
            kind == "text"
            and v in IMAGE_ONLY
            or regression
            and v in CLASSIFIER_ONLY
            or not regression
            and v in REGRESSION_ONLY
        ):
            continue
        depth, kw = VARIANTS[v]
        start = time.perf_counter()
        est = make(depth, **kw)
        if v == "frozen_cv" and kind == "image" and name == "rotated_fmnist":
            from sklearn.model_selection import GridSearchCV

            est = GridSearchCV(est, {"alpha": [1e-1, 1e0, 1e1, 1e2, 1e3, 1e4]}, cv=3)
        elif v == "frozen_cv":
            continue
        est = est.fit(X_tr, y_tr)
        est = getattr(est, "best_estimator_", est)
        score = float(est.score(X_te, y_te))
        seconds = time.perf_counter() - start
        history = [
            {k: (round(val, 4) if isinstance(val, float) else val) for k, val in row.items()}
            for row in est.history_
        ]
        runs[v] = {"freeze_depth": depth, "params": kw, "test_score": score,
                   "fit_score_s": round(seconds, 1), "history": history}  # fmt: skip
        say(f"{name:16s} {v:22s} test={score:.3f}  ({seconds:.0f} s)")
        for row in history:
            if "valid_loss" in row:
                metric = next(k for k in row if k.startswith("valid_") and k != "valid_loss")
                say(f"    epoch {row['epoch']:2d} train {row['train_loss']:.3f} "
                    f"valid {row['valid_loss']:.3f} {metric} {row[metric]:.3f}"
                    f"{'  <- kept' if row.get('best') else ''}")  # fmt: skip
    return {"note": note, "runs": runs}


# ------------------------------------------------------------------------------ contrastive
#: the contrastive ablations on the convention speeches (bench_fewshot's draws and settings)
ABLATIONS = {
    "matched": {},  # bench_fewshot's "contrastive": SetFit's settings, cosine decay
    "linear_decay": {"lr_schedule": "warmup_linear"},  # SetFit's (HF Trainer's) schedule
    "per_occurrence_dropout": {"per_occurrence": True},  # one dropout mask per pair member
    "setfit_pairs": {"setfit_pairs": True},  # the pairs setfit's own sampler draws
}


class _SetFitPairs:
    """Train on the pairs ``setfit.sampler.ContrastiveDataset`` draws (setfit 1.x: every
    combination with replacement, self-pairs included, shuffled with its fixed seed and cycled
    to ``num_iterations`` x n of each kind, positive and negative alternating) instead of
    ``sentence_pairs`` (per sample: a random positive and a random negative partner). The
    sampler sees sample indices as its "sentences", so its pairs map back exactly."""

    def __enter__(self):
        from sktransfer.backbones.compat import ensure_transformers_importable

        ensure_transformers_importable()  # (the torchvision crash: see requirements-peers.txt)
        from setfit.sampler import ContrastiveDataset

        from sktransfer._estimator import fit_paths

        self.module, self.original = fit_paths, fit_paths.sentence_pairs

        def pairs(labels, num_iterations, seed):
            labels = np.asarray(labels)
            data = ContrastiveDataset([str(i) for i in range(len(labels))], labels.tolist(),
                                      multilabel=False, num_iterations=num_iterations)  # fmt: skip
            rows = list(data)
            out = np.array([(int(r["sentence_1"]), int(r["sentence_2"])) for r in rows])
            return out.astype(np.int64), np.array([r["label"] for r in rows], np.float32)

        fit_paths.sentence_pairs = pairs
        return self

    def __exit__(self, *exc):
        self.module.sentence_pairs = self.original


class _PerOccurrence:
    """Encode each pair member on its own (SetFit's way: a sentence met twice in a batch gets
    two dropout masks), instead of once per distinct sentence of the batch."""

    def __enter__(self):
        import torch

        from sktransfer.training import contrastive

        self.cls, self.call = contrastive.PairCollate, contrastive.PairCollate.__call__

        def call(collate, batch):
            pairs = np.stack([p for p, _ in batch])
            x = collate.inner([collate.sentences[int(i)] for i in pairs.ravel()])[0]
            inverse = torch.arange(pairs.size).reshape(-1, 2)
            targets = torch.tensor([t for _, (t, _) in batch], dtype=torch.float32)
            weights = torch.tensor([w for _, (_, w) in batch], dtype=torch.float32)
            return contrastive.PairBatch(x, inverse), (targets, weights)

        self.cls.__call__ = call
        return self

    def __exit__(self, *exc):
        self.cls.__call__ = self.call


def _separation(emb, y):
    """Mean cosine of same-class pairs minus that of different-class pairs (held-out texts)."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    cos = emb @ emb.T
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    diff = y[:, None] != y[None, :]
    return float(cos[same].mean()), float(cos[diff].mean())


def contrastive_ablation(ablations, ns=(16,), seeds=(0, 1, 2), say=print, save=None):
    """Each ablation's accuracy per draw next to SetFit's recorded one (fewshot.json, same
    draws), and the held-out embedding separation before / after the pairs trained."""
    import contextlib

    from benchmarks import bench_fewshot
    from sktransfer import PretrainedTextClassifier, TextEmbedder

    recorded = json.loads((Path(RESULTS_DIR) / "fewshot.json").read_text())["runs"]
    setfit, matched = (
        {(r["n"], r["seed"]): r["accuracy"] for r in recorded
         if r["data"] == "political" and r["method"] == method}
        for method in ("setfit", "contrastive")
    )  # fmt: skip
    X, y, X_te, y_te = bench_fewshot.load_split("political", bench_fewshot.QUICK["test_per_class"])
    y_te = np.asarray(y_te)
    before = _separation(TextEmbedder().fit(X_te[:200]).transform(X_te[:200]), y_te[:200])
    out = {"separation_before": before, "runs": []}
    say(f"held-out cosine before: same class {before[0]:.3f}, different {before[1]:.3f}")
    for n in ns:
        for seed in seeds:
            idx = bench_fewshot.draw(np.asarray(y), n, seed)
            X_tr, y_tr = [X[i] for i in idx], np.asarray(y)[idx]
            for name in ablations:
                kw = dict(ABLATIONS[name])
                ctx = _PerOccurrence() if kw.pop("per_occurrence", False) else None
                ctx = _SetFitPairs() if kw.pop("setfit_pairs", False) else ctx
                params = {**bench_fewshot.MATCHED, **kw}
                est = PretrainedTextClassifier(
                    objective="contrastive", freeze_depth=0, random_state=seed, **params
                )
                start = time.perf_counter()
                with ctx or contextlib.nullcontext():
                    est.fit(X_tr, y_tr)
                acc = float(est.score(X_te, y_te))
                emb = TextEmbedder(backbone=est).fit(X_te[:200]).transform(X_te[:200])
                after = _separation(emb, y_te[:200])
                row = {"n": n, "seed": seed, "ablation": name, "accuracy": acc,
                       "setfit": setfit.get((n, seed)), "recorded_matched": matched.get((n, seed)),
                       "separation_after": after,
                       "fit_s": round(time.perf_counter() - start, 1)}  # fmt: skip
                out["runs"].append(row)
                if save is not None:  # after each fit: a cut-short run still counts
                    save(out)
                say(
                    f"speeches n={n} seed={seed} {name:24s} acc {acc:.3f} (SetFit "
                    f"{row['setfit']}); cosine same {after[0]:.3f} diff {after[1]:.3f}"
                )
    return out


def figures(payload):
    """``results`` rows (``diagnose_finetune:<metric>``) for the docs' figure markers."""
    rows = []

    def add(metric, value):
        rows.append({"benchmark": "diagnose_finetune", "metric": metric, "value": value})

    for name, data in payload.get("sets", {}).items():
        for v, run in data["runs"].items():
            add(f"{name}/{v}/test_score", run["test_score"])
            kept = [r["epoch"] for r in run["history"] if r.get("best")]
            if kept:
                add(f"{name}/{v}/best_epoch", kept[0])
                add(f"{name}/{v}/epochs_run", run["history"][-1]["epoch"])
            add(f"{name}/{v}/first_train_loss", run["history"][0]["train_loss"])
    runs = payload.get("contrastive", {}).get("runs", [])
    for ablation in sorted({r["ablation"] for r in runs}):
        mine = [r for r in runs if r["ablation"] == ablation and r["setfit"] is not None]
        for n in sorted({r["n"] for r in mine}):
            cell = [r for r in mine if r["n"] == n]
            gaps = [100 * (r["accuracy"] - r["setfit"]) for r in cell]
            add(f"speeches/n{n}/{ablation}/minus_setfit_pt", float(np.mean(gaps)))
            add(f"speeches/n{n}/{ablation}/accuracy", float(np.mean([r["accuracy"] for r in cell])))
            same = np.mean([r["separation_after"][0] - r["separation_after"][1] for r in cell])
            add(f"speeches/n{n}/{ablation}/separation_after", float(same))
            add(f"speeches/n{n}/{ablation}/cosine_same_after",
                float(np.mean([r["separation_after"][0] for r in cell])))  # fmt: skip
            add(f"speeches/n{n}/{ablation}/draws", len(cell))
            base = [r["recorded_matched"] for r in cell if r["recorded_matched"] is not None]
            if len(base) == len(cell):  # the unchanged recipe on the same draws (fewshot.json)
                add(f"speeches/n{n}/{ablation}/recorded_matched", float(np.mean(base)))
                gap = [100 * (r["recorded_matched"] - r["setfit"]) for r in cell]
                add(f"speeches/n{n}/{ablation}/recorded_minus_setfit_pt", float(np.mean(gap)))
    if "separation_before" in payload.get("contrastive", {}):
        same, diff = payload["contrastive"]["separation_before"]
        add("speeches/separation_before", same - diff)
        add("speeches/cosine_same_before", same)
    return rows


def _write(out, payload):
    payload["results"] = figures(payload)
    out.write_text(json.dumps(payload, indent=1) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+",
                        default=["rotated_fmnist", "fashion_mnist", "rotten_tomatoes"])  # fmt: skip
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        choices=list(VARIANTS))  # fmt: skip
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument(
        "--contrastive", nargs="*", choices=list(ABLATIONS),
        help="run these contrastive ablations (speeches) instead of the sets",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    out = Path(args.out)
    payload = json.loads(out.read_text()) if out.exists() else {"sets": {}}
    if args.contrastive:

        def save(result):
            payload = json.loads(out.read_text()) if out.exists() else {"sets": {}}
            old = payload.get("contrastive", {"runs": []})
            done = {(r["n"], r["seed"], r["ablation"]) for r in result["runs"]}
            keep = [r for r in old["runs"] if (r["n"], r["seed"], r["ablation"]) not in done]
            payload["contrastive"] = {**result, "runs": keep + result["runs"]}
            _write(out, payload)

        contrastive_ablation(args.contrastive, seeds=tuple(args.seeds), save=save)
        print(f"wrote {out}")
        return
    for name in args.sets:
        result = run_set(name, args.variants)
        payload = json.loads(out.read_text()) if out.exists() else {"sets": {}}
        payload.setdefault("sets", {})
        merged = payload["sets"].setdefault(name, {"note": result["note"], "runs": {}})
        merged["runs"].update(result["runs"])
        payload["machine"] = machine_info()
        payload["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _write(out, payload)  # after each set: partial runs count
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
