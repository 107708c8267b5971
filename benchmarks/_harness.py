"""Measurement harness: machine description, interleaved timing, peak memory, result rows, files.

Nothing here imports ``sktransfer``; ``torch`` is imported only by :func:`machine_info`, to name
the GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VERSIONED_PACKAGES = ("torch", "torchvision", "transformers", "scikit-learn", "skorch", "numpy")

#: The top-level fields of a benchmark's JSON file (see :func:`write_results`).
PAYLOAD_KEYS = ("benchmark", "date", "mode", "duration_s", "machine", "error", "results")
#: ``python -m benchmarks --quick`` (every benchmark) must finish within 10 minutes.
QUICK_RUN_GOAL = "< 600"

_GOAL_RE = re.compile(r"^\s*(<=|>=|<|>|==)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# ----------------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _gpu_name() -> str | None:
    try:
        import torch
    except Exception:  # noqa: BLE001 - no torch, or a broken one: report no GPU
        return None
    try:
        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    except Exception:  # noqa: BLE001
        return None
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python, library versions (``None``: not installed), GPU if any."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()} ({platform.platform(terse=True)})",
        "python": platform.python_version(),
        "versions": _versions(),
        "gpu": _gpu_name(),
    }


def machine_summary(info: Mapping[str, Any]) -> str:
    """One line describing ``info`` (from :func:`machine_info`)."""
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items() if v)
    return (
        f"{info.get('cpu')}, {info.get('cores_usable')}/{info.get('cores')} cores, "
        f"{info.get('ram_gb')} GB RAM, GPU: {info.get('gpu') or 'none'}; {info.get('os')}; "
        f"Python {info.get('python')}; {versions}"
        + (f"; threads capped at {info['threads_limit']}" if info.get("threads_limit") else "")
    )


# -------------------------------------------------------------------------------------------- time
def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeats: int = 3,
    warmup: int = 1,
    *,
    collect: bool = True,
    timer: Callable[[], float] = time.perf_counter,
) -> dict[str, dict[str, Any]]:
    """Time candidates in one process, interleaved ``A B A B ...``, so that drift hits all equally.

    Each round calls every candidate once, in the given order; ``warmup`` untimed rounds come first.
    ``collect`` runs the garbage collector (untimed) before each call. Returns
    ``{name: {"median_s": float, "times_s": [float, ...]}}``.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            if collect:
                gc.collect()
            start = timer()
            fn()
            elapsed = timer() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return {name: {"median_s": statistics.median(ts), "times_s": ts} for name, ts in times.items()}


@contextlib.contextmanager
def limit_threads(n: int | None):
    """Cap BLAS/OpenMP pools (threadpoolctl) and torch's intra-op threads at ``n``; None: no change.

    On a small shared machine, 2+ BLAS threads can be many times slower than 1 when another process
    holds a core (threads spin waiting for each other), so thread counts are part of a measurement.
    """
    if not n:
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        with threadpool_limits(limits=n):
            if torch is not None:
                torch.set_num_threads(n)
            yield
    finally:
        if torch is not None and before:
            torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ memory
