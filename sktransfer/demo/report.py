"""What ``sktransfer demo`` writes and prints: the output folder, verdicts, JSON and the plot."""

from __future__ import annotations

import json
import math
import os
import tempfile
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
    "textures": "each photo's patches share a brightness, a contrast and a local pattern "
    "statistic (LBP), so a few patches per class already pin its texture descriptors down.",
}


def prepare_out_dir(out=None):
    """Create (or check) the output folder; never deletes or overwrites anything.

    ``out=None``: a new ``sktransfer-demo-YYYYmmdd-HHMMSS-<random>`` folder in the system's
    temp directory (:func:`tempfile.mkdtemp`: never the working directory, which under
    ``make demo`` is the repository). A given folder may exist, but not hold any of
    :data:`OUTPUT_NAMES`.
    """
    if out is None:
        return tempfile.mkdtemp(prefix=time.strftime("sktransfer-demo-%Y%m%d-%H%M%S-"))
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


def compare(ours, base):
    """sktransfer's row against a baseline's at one label count, draw by draw.

    Both rows hold the ``scores`` of the same seeded draws. Returns ``{diff, se, ahead, k,
    winner}``: the mean paired difference (ours - baseline), its standard error (None for one
    draw), in how many of the ``k`` draws ours scored higher, and ``"sktransfer"`` /
    ``"baseline"`` when the mean difference is more than twice its standard error (one draw:
    its sign), else ``None`` (within the spread of the draws).
    """
    a, b = ours.get("scores", [ours["accuracy"]]), base.get("scores", [base["accuracy"]])
    if len(a) != len(b):
        raise ValueError(f"{ours['method']} and {base['method']} ran different numbers of draws")
    diffs = [x - y for x, y in zip(a, b)]
    k, diff = len(diffs), sum(diffs) / len(diffs)
    se = None
    if k > 1:
        se = math.sqrt(sum((d - diff) ** 2 for d in diffs) / (k - 1) / k)
    bound = 0.0 if se is None else 2 * se
    winner = "sktransfer" if diff > bound else "baseline" if diff < -bound else None
    ahead = sum(d > 0 for d in diffs)
    return {"diff": diff, "se": se, "ahead": ahead, "k": k, "winner": winner}


def _pm(row):
    return f"{row['accuracy']:.3f} ± {row.get('std', 0.0):.3f}"


def verdicts(curve, chance=None):
    """Per data set: the headline at the smallest label count (sktransfer's best against the
    strongest baseline, draw by draw, with the spread), then the label counts where sktransfer
    is ahead, where there is no clear winner, and where the baseline is ahead, with the
    reason (:data:`WHY_BASELINE_WINS`)."""
    notes = []
    for dataset in dict.fromkeys(r["dataset"] for r in curve):
        rows = [r for r in curve if r["dataset"] == dataset]
        counts = sorted({r["n_per_class"] for r in rows})
        outcome = {"sktransfer": [], None: [], "baseline": []}
        for n in counts:
            at = [r for r in rows if r["n_per_class"] == n]
            ours = [r for r in at if not _is_baseline(r["method"])]
            base = [r for r in at if _is_baseline(r["method"])]
            if not ours or not base:
                continue
            best = max(ours, key=lambda r: r["accuracy"])
            strongest = max(base, key=lambda r: r["accuracy"])
            c = compare(best, strongest)
            outcome[c["winner"]].append(f"{n}/class" + ("" if c["k"] > 1 else " (one draw)"))
            if n != counts[0]:
                continue
            spread = (
                f"± {c['se']:.3f} (standard error; ahead in {c['ahead']} of {c['k']} draws)"
                if c["se"] is not None
                else "(one draw: no spread)"
            )
            who = {
                "sktransfer": "sktransfer ahead",
                "baseline": "the no-transfer baseline ahead",
                None: "no clear winner: the difference is within twice its standard error",
            }[c["winner"]]
            floor = f", chance {chance[dataset]:.3f}" if chance and dataset in chance else ""
            notes.append(
                f"{dataset}, {n}/class ({c['k']} draws{floor}): {best['method']} {_pm(best)}"
                f" vs the strongest baseline, {strongest['method']} {_pm(strongest)}; "
                f"difference {c['diff']:+.3f} {spread}: {who}."
            )
        parts = []
        for key, what in (
            ("sktransfer", "sktransfer ahead"),
            (None, "no clear winner (tied, or within the spread of the draws)"),
            ("baseline", "the no-transfer baseline ahead"),
        ):
            if outcome[key]:
                parts.append(f"{what} at {', '.join(outcome[key])}")
        line = f"{dataset}: " + "; ".join(parts) + "."
        if outcome["baseline"]:
            why = WHY_BASELINE_WINS.get(dataset, "its input is far from the pretraining data.")
            line += f" Why the baseline holds up: {why}"
        notes.append(line)
    return notes


