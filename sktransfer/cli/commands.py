"""The ``sktransfer`` command line: ``predict``, ``backbones``, ``demo``.

``sktransfer predict MODEL INPUT...`` streams inputs through a fitted model in
batches and writes ``id,prediction[,proba_<class>...]`` CSV rows as it goes, so
memory stays flat however many items there are. A multi-label model's
``prediction`` lists its predicted labels separated by ``;`` (empty: no label); a
regressor writes ``prediction`` (1-D ``y``) or ``prediction_0..k-1`` (k outputs),
and ``--proba`` is a usage error for it. INPUT ``-`` reads standard
input, one item per line (a text, or an image path); so do a FIFO and a
character device (``<(cmd)``, ``/dev/null``). Each item is decoded (images) or
checked (texts) before its batch is scored in one call: an item that cannot be
read (an unreadable image, a line that is not UTF-8, a blank line where an image
path belongs, a missing value) is reported on stderr and gets a row with an
empty prediction, so rows line up with the input. A line is read at most 1 MiB at
a time (:mod:`sktransfer.cli.sources`).

Safety: MODEL is read with :func:`sktransfer.load` (no code runs). A joblib or
pickle file is only loaded with ``--allow-pickle``, because unpickling runs code
from the file; a ``.skt`` or zip file is never unpickled. No file the command
reads is ever written: an ``-o`` (or a redirected standard output) that is MODEL,
an input or the file on standard input, also through a symlink or hard link, is
refused (:mod:`sktransfer.cli.output`), as is replacing an existing binary file.
``-o FILE`` is written to a temporary file beside it and renamed at the end, so
FILE holds either its old content or the complete new one, also after Ctrl-C,
SIGTERM or SIGHUP.

``--threads`` defaults to 1 (``benchmarks/bench_cli.py``, shared 2-core machine):
with another busy process, more threads than free cores score slower, not faster
(README.md quotes the measured ratio). The worst case of 1 is bounded; that of all
cores is not. Pass ``--threads N`` on a dedicated machine (at most 4 per CPU).

Exit status: see :data:`sktransfer.cli.errors.EXIT_HELP` (also in ``--help``). A
command never ends in a traceback: every failure is one line on stderr and one
of those statuses (:func:`sktransfer.cli.errors.classify`); 0 every item scored,
1 some items could not be read, 2 usage error, 3 the model failed, 4 an input or
output error (disk full), 5 out of threads or memory, 70 a bug, 129/130/143 a
signal (HUP, Ctrl-C, TERM), 141 standard output closed early.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback

from sktransfer.cli.errors import (
    EXIT_CLOSED_PIPE,
    EXIT_HELP,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    EXIT_SCORING,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    IOFailure,
    ScoringError,
    UsageError,
    classify,
)
from sktransfer.cli.inputs import check_inputs, count_items, iter_items
from sktransfer.cli.model import (
    THREADS_PER_CPU,
    bound_native_pools,
    load_model,
    max_threads,
    probe_threads,
    thread_limit,
)
from sktransfer.cli.output import (
    SafeErr,
    check_output,
    flush_stdout,
    isatty,
    open_output,
    print_out,
    quiet_stdout,
    signals_unwind,
)
from sktransfer.cli.scoring import DEFAULT_CHUNK, Columns, modality_of, predict_stream
from sktransfer.cli.sources import Cuts

__all__ = [
    "EXIT_CLOSED_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_IO",
    "EXIT_SCORING",
    "EXIT_USAGE",
    "ScoringError",
    "UsageError",
    "load_model",
    "main",
]

DEFAULT_THREADS = 1
MAX_BATCH_SIZE = 2**16


# --------------------------------------------------------------------------- predict
def _check_args(args):
    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise UsageError(f"--batch-size must be between 1 and {MAX_BATCH_SIZE}")
    if not 1 <= args.threads <= max_threads():
        raise UsageError(
            f"--threads must be between 1 and {max_threads()} ({THREADS_PER_CPU} per CPU "
            "this process may use)"
        )
    for path in [args.model, *args.inputs]:
        if "\0" in path:
            raise UsageError(f"{path!r}: a path cannot contain a NUL character")
    bound_native_pools(args.threads)  # first: before anything imports numpy
    probe_threads(max(1, 2 * (args.threads - 1)))  # the BLAS and OpenMP pools' workers
    check_output(args.output, args.model, args.inputs)


def _force_batch_size(est, size):
    """``--batch-size``: the model's forward micro-batch too."""
    params = est.get_params()
    name = "inference_batch_size" if "inference_batch_size" in params else "batch_size"
    if name in params:
        est.set_params(**{name: size})


