"""Plots of the benchmark results: ``python -m benchmarks.plots [--results-dir D] [--img-dir D]``.

Reads ``results/*.json`` (written by ``python -m benchmarks``) and writes PNGs (matplotlib, Agg):

* ``accuracy.png`` - accuracy of the three ``freeze_depth`` workflows per data set
  (``accuracy.json``), the no-transfer baselines as horizontal lines;
* ``learning_curves.png`` - train loss, valid loss and valid accuracy per epoch of the fine-tuned
  configurations (the ``histories`` of ``accuracy.json``), drawn with ``sktransfer.plot_history``;
* ``grid_cost.png`` - grid-search time / one plain fit against the grid's size G x K, sktransfer
  vs ``Pipeline(memory=...)`` (rows ``grid_cost/{G}x{K}/{sktransfer|pipeline_memory}``, any
  benchmark).

A plot whose data is missing is not drawn (and an old PNG of it is removed). Nothing here runs a
benchmark or imports torch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from benchmarks._harness import RESULTS_DIR, load_results

IMG_DIR = Path(__file__).resolve().parents[1] / "docs" / "img"

#: the ``freeze_depth`` workflows of ``bench_accuracy``, in plotting order: label -> tick text
WORKFLOW_TICKS = {
    "frozen": "feature extraction\nfreeze_depth='all'",
    "partial": "freeze lower layers\nfreeze_depth=-2",
    "full": "full fine-tuning\nfreeze_depth=0",
}
BASELINE_NAMES = {
    "tfidf_logreg": "TF-IDF + logistic regression",
    "pixel_logreg": "logistic regression on pixels",
}
DATASET_NAMES = {"rotten_tomatoes": "Rotten Tomatoes", "fashion_mnist": "Fashion-MNIST"}
GRID_IMPLS = {"sktransfer": "sktransfer", "pipeline_memory": "Pipeline(memory=joblib.Memory)"}

_ACC_RE = re.compile(r"^(?P<ds>[^/]+)/(?P<cfg>[^/]+)/accuracy$")
_GRID_RE = re.compile(r"^grid_cost/(?P<g>\d+)x(?P<k>\d+)/(?P<impl>[A-Za-z0-9_]+)$")
DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return path


def _dataset_name(ds: str) -> str:
    return DATASET_NAMES.get(ds, ds.replace("_", " "))


# ----------------------------------------------------------------------------------------- accuracy
def accuracy_by_dataset(payload: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{dataset: {"workflows": {label: acc}, "baselines": {name: acc}, "extras": {...},
    "note": str}}`` from the rows ``{dataset}/{config}/accuracy`` of ``accuracy.json``."""
    out: dict[str, dict[str, Any]] = {}
    for row in payload.get("results") or []:
        match = _ACC_RE.match(str(row.get("metric", "")))
        if match is None or row.get("value") is None:
            continue
        ds, cfg = match["ds"], match["cfg"]
        entry = out.setdefault(ds, {"workflows": {}, "baselines": {}, "extras": {}, "note": ""})
        value = float(row["value"])
        if cfg in WORKFLOW_TICKS:
            entry["workflows"][cfg] = value
            if cfg == "frozen" and row.get("notes"):  # "what; model, sizes; lr_=..." -> sizes
                parts = str(row["notes"]).split("; ")
                entry["note"] = "; ".join(p for p in parts[1:] if not p.startswith("lr_"))
        elif cfg.startswith("baseline_"):
            entry["baselines"][cfg.removeprefix("baseline_")] = value
        else:
            entry["extras"][cfg] = value
    return {ds: e for ds, e in out.items() if e["workflows"]}


