"""Benchmark runner: ``python -m benchmarks [--quick|--full] [--only NAME ...] [--list]``.

Discovers the modules ``benchmarks/bench_*.py``; each exposes ``NAME: str`` and
``run(quick: bool) -> list[Result]`` (or a ``ResultList``, whose ``extra`` fields go into the JSON),
and may expose ``available() -> str | None``: a reason string skips it (``skipped: <reason>``) and
leaves its JSON untouched, so that results recorded on another machine (a GPU) are kept.
All selected benchmarks run in this one process, one after the other. Each writes
``results/{NAME}.json`` (also when it raised: the error and a traceback summary are recorded), then
``results/RESULTS.md`` is re-rendered from every JSON file there. A run of every benchmark also
writes ``results/run_{quick|full}.json`` (total wall time, per-benchmark times). When the results
go to ``benchmarks/results/`` (or a folder inside it), the plots in ``docs/img/`` and the generated
part of ``docs/benchmarks.md`` are rebuilt too (``benchmarks/report.py``; ``--no-docs`` skips it).
Exit status: 0 if all ran, 1 if any raised (the others still ran) or the report failed, 2 for an
unknown ``--only`` name.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

from benchmarks._harness import (
    QUICK_RUN_GOAL,
    RESULTS_DIR,
    Result,
    format_value,
    limit_threads,
    load_results,
    load_run_summaries,
    machine_info,
    machine_summary,
    meets_goal,
    render_markdown,
    write_markdown,
    write_results,
    write_run_summary,
)

PREFIX = "bench_"
TRACEBACK_LINES = 25


class ImportFailure:
    """Stands in for a ``bench_*`` module that failed to import; running it re-raises the error."""

    def __init__(self, modname: str, exc: BaseException) -> None:
        self.__name__ = modname
        self.NAME = modname.rsplit(".", 1)[-1].removeprefix(PREFIX)
        self.exc = exc

    def run(self, quick: bool) -> list[Result]:
        raise self.exc


def discover(package: str = "benchmarks") -> dict[str, Any]:
    """``{NAME: module}`` for every ``bench_*`` module of ``package``, in file-name order.

    A module that fails to import is returned as an :class:`ImportFailure`: reported, not fatal.
    """
    pkg = importlib.import_module(package)
    found: dict[str, Any] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith(PREFIX):
            continue
        modname = f"{package}.{info.name}"
        try:
            module: Any = importlib.import_module(modname)
            name = module.NAME
            if not isinstance(name, str) or not callable(getattr(module, "run", None)):
                raise TypeError(
                    f"{modname} must define NAME: str and run(quick: bool) -> list[Result]"
                )
        except Exception as exc:  # noqa: BLE001 - reported as a failed benchmark
            module = ImportFailure(modname, exc)
            name = module.NAME
        if name in found:
            module = ImportFailure(
                modname, ValueError(f"duplicate benchmark NAME {name!r} in {modname}")
            )
            name = f"{name}__{info.name}"
        found[name] = module
    return found


def select(modules: dict[str, Any], only: list[str] | None) -> dict[str, Any]:
    """The benchmarks named in ``only`` (``NAME`` or module file name); KeyError if unknown."""
    if not only:
        return dict(modules)
    by_file = {getattr(m, "__name__", "").rsplit(".", 1)[-1]: n for n, m in modules.items()}
    chosen: dict[str, Any] = {}
    for want in only:
        name = want if want in modules else by_file.get(want) or by_file.get(PREFIX + want)
        if name is None:
            raise KeyError(want)
        chosen[name] = modules[name]
    return chosen


def _error_record(exc: BaseException) -> dict[str, str]:
    lines = (
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip().splitlines()
    )
    if len(lines) > TRACEBACK_LINES:
        lines = ["..."] + lines[-TRACEBACK_LINES:]
    return {"type": type(exc).__name__, "message": str(exc), "traceback": "\n".join(lines)}


def _as_rows(name: str, rows: Any) -> list[Result]:
    if rows is None:
        return []
    out = []
    for row in rows:
        if isinstance(row, dict):
            row = Result(**{"benchmark": name, **row})
        if not isinstance(row, Result):
            raise TypeError(f"benchmark {name!r} returned {type(row).__name__}, expected Result")
        out.append(row)
    return out


def _unavailable(module: Any) -> str | None:
    """The reason ``module`` cannot run here (its ``available()``), or None."""
    available = getattr(module, "available", None)
    if not callable(available):
        return None
    reason = available()
    return None if reason is None else str(reason)


def run_benchmarks(
    modules: dict[str, Any],
    quick: bool,
    *,
    info: dict[str, Any],
    results_dir: Path,
    out: IO[str],
) -> dict[str, dict[str, Any]]:
    """Run each benchmark, print its rows when it finishes, write its JSON; ``{NAME: summary}``.

    A summary has ``status`` (``"ok"``, ``"failed"`` or ``"skipped"``), ``rows``, ``error``,
    ``duration_s``, ``path`` (None when skipped) and, when skipped, ``reason``.
    """
    mode = "quick" if quick else "full"
    summary: dict[str, dict[str, Any]] = {}
    for name, module in modules.items():
        print(f"\n=== {name} ({mode}) ===", file=out, flush=True)
        start = time.perf_counter()
        error = None
        rows: list[Result] = []
        extra: dict[str, Any] = {}
        try:
            reason = _unavailable(module)
            if reason is not None:
                print(f"  skipped: {reason}", file=out, flush=True)
                summary[name] = {
                    "status": "skipped", "reason": reason, "rows": [], "error": None,
                    "duration_s": time.perf_counter() - start, "path": None,
                }  # fmt: skip
                continue
            output = module.run(quick)
            extra = dict(getattr(output, "extra", None) or {})
            rows = _as_rows(name, output)
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the others
            error = _error_record(exc)
        duration = time.perf_counter() - start
        for row in rows:
            print("  " + row.format(), file=out, flush=True)
        if error:
            print(
                f"  FAILED after {duration:.1f} s:\n" + _indent(error["traceback"]),
                file=out,
                flush=True,
            )
        else:
            print(f"  ({duration:.1f} s)", file=out, flush=True)
        path = write_results(
            name,
            rows,
            info,
            results_dir=results_dir,
            mode=mode,
            duration_s=round(duration, 3),
            error=error,
            extra=extra,
        )
        summary[name] = {
            "status": "failed" if error else "ok", "rows": rows, "error": error,
            "duration_s": duration, "path": path,
        }  # fmt: skip
    return summary


def _print_goals(summary: dict[str, dict[str, Any]], out: IO[str]) -> None:
    """Every row with a goal, one line each: the value, the goal, met or not."""
    goals = [(name, r) for name, s in summary.items() for r in s["rows"] if r.goal]
    if not goals:
        return
    print("\nGoals:", file=out)
    for name, r in goals:
        verdict = {True: "met", False: "NOT MET", None: "?"}[r.passed]
        value = format_value(r.value, r.unit)
        print(f"  {name + ':' + r.metric:<56} {value:>14}  goal {r.goal:<9} {verdict}", file=out)


def _docs_target(results_dir: Path) -> bool:
    """Whether results in ``results_dir`` feed the committed docs (the repo's results folder)."""
    root = Path(RESULTS_DIR).resolve()
    here = Path(results_dir).resolve()
    return here == root or root in here.parents


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", dest="quick", action="store_true", default=True, help="small subsets (default)"
    )
    mode.add_argument("--full", dest="quick", action="store_false", help="full data sets")
    parser.add_argument(
        "--only", nargs="+", action="extend", metavar="NAME", help="run only these benchmarks"
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="cap BLAS/OpenMP/torch threads at N"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--results-dir", type=Path, default=None, help=f"default: {RESULTS_DIR}")
    parser.add_argument(
        "--no-docs",
        action="store_true",
        help="do not rebuild docs/img/*.png and the generated part of docs/benchmarks.md",
    )
    return parser


def main(
    argv: list[str] | None = None, *, package: str = "benchmarks", out: IO[str] | None = None
) -> int:
    out = out or sys.stdout
    start = time.perf_counter()  # the run's wall time counts imports and machine probing too
    args = build_parser().parse_args(argv)
    modules = discover(package)
    if args.list:
        for name, module in modules.items():
            print(f"{name:<24} {getattr(module, '__name__', '')}", file=out)
        return 0
    try:
        chosen = select(modules, args.only)
    except KeyError as exc:
        print(
            f"unknown benchmark {exc.args[0]!r}; available: {', '.join(modules) or 'none'}",
            file=sys.stderr,
        )
        return 2
    results_dir = Path(args.results_dir or RESULTS_DIR)
    info = machine_info()
    info["threads_limit"] = args.threads
    print(f"Machine: {machine_summary(info)}", file=out, flush=True)
    with limit_threads(args.threads):
        summary = run_benchmarks(chosen, args.quick, info=info, results_dir=results_dir, out=out)
    total = time.perf_counter() - start
    mode = "quick" if args.quick else "full"
    if not args.only:  # every benchmark ran: this is the run's wall time
        modules_summary = {
            name: {
                "status": s["status"], "duration_s": round(s["duration_s"], 3),
                **({"reason": s["reason"]} if s.get("reason") else {}),
            }
            for name, s in summary.items()
        }  # fmt: skip
        write_run_summary(mode, round(total, 3), modules_summary, info, results_dir=results_dir)
    report = write_markdown(
        render_markdown(load_results(results_dir), info=info, runs=load_run_summaries(results_dir)),
        results_dir / "RESULTS.md",
    )
    failed = [name for name, s in summary.items() if s["error"]]
    skipped = [name for name, s in summary.items() if s["status"] == "skipped"]
    missed = [
        f"{name}:{r.metric}" for name, s in summary.items() for r in s["rows"] if r.passed is False
    ]
    _print_goals(summary, out)
    print(
        f"\nRan {len(summary) - len(skipped)} benchmark(s) in {total:.1f} s"
        + (f" ({len(skipped)} skipped: {', '.join(skipped)})" if skipped else "")
        + f"; report: {report}",
        file=out,
    )
    if not args.only and args.quick:
        verdict = {True: "met", False: "NOT MET", None: "?"}[meets_goal(total, QUICK_RUN_GOAL)]
        print(
            f"Quick run total wall time {total:.1f} s, goal {QUICK_RUN_GOAL} s: {verdict}", file=out
        )
    docs_failed = False
    if not args.no_docs and _docs_target(results_dir):
        try:
            from benchmarks import report as docs_report

            written = docs_report.generate()
            print("Docs: " + ", ".join(str(p) for p in written), file=out)
        except Exception as exc:  # noqa: BLE001 - the results are written; say what failed
            docs_failed = True
            print(f"Docs NOT rebuilt: {type(exc).__name__}: {exc}", file=out)
    if missed:
        print(f"Goals not met: {', '.join(missed)}", file=out)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=out)
    return 1 if failed or docs_failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