def _cmd_predict(args):
    _check_args(args)
    from sktransfer.cache import config_context

    err, cuts = SafeErr(), Cuts()
    with contextlib.ExitStack() as stack:
        stack.enter_context(signals_unwind())  # SIGTERM/SIGHUP unwind like Ctrl-C
        out, guard = stack.enter_context(open_output(args.output))
        stack.enter_context(thread_limit(args.threads))
        # no cache: every item is seen once, and nothing is written beside what is read
        stack.enter_context(config_context(cache=False))
        est = load_model(
            args.model, device=args.device, quantize=args.quantize, allow_pickle=args.allow_pickle
        )
        Columns(est, args.proba, args.model)  # a usage error before any input is read
        modality = modality_of(est)
        plan = check_inputs(args.inputs, modality, args.column)
        if args.batch_size is not None:
            _force_batch_size(est, args.batch_size)
        progress = args.progress and isatty(sys.stderr)
        _, n_bad = predict_stream(
            est,
            iter_items(plan, modality, args.column, cuts),
            out,
            proba=args.proba,
            batch_size=args.batch_size or DEFAULT_CHUNK,
            progress=progress,
            total=count_items(plan, modality) if progress else None,
            guard=guard,
            err=err,
        )
    if cuts.note():
        err.line(f"sktransfer: note: {cuts.note()}")
    if n_bad:
        err.line(f"sktransfer: {n_bad} item(s) failed")
    return EXIT_SOME_FAILED if n_bad else EXIT_OK


# --------------------------------------------------------------------------- commands
def _cmd_backbones(args):
    from sktransfer import list_backbones

    rows = [
        (b.name, b.modality, b.source, "yes" if b.default else "", b.description)
        for b in list_backbones(args.modality)
    ]
    header = ("name", "modality", "source", "default", "description")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print_out("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + "  " + r[4])
    _print_sources(args.modality)
    return 0


def _print_sources(modality):
    """Each registered backbone source: its ``backbone=`` forms, install, weights."""
    from sktransfer.backbones.registry import list_sources

    sources = [s for s in list_sources() if modality in (None, s.modality)]
    if not sources:
        return
    print_out("\nSources (backbone= forms, how to install, where weights come from):")
    width = max(len(s.kind) for s in sources)
    for s in sources:
        indent = " " * (width + 10)
        print_out(f"{s.kind.ljust(width)}  {s.modality.ljust(6)}  spec:    {s.spec}")
        print_out(f"{indent}install: {s.install}")
        print_out(f"{indent}weights: {s.weights}")


def _cmd_demo(args):
    from sktransfer.demo.run import run_demo

    try:
        run_demo(verbose=args.verbose, out=args.out)
    except FileExistsError as exc:  # --out DIR already holds a demo's files: never overwritten
        raise UsageError(str(exc)) from exc
    except OSError as exc:  # a full disk, an unwritable --out
        where = f"{exc.filename}: " if exc.filename else ""
        raise IOFailure(f"demo: {where}{exc.strerror or exc}") from exc
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    """argparse, except that a failed write of ``--help`` or ``--version`` to standard
    output is reported (exit 4) rather than silently dropped (exit 0)."""

    def _print_message(self, message, file=None):
        if not message:
            return
        if file is None or file is sys.stderr:
            SafeErr().write(message)
        else:
            print_out(message, end="")


def _add_predict(sub):
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "predict",
        help="score images or texts with a saved model",
        description="Score images or texts with a saved model; CSV rows id,prediction[,proba_*]. "
        "Multi-label: prediction lists the predicted labels separated by ';'. Regression: "
        "prediction (1-D y) or prediction_0..prediction_<k-1> (k outputs).",
        epilog=EXIT_HELP,
        formatter_class=raw,
    )
    p.add_argument("model", help="a sktransfer.save file (or, with --allow-pickle, a joblib file)")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, directories (recursive; a FIFO, socket or device named like an "
        "image there is an unreadable item, never opened), globs (of files), a .txt file, a "
        "CSV/TSV/Parquet file (see --column), - for standard input, or a FIFO or device such "
        "as <(cmd) or /dev/null. Files, streams and stdin hold one item per line; every line "
        "is one output row (a blank one: an empty text, or for an image model an unreadable "
        "item). Lines are read up to 1 MiB; a longer text is cut to its first 1 MiB. A text "
        "model refuses image and binary files",
    )
    p.add_argument(
        "-o",
        "--output",
        help="output CSV, written to a temporary file and renamed at the end (default: "
        "stdout); refused when it is a file this command reads (MODEL, an input, the file on "
        "stdin, or a link to one) or an existing binary file",
    )
    p.add_argument(
        "--proba", action="store_true", help="add one proba_<class> column per class (classifiers)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"items per model call and per forward pass (default: {DEFAULT_CHUNK} items per "
        "call, texts sorted by length within it, each forward at the micro-batch the model "
        f"picks for the device: 4 images at 224 px on a CPU); 1 to {MAX_BATCH_SIZE}",
    )
    p.add_argument("--device", help="'auto', 'cpu', 'cuda', 'cuda:N' (default: the model's)")
    p.add_argument("--column", help="column of a CSV/Parquet input holding texts or image paths")
    p.add_argument("--quantize", choices=["dynamic"], help="int8 dynamic quantisation (CPU)")
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"CPU threads for torch and BLAS (default: {DEFAULT_THREADS}). On a shared machine "
        "more threads than free cores are slower, not faster, when another process is busy "
        "(benchmarks/bench_cli.py measures it; README.md quotes the ratio). Raise it on a "
        f"dedicated machine; 1 to {THREADS_PER_CPU} per CPU",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load joblib/pickle model files; this EXECUTES CODE from the file, so use it "
        "only for files from a trusted source (.skt and zip files are never unpickled)",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bar (shown only when stderr is a terminal)",
    )
    p.set_defaults(func=_cmd_predict)