def accuracy_payload(payloads: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The payload with the workflow accuracies: ``accuracy``'s, else the first that has them
    (e.g. a GPU machine's ``gpu_text``); ``{}`` if none."""
    payloads = list(payloads)
    ordered = [p for p in payloads if p.get("benchmark") == "accuracy"] + payloads
    return next((p for p in ordered if accuracy_by_dataset(p)), {})


def _baseline_label(name: str) -> str:
    all_train = name.endswith("_all_train")
    base = BASELINE_NAMES.get(name.removesuffix("_all_train"), name.replace("_", " "))
    return base + (" (all training data)" if all_train else " (same training data)")


def plot_accuracy(payload: Mapping[str, Any], path: Path) -> Path | None:
    """Accuracy vs ``freeze_depth`` per data set; baselines as horizontal lines. None: no data."""
    data = accuracy_by_dataset(payload)
    if not data:
        return None
    plt = _pyplot()
    labels = list(WORKFLOW_TICKS)
    fig, axes = plt.subplots(1, len(data), figsize=(5.6 * len(data), 4.4), squeeze=False)
    for ax, (ds, entry) in zip(axes[0], data.items()):
        xs = [i for i, lab in enumerate(labels) if lab in entry["workflows"]]
        ys = [entry["workflows"][labels[i]] for i in xs]
        ax.plot(xs, ys, "-o", color="tab:blue", lw=2, ms=8, label="sktransfer", zorder=3)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 9),
                        ha="center", fontsize=9)  # fmt: skip
        styles = iter([("tab:red", "--"), ("tab:gray", ":"), ("tab:orange", "-."), ("k", "--")])
        for name, value in entry["baselines"].items():
            color, ls = next(styles, ("k", ":"))
            ax.axhline(value, color=color, ls=ls, lw=1.5,
                       label=f"{_baseline_label(name)}: {value:.3f}")  # fmt: skip
        markers = iter("s^vDP*X")
        shift: dict[int, float] = {}
        for cfg, value in entry["extras"].items():
            base = cfg.split("_", 1)[0]
            i = labels.index(base) if base in labels else len(labels) - 1
            shift[i] = shift.get(i, 0.0) + 0.07  # side by side, right of their workflow
            x = i + shift[i]
            ax.plot([x], [value], next(markers, "x"), ms=7, ls="none", label=f"{cfg}: {value:.3f}")
        ax.set_xticks(range(len(labels)), [WORKFLOW_TICKS[lab] for lab in labels], fontsize=9)
        ax.set_xlim(-0.4, len(labels) - 0.6 + max(shift.values(), default=0.0))
        values = ys + list(entry["baselines"].values()) + list(entry["extras"].values())
        lo, hi = min(values), max(values)
        pad = max(0.02, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + 1.5 * pad))
        ax.set_ylabel("test accuracy")
        note = "\n".join(textwrap.wrap(entry["note"], 60))
        ax.set_title(f"{_dataset_name(ds)}\n{note}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle("Accuracy by transfer workflow (higher is better)", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------- learning curves
def _recorded(history: list[dict[str, Any]], freeze_depth: Any) -> Any:
    """A stand-in fitted estimator carrying a recorded ``history_`` (for ``plot_history``)."""
    from sklearn.base import BaseEstimator

    class Recorded(BaseEstimator):
        def __init__(self, freeze_depth=None):
            self.freeze_depth = freeze_depth

        def fit(self, X=None, y=None):
            return self

    est = Recorded(freeze_depth)
    est.history_ = history
    return est


def plot_learning_curves(payload: Mapping[str, Any], path: Path) -> Path | None:
    """One panel per fine-tuned configuration of ``payload["histories"]``; None: no histories."""
    histories = {
        name: h for name, h in (payload.get("histories") or {}).items() if h.get("history")
    }
    if not histories:
        return None
    from matplotlib.ticker import MaxNLocator

    from sktransfer.plotting import plot_history

    plt = _pyplot()
    ncols = 2 if len(histories) > 1 else 1
    nrows = -(-len(histories) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 3.6 * nrows), squeeze=False)
    legend = None
    for ax, (name, h) in zip(axes.flat, histories.items()):
        ds, _, cfg = name.partition("/")
        history = list(h["history"])
        depth = (h.get("params") or {}).get("freeze_depth")
        title = f"{_dataset_name(ds)}: {h.get('workflow') or cfg}"
        plot_history(_recorded(history, depth), ax=ax, title=title)
        best = [row.get("epoch", i + 1) for i, row in enumerate(history) if row.get("best")]
        if best:
            ax.axvline(best[-1], color="gray", ls=":", lw=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize(10)
        if ax.get_legend() is not None:  # one legend for the figure instead of one per panel
            legend = legend or (ax.get_legend().legend_handles, ax.get_legend().texts)
            ax.get_legend().remove()
    for ax in list(axes.flat)[len(histories) :]:
        ax.set_visible(False)
    fig.suptitle("Learning curves of the fine-tuned configurations (dotted: best epoch kept)")
    fig.tight_layout()
    if legend is not None:
        handles, texts = legend
        fig.legend(handles, [t.get_text() for t in texts], loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=len(handles), frameon=False)  # fmt: skip
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- grid cost
def grid_cost_points(payloads: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple]]:
    """``{impl: [(G*K, value, "GxK"), ...]}`` sorted by size, from ``grid_cost/{G}x{K}/{impl}``
    rows whose ``impl`` is one of :data:`GRID_IMPLS`."""
    out: dict[str, list[tuple]] = {}
    for payload in payloads:
        for row in payload.get("results") or []:
            match = _GRID_RE.match(str(row.get("metric", "")))
            if match is None or match["impl"] not in GRID_IMPLS or row.get("value") is None:
                continue  # (other rows there, e.g. .../speedup_vs_pipeline_memory, are not costs)
            g, k = int(match["g"]), int(match["k"])
            out.setdefault(match["impl"], []).append((g * k, float(row["value"]), f"{g}x{k}"))
    return {impl: sorted(points) for impl, points in out.items()}


