"""Benchmark runner: ``python -m benchmarks [--quick|--full] [--only NAME ...] [--list]``.

Discovers the modules ``benchmarks/bench_*.py``; each exposes ``NAME: str`` and
``run(quick: bool) -> list[Result]``. All selected benchmarks run in this one process, one after
the other. Each writes ``results/{NAME}.json`` (also when it raised: the error and a traceback
summary are recorded), then ``results/RESULTS.md`` is re-rendered from every JSON file there.
Exit status: 0 if all ran, 1 if any raised (the others still ran), 2 for an unknown ``--only`` name.
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
    RESULTS_DIR,
    Result,
    limit_threads,
    load_results,
    machine_info,
    machine_summary,
    render_markdown,
    write_markdown,
    write_results,
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


def run_benchmarks(
    modules: dict[str, Any],
    quick: bool,
    *,
    info: dict[str, Any],
    results_dir: Path,
    out: IO[str],
) -> dict[str, dict[str, Any]]:
    """Run each benchmark, print its rows when it finishes, write its JSON; ``{NAME: summary}``."""
    mode = "quick" if quick else "full"
    summary: dict[str, dict[str, Any]] = {}
    for name, module in modules.items():
        print(f"\n=== {name} ({mode}) ===", file=out, flush=True)
        start = time.perf_counter()
        error = None
        rows: list[Result] = []
        try:
            rows = _as_rows(name, module.run(quick))
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
        )
        summary[name] = {"rows": rows, "error": error, "duration_s": duration, "path": path}
    return summary


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
    return parser


def main(
    argv: list[str] | None = None, *, package: str = "benchmarks", out: IO[str] | None = None
) -> int:
    out = out or sys.stdout
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
    start = time.perf_counter()
    with limit_threads(args.threads):
        summary = run_benchmarks(chosen, args.quick, info=info, results_dir=results_dir, out=out)
    report = write_markdown(
        render_markdown(load_results(results_dir), info=info), results_dir / "RESULTS.md"
    )
    failed = [name for name, s in summary.items() if s["error"]]
    missed = [
        f"{name}:{r.metric}" for name, s in summary.items() for r in s["rows"] if r.passed is False
    ]
    print(
        f"\nRan {len(summary)} benchmark(s) in {time.perf_counter() - start:.1f} s; "
        f"report: {report}",
        file=out,
    )
    if missed:
        print(f"Goals not met: {', '.join(missed)}", file=out)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=out)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
