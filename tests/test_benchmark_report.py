"""Fast tests of the benchmark plots and the generated docs page, on small synthetic results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the repo root: `benchmarks` is not installed
from benchmarks import plots, report  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    Result,
    load_results,
    load_run_summaries,
    write_results,
    write_run_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CPU = {"cpu": "Test CPU", "cores": 2, "cores_usable": 2, "gpu": None, "versions": {"numpy": "2"}}
GPU = dict(CPU, gpu="Fake H100 (x1)")


def _history(n_epochs, best):
    return [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "valid_loss": 1.2 / e,
            "valid_acc": 0.6 + 0.05 * e,
            "dur": 1.0,
            "best": e == best,
        }
        for e in range(1, n_epochs + 1)
    ]


def _accuracy_rows():
    rows = []
    for ds, baseline, accs in (
        ("rotten_tomatoes", "tfidf_logreg", (0.73, 0.75, 0.79)),
        ("fashion_mnist", "pixel_logreg", (0.75, 0.76, 0.74)),
    ):
        for cfg, acc in zip(("frozen", "partial", "full"), accs):
            rows.append(
                Result("accuracy", f"{ds}/{cfg}/accuracy", acc, notes="workflow; model n=400")
            )
            rows.append(Result("accuracy", f"{ds}/{cfg}/fit_score_time", 3.0, "s"))
        rows.append(Result("accuracy", f"{ds}/full/gain_over_frozen", 100 * (accs[2] - accs[0]),
                           "pt", ">= 5" if ds == "rotten_tomatoes" else None))  # fmt: skip
        rows.append(Result("accuracy", f"{ds}/baseline_{baseline}/accuracy", 0.7))
        rows.append(Result("accuracy", f"{ds}/baseline_{baseline}_all_train/accuracy", 0.77))
    return rows


def _histories():
    return {
        f"{ds}/{cfg}": {
            "workflow": name,
            "params": {"freeze_depth": depth},
            "history": _history(3, 2),
        }
        for ds in ("rotten_tomatoes", "fashion_mnist")
        for cfg, name, depth in (
            ("partial", "freeze lower layers", -2),
            ("full", "full fine-tuning", 0),
        )
    }


def _grid_rows():
    rows = []
    for g, k, ours, theirs in ((4, 3, 1.1, 5.0), (12, 5, 1.3, 20.0), (24, 5, 1.6, 38.0)):
        rows.append(Result("cache", f"grid_cost/{g}x{k}/sktransfer", ours, "x"))
        rows.append(Result("cache", f"grid_cost/{g}x{k}/pipeline_memory", theirs, "x"))
        rows.append(
            Result(
                "cache", f"grid_cost/{g}x{k}/speedup_vs_pipeline_memory", theirs / ours, "x", ">= 1"
            )
        )  # fmt: skip  (a ratio, not a cost)
    return rows


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    write_results(
        "accuracy", _accuracy_rows(), CPU, results_dir=root, mode="quick", duration_s=12.0,
        extra={"histories": _histories()},
    )  # fmt: skip
    write_results("cache", _grid_rows(), CPU, results_dir=root, mode="quick", duration_s=5.0)
    error = {"type": "RuntimeError", "message": "boom", "traceback": "Traceback\nRuntimeError"}
    write_results("broken", [], CPU, results_dir=root, mode="quick", error=error)
    write_run_summary(
        "quick", 321.5, {"accuracy": {"status": "ok", "duration_s": 12.0},
                         "gpu": {"status": "skipped", "reason": "needs a CUDA GPU",
                                 "duration_s": 0.0}}, CPU, results_dir=root,
    )  # fmt: skip
    gpu = root / "gpu"
    write_results(
        "gpu", [Result("gpu", "efficientnet_lite0/bf16_speedup", 3.1, "x", ">= 2.5")], GPU,
        results_dir=gpu, mode="quick",
    )  # fmt: skip
    return root


def test_histories_and_run_summary_round_trip(results):
    payload = {p["benchmark"]: p for p in load_results(results)}
    assert payload["accuracy"]["histories"]["rotten_tomatoes/full"]["history"][1]["best"] is True
    assert "run_quick" not in payload  # the run summary is not taken for a benchmark
    run = load_run_summaries(results)["quick"]
    assert run["total_s"] == 321.5 and run["passed"] is True and run["goal"] == "< 600"
    assert run["modules"]["gpu"]["status"] == "skipped"
    with pytest.raises(ValueError, match="overwrite"):
        write_results("x", [], CPU, results_dir=results, extra={"results": []})


def test_accuracy_by_dataset_splits_workflows_baselines():
    data = plots.accuracy_by_dataset({"results": [r.to_dict() for r in _accuracy_rows()]})
    assert list(data) == ["rotten_tomatoes", "fashion_mnist"]
    rt = data["rotten_tomatoes"]
    assert rt["workflows"] == {"frozen": 0.73, "partial": 0.75, "full": 0.79}
    assert rt["baselines"] == {"tfidf_logreg": 0.7, "tfidf_logreg_all_train": 0.77}
    assert rt["note"] == "model n=400" and rt["extras"] == {}


def test_make_plots_writes_pngs_and_removes_stale_ones(results, tmp_path):
    img = tmp_path / "img"
    written = plots.make_plots(results, img)
    assert set(written) == {"accuracy", "learning_curves", "grid_cost"}
    for path in written.values():
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5_000
    # no grid_cost rows any more: the plot is skipped and its old file removed
    (results / "cache.json").unlink()
    written = plots.make_plots(results, img)
    assert "grid_cost" not in written and not (img / "grid_cost.png").exists()
    assert plots.make_plots(tmp_path / "empty", img) == {}  # nothing recorded: nothing drawn
    assert plots.main(["--results-dir", str(results), "--img-dir", str(img)]) == 0


def test_grid_cost_points_sorted_by_size():
    points = plots.grid_cost_points([{"results": [r.to_dict() for r in _grid_rows()]}])
    assert set(points) == {"sktransfer", "pipeline_memory"}
    assert [p[2] for p in points["sktransfer"]] == ["4x3", "12x5", "24x5"]
    assert points["pipeline_memory"][0] == (12, 5.0, "4x3")


def test_report_rewrites_only_the_generated_block(results, tmp_path):
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text("# Benchmarks\n\nHand-written prose.\n")
    written = report.generate(results, docs, docs.parent / "img")
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written prose.\n")
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    # the machine, the run time, the goals, the accuracy pivot, every table, the embedded plots
    assert "CPU machine: Test CPU, 2 cores, no GPU" in text
    assert "**321.5 s** wall time in total (goal < 600 s: met)" in text
    assert "| accuracy | rotten_tomatoes/full/gain_over_frozen | 6 pt | >= 5 | yes |" in text
    assert (
        "| Rotten Tomatoes (all-MiniLM-L6-v2) | TF-IDF + logistic regression | 0.7 | 0.77 | 0.73 | "
        "0.75 | **0.79** |" in text
    )
    assert "![accuracy by freeze_depth](img/accuracy.png)" in text
    assert "![learning curves](img/learning_curves.png)" in text
    assert "![grid-search cost vs grid size](img/grid_cost.png)" in text
    assert "**FAILED** — `RuntimeError: boom`" in text
    # the GPU folder: its own section named by its GPU, its own (here: no) plots
    assert "## Results: GPU machine: Fake H100 (x1)" in text
    assert "`benchmarks/results/gpu/`" in text and "efficientnet_lite0/bf16_speedup" in text
    for line in text.splitlines():
        if line.startswith("!["):
            assert (docs.parent / line.split("(")[1].rstrip(")")).is_file()
    assert docs in written and all(p.exists() for p in written)

    # regenerating keeps the prose, replaces the block (same results: same text)
    docs.write_text(text.replace("Hand-written prose.", "Edited prose."))
    report.generate(results, docs, docs.parent / "img")
    again = docs.read_text()
    assert "Edited prose." in again and again.count(report.BEGIN) == 1
    assert again == text.replace("Hand-written prose.", "Edited prose.")


def test_splice_appends_then_replaces():
    block = f"{report.BEGIN}\nnew\n{report.END}\n"
    assert report.splice("# T\n", block) == "# T\n\n" + block
    old = f"# T\n\n{report.BEGIN}\nold\n{report.END}\n\nAfter.\n"
    assert report.splice(old, block) == f"# T\n\n{block}After.\n"


def test_results_json_extra_field_is_plain_json(tmp_path):
    path = write_results(
        "a", [Result("a", "m", 1.0)], CPU, results_dir=tmp_path, extra={"histories": {"x": []}}
    )
    assert json.loads(path.read_text())["histories"] == {"x": []}


def test_accuracy_rows_of_another_benchmark_are_used_when_accuracy_is_absent():
    other = {"benchmark": "gpu_text", "results": [r.to_dict() for r in _accuracy_rows()]}
    none = {"benchmark": "cache", "results": [r.to_dict() for r in _grid_rows()]}
    assert plots.accuracy_payload([none, other]) is other
    accuracy = dict(other, benchmark="accuracy")
    assert plots.accuracy_payload([other, accuracy]) is accuracy
    assert plots.accuracy_payload([none]) == {}


def test_strategies_verdict_is_level_within_one_std_and_behind_beyond():
    from benchmarks import strategies_table as st

    frozen = [0.70, 0.72, 0.74]  # mean 0.72, std 0.02
    assert "−2: -1.0 pt level" in st.verdict({"frozen": frozen, "partial": [0.70, 0.71, 0.72]})
    behind = st.verdict({"frozen": frozen, "partial": [0.69, 0.69, 0.69], "full": [0.8] * 3})
    assert "−2: -3.0 pt **behind**" in behind and "0: +8.0 pt level" in behind
    assert st.verdict({"partial": [0.5]}) == "—"  # no probe: no verdict
    cells = {
        "rotten_tomatoes/n32": {"metric": "accuracy", "scores": {"frozen": frozen,
                                "partial": [0.75] * 3, "partial_es": [0.73] * 3}},
        "fashion_mnist/n8": {"metric": "accuracy", "scores": {"frozen": frozen}},
    }  # fmt: skip
    table = st.render(cells).splitlines()
    assert table[2].startswith("| Fashion-MNIST") and table[3].startswith("| Rotten Tomatoes")
    assert "freeze_depth=-2 | −2: +3.0 pt level" in table[3]  # the winner, not partial_es
    assert "| +2.0 |" in st.render_early_stopping(cells)
    assert "Rotten Tomatoes | 32 | `freeze_depth=-2` | +3.0 | frozen probe |" in st.render_winners(
        cells
    )