def peak_rss_mb() -> float:
    """This process's lifetime peak resident set size (``getrusage`` high-water mark), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (
        peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    )  # bytes on macOS, KiB elsewhere


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's VmHWM for this process (Linux >= 4.0); False if that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclasses.dataclass
class RssMeasurement:
    result: Any
    peak_mb: (
        float  # the process's resident size at its highest point while fn ran (or a lower bound)
    )
    baseline_mb: float  # resident size just before fn ran
    delta_mb: float  # peak_mb - baseline_mb: the extra memory fn needed at its peak
    method: (
        str  # "vmhwm-reset" (exact) or "ru_maxrss-delta" (lower bound, 0 if below an earlier peak)
    )


def measure_peak_rss(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> RssMeasurement:
    """Run ``fn(*args, **kwargs)`` in this process and report the peak resident memory it reached.

    On Linux the kernel's high-water mark is reset first (``/proc/self/clear_refs``), so
    ``peak_mb`` is the true peak while ``fn`` ran, however much the process used before. Elsewhere
    it falls back to the ``getrusage`` high-water mark, whose delta is only a lower bound (0 when
    ``fn`` stays below an earlier peak): run such measurements first, or in a fresh
    ``python -m benchmarks --only NAME`` process.
    """
    gc.collect()
    current = _proc_status_mb("VmRSS")
    if current is not None and _reset_peak_rss():
        result = fn(*args, **kwargs)
        peak = _proc_status_mb("VmHWM")
        if peak is not None:
            return RssMeasurement(result, peak, current, max(0.0, peak - current), "vmhwm-reset")
        before = current  # pragma: no cover - VmHWM vanished between two reads
    else:
        before = peak_rss_mb()
        result = fn(*args, **kwargs)
    after = peak_rss_mb()
    return RssMeasurement(result, after, before, max(0.0, after - before), "ru_maxrss-delta")


# ----------------------------------------------------------------------------------------- results
def meets_goal(value: Any, goal: str | None) -> bool | None:
    """Whether ``value`` meets ``goal`` (``"<= 1.2"``, ``"> 0.77"``, ...); ``None``: undecidable."""
    if goal is None or isinstance(value, bool):
        return None
    match = _GOAL_RE.match(goal)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if match is None or math.isnan(value):
        return None
    op, bound = match.group(1), float(match.group(2))
    return {
        "<=": value <= bound,
        ">=": value >= bound,
        "<": value < bound,
        ">": value > bound,
        "==": value == bound,
    }[op]


@dataclasses.dataclass
class Result:
    """One measured number; ``passed`` comes from ``goal`` unless given (``None``: no verdict)."""

    benchmark: str
    metric: str
    value: Any
    unit: str = ""
    goal: str | None = None
    passed: bool | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.passed is None:
            self.passed = meets_goal(self.value, self.goal)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        verdict = {True: "met", False: "NOT MET", None: ""}[self.passed]
        goal = f"  goal {self.goal}" if self.goal else ""
        return (
            f"{self.metric:<52} {format_value(self.value, self.unit):>14}{goal}  {verdict}".rstrip()
        )


class ResultList(list):
    """What ``run`` may return instead of a plain list: the rows, plus ``extra`` payload fields.

    ``extra`` (JSON-able, e.g. ``{"histories": {...}}``) is written into the benchmark's JSON next
    to ``results``; its keys must not collide with the payload's own (:data:`PAYLOAD_KEYS`).
    """

    def __init__(self, rows: Iterable[Result] = ()) -> None:
        super().__init__(rows)
        self.extra: dict[str, Any] = {}


def format_value(value: Any, unit: str = "") -> str:
    if value is None:
        text = "n/a"
    elif isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float) or hasattr(value, "dtype"):
        value = float(value)
        text = "n/a" if math.isnan(value) else f"{value:.4g}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit and text != "n/a" else text


def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy of ``obj``: numpy scalars/arrays to Python, NaN/inf to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy scalar or array
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically and durably (the library's temp-file + rename), 0644:
    results are meant to be read by anyone."""
    from sktransfer.fs.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, durable=True, mode=0o644) as fh:
        fh.write(text.encode("utf-8"))


def write_results(
    name: str,
    rows: Iterable[Result],
    info: Mapping[str, Any],
    *,
    results_dir: str | os.PathLike | None = None,
    mode: str | None = None,
    duration_s: float | None = None,
    error: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{results_dir}/{name}.json`` atomically (temp file + ``os.replace``); its path.

    ``extra``: more top-level fields (e.g. ``histories``); a key of the payload itself is refused.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"benchmark name {name!r} must match {_NAME_RE.pattern}")
    clash = set(extra or ()) & set(PAYLOAD_KEYS)
    if clash:
        raise ValueError(f"extra fields {sorted(clash)} would overwrite the payload's own")
    payload = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "duration_s": duration_s,
        "machine": dict(info),
        "error": dict(error) if error else None,
        "results": [r.to_dict() if isinstance(r, Result) else dict(r) for r in rows],
        **dict(extra or {}),
    }
    text = json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n"
    path = Path(results_dir or RESULTS_DIR) / f"{name}.json"
    _atomic_write_text(path, text)
    return path