def plot_grid_cost(payloads: Iterable[Mapping[str, Any]], path: Path) -> Path | None:
    """Grid-search time / one plain fit vs G x K, one line per implementation; None: no rows."""
    points = grid_cost_points(payloads)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for impl, pts in points.items():
        xs, ys, names = zip(*pts)
        ax.plot(xs, ys, "-o", label=GRID_IMPLS.get(impl, impl))
        for x, y, n in pts:
            ax.annotate(f"{n}: {y:.3g}", (x, y), textcoords="offset points", xytext=(4, 5),
                        fontsize=8)  # fmt: skip
    ax.axhline(1.0, color="gray", ls=":", lw=1, label="one plain fit")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    sizes = sorted({x for pts in points.values() for x, _, _ in pts})
    values = [y for pts in points.values() for _, y, _ in pts] + [1.0]
    if max(sizes) >= 8 * min(sizes):
        ax.set_xscale("log")
    if max(values) >= 10 * min(values):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sizes, [str(x) for x in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("grid points x CV folds (G x K)")
    ax.set_ylabel("grid-search time / one plain fit")
    ax.set_title("Grid-search cost (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- all
PLOTS = ("accuracy", "learning_curves", "grid_cost")


def make_plots(
    results_dir: str | Path | None = None, img_dir: str | Path | None = None, prefix: str = ""
) -> dict[str, Path]:
    """Draw every plot whose data exists in ``results_dir`` into ``img_dir``; ``{plot: path}``.

    File names are ``{prefix}{plot}.png``; a plot without data has its old PNG removed.
    """
    payloads = load_results(results_dir or RESULTS_DIR)
    accuracy = accuracy_payload(payloads)
    img_dir = Path(img_dir or IMG_DIR)
    makers = {
        "accuracy": lambda path: plot_accuracy(accuracy, path),
        "learning_curves": lambda path: plot_learning_curves(accuracy, path),
        "grid_cost": lambda path: plot_grid_cost(payloads, path),
    }
    written: dict[str, Path] = {}
    for name in PLOTS:
        path = img_dir / f"{prefix}{name}.png"
        out = makers[name](path)
        if out is None:
            path.unlink(missing_ok=True)
        else:
            written[name] = out
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--img-dir", type=Path, default=IMG_DIR)
    parser.add_argument("--prefix", default="", help="file name prefix, e.g. gpu_")
    args = parser.parse_args(argv)
    written = make_plots(args.results_dir, args.img_dir, args.prefix)
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