def _add_backbones(sub):
    b = sub.add_parser("backbones", help="list the available backbones")
    b.add_argument("--modality", choices=["image", "text"])
    b.set_defaults(func=_cmd_backbones)


def _add_demo(sub):
    d = sub.add_parser("demo", help="a short offline demonstration")
    d.add_argument("-v", "--verbose", action="count", default=1)
    d.add_argument("-q", "--quiet", dest="verbose", action="store_const", const=0)
    d.add_argument(
        "--out",
        metavar="DIR",
        help="folder for results.json, demo_curve.png, the model, the test images and the "
        "predictions (default: a new sktransfer-demo-<time>-* folder in the system's temp "
        "directory; the run prints where); existing files are never overwritten",
    )
    d.set_defaults(func=_cmd_demo)


def build_parser():
    """The ``sktransfer`` parser: one sub-parser per command, each added by its helper."""
    from sktransfer import __version__

    parser = _Parser(
        prog="sktransfer",
        description="Pretrained image and text networks as sklearn estimators.",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sktransfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_predict, _add_backbones, _add_demo):
        add(sub)
    return parser


# --------------------------------------------------------------------------- main
def _dispatch(argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return int(args.func(args))


def _report(exc):
    """Print the one line that ``exc`` deserves; its exit status."""
    status, message = classify(exc)
    err = SafeErr()
    if message is not None:
        if status == EXIT_INTERNAL and os.environ.get("SKTRANSFER_TRACEBACK"):
            err.write("".join(traceback.format_exception(exc)))
        err.line(f"sktransfer: {message}" if status >= 128 else f"sktransfer: error: {message}")
    if status != EXIT_OK:  # what stdout still buffers must not fail at interpreter exit
        try:
            if sys.stdout is not None:
                sys.stdout.flush()
        except (OSError, ValueError):
            quiet_stdout()
    return status


def main(argv=None) -> int:
    """Run the command line; returns the exit status (see ``--help`` and the module
    docstring). It never raises: every failure is one line on stderr and its status."""
    try:
        status = _dispatch(argv)
        flush_stdout()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - each is classified, none ends in a traceback
        return _report(exc)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