def write_run_summary(
    mode: str,
    total_s: float,
    modules: Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any],
    *,
    results_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``{results_dir}/run_{mode}.json``: a complete run's total wall time, per benchmark.

    ``modules``: ``{NAME: {"status": "ok" | "failed" | "skipped", "duration_s": ..., ...}}``. The
    goal of a quick run is :data:`QUICK_RUN_GOAL`. The file has no ``benchmark`` field, so
    :func:`load_results` does not take it for a benchmark.
    """
    goal = QUICK_RUN_GOAL if mode == "quick" else None
    payload = {
        "run": mode,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "total_s": total_s,
        "goal": goal,
        "passed": meets_goal(total_s, goal),
        "machine": dict(info),
        "modules": {name: dict(m) for name, m in modules.items()},
    }
    path = Path(results_dir or RESULTS_DIR) / f"run_{mode}.json"
    _atomic_write_text(path, json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return path


def load_run_summaries(results_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """``{mode: payload}`` of the ``run_{mode}.json`` files in ``results_dir``."""
    out = {}
    for mode in ("quick", "full"):
        path = Path(results_dir or RESULTS_DIR) / f"run_{mode}.json"
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and payload.get("run") == mode:
            out[mode] = payload
    return out


def render_run_summary(summary: Mapping[str, Any]) -> list[str]:
    """Markdown lines: a complete run's total wall time and its per-benchmark times."""
    total, goal = summary.get("total_s"), summary.get("goal")
    verdict = {True: "met", False: "**NOT MET**", None: ""}[summary.get("passed")]
    goal_text = f" (goal {goal} s: {verdict})" if goal else ""
    lines = [
        f"Last complete {summary.get('run')} run ({summary.get('date')}): "
        f"**{format_value(total, 's')}** wall time in total{goal_text}.",
        "",
        "| benchmark | status | time |",
        "|---|---|---|",
    ]
    for name, m in (summary.get("modules") or {}).items():
        status = m.get("status") or "?"
        if m.get("reason"):
            status += f": {m['reason']}"
        seconds = format_value(m.get("duration_s"), "s")
        lines.append(f"| {_cell(name)} | {_cell(status)} | {seconds} |")
    return lines


def load_results(results_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every ``*.json`` payload in ``results_dir``, by benchmark name (unreadable ones skipped)."""
    out = []
    for path in sorted(Path(results_dir or RESULTS_DIR).glob("*.json")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and "benchmark" in payload:
            out.append(payload)
    return sorted(out, key=lambda p: p["benchmark"])


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(
    all_results: Iterable[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    info: Mapping[str, Any] | None = None,
    runs: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Markdown: one ``metric | value | goal | met?`` table per payload of ``write_results``.

    ``runs``: the run summaries (:func:`load_run_summaries`), shown first.
    """
    payloads = list(all_results.values()) if isinstance(all_results, Mapping) else list(all_results)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Benchmark results", "", f"Generated {now}."]
    if info:
        lines += ["", f"Machine: {machine_summary(info)}"]
    lines += [
        "",
        "Regenerate with `python -m benchmarks --quick` (or `--full`); see `benchmarks/README.md`.",
    ]
    for summary in (runs or {}).values():
        lines += [""] + render_run_summary(summary)
    for p in payloads:
        lines += ["", f"## {p.get('benchmark')}", ""]
        meta = [f"{p.get('mode') or '?'} run", str(p.get("date") or "date unknown")]
        if p.get("duration_s") is not None:
            meta.append(f"{p['duration_s']:.1f} s")
        lines.append("_" + ", ".join(meta) + "_")
        machine = p.get("machine")
        if machine and machine != info:
            lines += ["", f"Machine: {machine_summary(machine)}"]
        lines += render_payload_body(p)
    return "\n".join(lines) + "\n"


def render_rows_table(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: a ``metric | value | goal | met? [| notes]`` table of result rows."""
    rows = list(rows)
    if not rows:
        return []
    with_notes = any(r.get("notes") for r in rows)
    header = ["metric", "value", "goal", "met?"] + (["notes"] if with_notes else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "–"}[r.get("passed")]
        cells = [
            r.get("metric"),
            format_value(r.get("value"), r.get("unit") or ""),
            r.get("goal") or "–",
            met,
        ]
        if with_notes:
            cells.append(r.get("notes") or "")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render_payload_body(p: Mapping[str, Any]) -> list[str]:
    """Markdown lines: a payload's result table, or its failure with the traceback."""
    lines: list[str] = []
    rows = p.get("results") or []
    if rows:
        lines += [""] + render_rows_table(rows)
    error = p.get("error")
    if error:
        tb = str(error.get("traceback") or "").replace("```", "'''")
        lines += ["", f"**FAILED** — `{_cell(error.get('type'))}: {_cell(error.get('message'))}`"]
        if tb:
            lines += ["", "```", tb.rstrip(), "```"]
    elif not rows:
        lines += ["", "(no results)"]
    return lines


def write_markdown(text: str, path: str | os.PathLike | None = None) -> Path:
    """Atomically write the markdown report (default ``benchmarks/results/RESULTS.md``)."""
    path = Path(path) if path else RESULTS_DIR / "RESULTS.md"
    _atomic_write_text(path, text)
    return path