def write_results(results, out_dir):
    path = os.path.join(out_dir, OUTPUT_NAMES["results"])
    with open(path, "x", encoding="utf-8") as fh:  # "x": never overwrite
        json.dump(results, fh, indent=2, default=str)
        fh.write("\n")
    return path


def print_curve(curve, chance=None):
    """The curve as a table: one line per data set and method, one column per label count,
    each cell the mean accuracy ± its standard deviation over the draws."""
    for dataset in dict.fromkeys(r["dataset"] for r in curve):
        rows = [r for r in curve if r["dataset"] == dataset]
        counts = sorted({r["n_per_class"] for r in rows})
        floor = f" (chance {chance[dataset]:.3f})" if chance and dataset in chance else ""
        print(f"\n{dataset}: test accuracy ± std over draws, by labelled examples per class{floor}")
        print(f"  {'method':<46}" + "".join(f"{n:>14}" for n in counts))
        draws = {r["n_per_class"]: r.get("repeats", 1) for r in rows}
        print(f"  {'(draws)':<46}" + "".join(f"{draws[n]:>14}" for n in counts))
        # baselines last (fine-tuning, measured at fewer counts, would come after them)
        for method in sorted(dict.fromkeys(r["method"] for r in rows), key=_is_baseline):
            got = {r["n_per_class"]: r for r in rows if r["method"] == method}
            cells = "".join(
                f"{got[n]['accuracy']:>7.3f} ±{got[n].get('std', 0.0):.3f}"
                if n in got
                else f"{'-':>14}"
                for n in counts
            )
            print(f"  {method:<46}{cells}")
    print()


def _style(method):
    """One colour per kind of model on every panel; baselines grey, dashed and dotted."""
    if _is_baseline(method):
        return {"color": "0.35" if "pixels" in method else "0.6", "linestyle": "--"}
    return {"color": "C1" if "fine-tuned" in method else "C0", "linestyle": "-"}


def write_plot(curve, out_dir, say=print, chance=None):
    """``demo_curve.png``: one panel per data set, accuracy against labels per class (log x),
    error bars of one standard deviation over the draws, chance as a dotted line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed (pip install 'sktransfer[plot]'): no demo_curve.png")
        return None
    datasets = list(dict.fromkeys(r["dataset"] for r in curve))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 5.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in curve if r["dataset"] == dataset]
        for method in sorted(dict.fromkeys(r["method"] for r in rows), key=_is_baseline):
            pts = sorted(
                (r["n_per_class"], r["accuracy"], r.get("std", 0.0))
                for r in rows
                if r["method"] == method
            )
            n, acc, std = zip(*pts)
            ax.errorbar(n, acc, yerr=std, marker="o", capsize=3, label=method, **_style(method))
        if chance and dataset in chance:
            ax.axhline(chance[dataset], color="0.5", linestyle=":", label="chance")
        counts = sorted({r["n_per_class"] for r in rows})
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        lows = [r["accuracy"] - r.get("std", 0.0) for r in rows]
        lows += [chance[dataset]] if chance and dataset in chance else []
        ax.set_ylim(max(0.0, min(lows) - 0.05), 1.0)  # accuracy never goes above 1
        ax.set_title(dataset)
        ax.set_xlabel("labelled examples per class")
        ax.set_ylabel("test accuracy (± std over draws)")
        ax.grid(alpha=0.3)
        # below the panel: a legend inside covered the curves (Rotten Tomatoes' frozen line)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    fig.tight_layout()
    path = os.path.join(out_dir, OUTPUT_NAMES["curve_png"])
    with open(path, "xb") as fh:  # never overwrite
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path
