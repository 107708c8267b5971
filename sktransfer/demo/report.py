"""What ``sktransfer demo`` writes and prints: the output folder, verdicts, JSON and the plot."""

from __future__ import annotations

import json
import os
import time

#: The files the demo writes inside its output folder.
OUTPUT_NAMES = {
    "results": "results.json",
    "curve_png": "demo_curve.png",
    "model": "model.skt",
    "images": "test_images",
    "predictions": "predictions.csv",
}

#: Why the no-transfer baseline can win on a data set (printed next to every such point).
WHY_BASELINE_WINS = {
    "digits": "8x8 pen strokes, upscaled, look like nothing in ImageNet's photos: the pretrained "
    "features describe photo texture and objects, while the 64 raw pixels of these centred, "
    "size-normalised digits already separate the classes almost linearly.",
    "rotten_tomatoes": "TF-IDF learns this corpus's own sentiment words, while the frozen "
    "sentence embedding was trained for topic similarity, not polarity; with few labels a "
    "handful of words is all TF-IDF can see, and luck in the draw decides.",
    "textures": "the photos' patches differ in brightness and contrast enough for raw pixels "
    "to separate them.",
}


def prepare_out_dir(out=None):
    """Create (or check) the output folder; never deletes or overwrites anything.

    ``out=None``: a new ``./sktransfer-demo-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... when that
    exists). A given folder may exist, but not hold any of :data:`OUTPUT_NAMES`.
    """
    if out is None:
        base = os.path.abspath(time.strftime("sktransfer-demo-%Y%m%d-%H%M%S"))
        path, k = base, 1
        while True:
            try:
                os.makedirs(path)
                return path
            except FileExistsError:
                k += 1
                path = f"{base}-{k}"
    path = os.path.abspath(os.fspath(out))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"--out {path} exists and is not a folder")
    os.makedirs(path, exist_ok=True)
    taken = [name for name in OUTPUT_NAMES.values() if os.path.lexists(os.path.join(path, name))]
    if taken:
        raise FileExistsError(
            f"{path} already holds {', '.join(taken)} (from an earlier demo?); the demo never "
            "overwrites files: pass another --out folder, or none for a fresh one"
        )
    return path


def _is_baseline(method):
    return "baseline" in method


def verdicts(curve):
    """One line per data set: the gain at the smallest label count, and every point where the
    baseline is at least as good as sktransfer, with the reason."""
    notes = []
    for dataset in dict.fromkeys(r["dataset"] for r in curve):
        rows = [r for r in curve if r["dataset"] == dataset]
        lost = []
        for n in sorted({r["n_per_class"] for r in rows}):
            at = [r for r in rows if r["n_per_class"] == n]
            ours = [r for r in at if not _is_baseline(r["method"])]
            base = [r for r in at if _is_baseline(r["method"])]
            if not ours or not base:
                continue
            best, baseline = max(ours, key=lambda r: r["accuracy"]), base[0]
            if n == min(r["n_per_class"] for r in rows):
                gap = best["accuracy"] - baseline["accuracy"]
                who = (
                    "sktransfer" if gap > 0 else "the no-transfer baseline" if gap < 0 else "nobody"
                )
                notes.append(
                    f"{dataset}, {n}/class: {best['method']} {best['accuracy']:.3f} vs "
                    f"{baseline['method']} {baseline['accuracy']:.3f} "
                    f"({who} ahead by {abs(gap):.3f})"
                )
            if baseline["accuracy"] >= best["accuracy"]:
                lost.append(f"{n}/class ({baseline['accuracy']:.3f} vs {best['accuracy']:.3f})")
        if lost:
            why = WHY_BASELINE_WINS.get(dataset, "its input is far from the pretraining data.")
            notes.append(
                f"{dataset}: the no-transfer baseline wins or ties at {', '.join(lost)}. Why: {why}"
            )
    return notes


def write_results(results, out_dir):
    path = os.path.join(out_dir, OUTPUT_NAMES["results"])
    with open(path, "x", encoding="utf-8") as fh:  # "x": never overwrite
        json.dump(results, fh, indent=2, default=str)
        fh.write("\n")
    return path


def print_curve(curve):
    """The curve as a table: one line per data set and method, one column per label count."""
    for dataset in dict.fromkeys(r["dataset"] for r in curve):
        rows = [r for r in curve if r["dataset"] == dataset]
        counts = sorted({r["n_per_class"] for r in rows})
        print(f"\n{dataset}: test accuracy by labelled examples per class")
        print(f"  {'method':<40}" + "".join(f"{n:>8}" for n in counts))
        for method in dict.fromkeys(r["method"] for r in rows):
            acc = {r["n_per_class"]: r["accuracy"] for r in rows if r["method"] == method}
            cells = "".join(f"{acc[n]:>8.3f}" if n in acc else f"{'-':>8}" for n in counts)
            print(f"  {method:<40}{cells}")
    print()


def _style(method):
    """One colour per kind of model on every panel; baselines dashed grey."""
    if _is_baseline(method):
        return {"color": "0.45", "linestyle": "--"}
    return {"color": "C1" if "fine-tuned" in method else "C0", "linestyle": "-"}


def write_plot(curve, out_dir, say=print):
    """``demo_curve.png``: one panel per data set, accuracy against labels per class (log x)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install 'sktransfer[plot]'): no demo_curve.png")
        return None
    datasets = list(dict.fromkeys(r["dataset"] for r in curve))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 4.8), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in curve if r["dataset"] == dataset]
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["n_per_class"], r["accuracy"]) for r in rows if r["method"] == method)
            ax.plot(*zip(*pts), marker="o", label=method, **_style(method))
        counts = sorted({r["n_per_class"] for r in rows})
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        ax.set_title(dataset)
        ax.set_xlabel("labelled examples per class")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        # below the panel: a legend inside covered the curves (Rotten Tomatoes' frozen line)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    fig.tight_layout()
    path = os.path.join(out_dir, OUTPUT_NAMES["curve_png"])
    with open(path, "xb") as fh:  # never overwrite
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path
