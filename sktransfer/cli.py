"""The ``sktransfer`` command line: ``predict``, ``backbones``, ``demo``.

``sktransfer predict MODEL INPUT...`` streams inputs through a fitted model in
batches and writes ``id,prediction[,proba_<class>...]`` CSV rows as it goes, so
memory stays flat however many items there are. A multi-label model's
``prediction`` lists its predicted labels separated by ``;`` (empty: no label); a
regressor writes ``prediction`` (1-D ``y``) or ``prediction_0..k-1`` (k outputs),
and ``--proba`` is a usage error for it. INPUT ``-`` reads standard
input, one item per line (a text, or an image path). Each item is decoded
(images) or checked (texts) before its batch is scored in one call: an item that
cannot be read (an unreadable image, a line that is not UTF-8, a missing value)
is reported on stderr and gets an empty prediction.

Safety: MODEL is read with :func:`sktransfer.load` (no code runs). A joblib or
pickle file is only loaded with ``--allow-pickle``, because unpickling runs code
from the file; a ``.skt`` or zip file is never unpickled. ``-o FILE`` is
written to a temporary file beside it and renamed at the end, so FILE holds
either its old content or the complete new one; an ``-o`` that is one of the
inputs (or an image file inside an input directory) is refused.

``--threads`` defaults to 1 (``benchmarks/bench_cli.py``, shared 2-core machine):
with one other busy process, 2 threads scored 2.8x slower than 1 (up to 5x under
the machine's usual load), while 1 thread on an idle machine gave up only the
1.4-1.6x that 2 cores can win. The worst case of 1 is bounded; that of all cores
is not. Pass ``--threads N`` on a dedicated machine.

Exit status (also in ``--help``): 0 every item scored; 1 some items could not
be read; 2 usage error (nothing scored, ``-o FILE`` untouched); 3 the model
failed on items that passed validation (scoring stops, ``-o FILE`` untouched);
130 interrupted (Ctrl-C, ``-o FILE`` untouched); 141 standard output was closed
early (``... | head``), which ends quietly, as a tool killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import stat
import sys
import zipfile

from sktransfer.cli_inputs import (
    UsageError,
    check_inputs,
    check_output_not_input,
    count_items,
    file_identity,
    iter_items,
)
from sktransfer.cli_scoring import DEFAULT_CHUNK, Columns, ScoringError, modality_of, predict_stream

__all__ = ["UsageError", "load_model", "main"]

DEFAULT_THREADS = 1
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_SCORING = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = 130, 141

EXIT_HELP = """\
exit status:
  0    every item scored
  1    some items could not be read (named on stderr; their rows have an empty prediction)
  2    usage error: nothing is scored and -o FILE is left untouched
  3    the model failed on items that passed validation (a bug, or out of memory):
       scoring stops and -o FILE is left untouched
  130  interrupted (Ctrl-C): -o FILE is left untouched
  141  standard output was closed early (e.g. '| head'): ends quietly, like a tool
       killed by SIGPIPE
"""


# --------------------------------------------------------------------------- model
def _claims_safe_format(path):
    return os.fspath(path).lower().endswith(".skt") or zipfile.is_zipfile(path)


def load_model(path, device=None, quantize=None, *, allow_pickle=False):
    """A fitted estimator from a :func:`sktransfer.save` file, or (opt-in) a joblib file.

    A file named ``.skt`` or that is a zip archive is only ever read as the safe
    format. Anything else is unpickled with joblib only when ``allow_pickle``:
    unpickling runs code from the file.
    """
    if not os.path.isfile(path):
        raise UsageError(f"model file not found: {path}")
    if device is not None:
        from sktransfer.training.batches import resolve_device

        try:
            resolve_device(device)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if _claims_safe_format(path):
        from sktransfer.io.safe_format import load

        try:
            return load(path, device=device, quantize=quantize)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise UsageError(
                f"cannot load model {path}: {exc} (a .skt or zip file is read only as a "
                "sktransfer.save file, never unpickled)"
            ) from exc
    if not allow_pickle:
        raise UsageError(
            f"cannot load model {path}: not a sktransfer.save file. --allow-pickle loads "
            "joblib/pickle files, which runs code from the file: use it for trusted sources only"
        )
    import joblib

    try:
        est = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad MODEL argument
        raise UsageError(
            f"cannot load model {path}: not a sktransfer.save file, and joblib failed "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if device is not None:
        est.set_params(device=device)
    if quantize == "dynamic":
        from sktransfer.deploy import quantize_dynamic

        est = quantize_dynamic(est)
    return est


@contextlib.contextmanager
def thread_limit(n):
    """Cap torch's and the BLAS pools' threads at ``n`` within a ``with`` block."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):  # (threadpoolctl: a scikit-learn dependency)
            yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- output
def _new_file_mode(target):
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


@contextlib.contextmanager
def open_output(path):
    """``(text stream, (dev, inode) or None)`` for ``-o``; a file is replaced atomically.

    Unwritable targets raise :class:`UsageError` here, before any work: the
    temporary file is created first. A device or FIFO is written in place.
    """
    from sktransfer.io.atomic import atomic_write

    if path in (None, "-"):
        yield sys.stdout, None
        return
    if os.path.isdir(path):
        raise UsageError(f"cannot write {path}: it is a directory")
    if os.path.exists(path) and not os.path.isfile(path):  # /dev/null, a FIFO: no rename
        try:
            fh = open(path, "w", newline="", encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        with fh:
            yield fh, None
        return
    target = os.path.realpath(path)  # through a symlink: replace the file, keep the link
    parent = os.path.dirname(target)
    with contextlib.ExitStack() as stack:
        try:
            raw = stack.enter_context(
                atomic_write(target, durable=True, mode=_new_file_mode(target))
            )
        except OSError as exc:
            why = f"no such directory {parent}" if not os.path.isdir(parent) else exc.strerror
            raise UsageError(f"cannot write {path}: {why or exc}") from exc
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="", errors="surrogateescape")
        try:
            yield text, file_identity(target)
            text.flush()
        finally:
            with contextlib.suppress(Exception):
                text.detach()  # atomic_write closes the file (and renames or removes it)


def _quiet_stdout():
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture it)
        pass


# --------------------------------------------------------------------------- commands
def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _cmd_predict(args):
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if args.threads < 1:
        raise UsageError("--threads must be >= 1")
    check_output_not_input(args.output, args.inputs)
    with open_output(args.output) as (out, guard), thread_limit(args.threads):
        est = load_model(
            args.model, device=args.device, quantize=args.quantize, allow_pickle=args.allow_pickle
        )
        Columns(est, args.proba, args.model)  # a usage error before any input is read
        modality = modality_of(est)
        plan = check_inputs(args.inputs, modality, args.column)
        if args.batch_size is not None:  # forced: the model's forward micro-batch too
            params = est.get_params()
            name = "inference_batch_size" if "inference_batch_size" in params else "batch_size"
            if name in params:
                est.set_params(**{name: args.batch_size})
        progress = args.progress and _isatty(sys.stderr)
        total = count_items(plan, modality) if progress else None
        from sktransfer.cache import config_context

        with config_context(cache=False):  # every item is seen once: caching would only grow memory
            _, n_bad = predict_stream(
                est,
                iter_items(plan, modality, args.column),
                out,
                proba=args.proba,
                batch_size=args.batch_size or DEFAULT_CHUNK,
                progress=progress,
                total=total,
                guard=guard,
            )
    if n_bad:
        print(f"sktransfer: {n_bad} item(s) failed", file=sys.stderr)
    return EXIT_SOME_FAILED if n_bad else EXIT_OK


def _cmd_backbones(args):
    from sktransfer import list_backbones

    rows = [
        (b.name, b.modality, b.source, "yes" if b.default else "", b.description)
        for b in list_backbones(args.modality)
    ]
    header = ("name", "modality", "source", "default", "description")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)) + "  " + r[4])
    _print_sources(args.modality)
    return 0


def _print_sources(modality):
    """Each registered backbone source: its ``backbone=`` forms, install, weights."""
    from sktransfer.backbones.registry import list_sources

    sources = [s for s in list_sources() if modality in (None, s.modality)]
    if not sources:
        return
    print("\nSources (backbone= forms, how to install, where weights come from):")
    width = max(len(s.kind) for s in sources)
    for s in sources:
        indent = " " * (width + 10)
        print(f"{s.kind.ljust(width)}  {s.modality.ljust(6)}  spec:    {s.spec}")
        print(f"{indent}install: {s.install}")
        print(f"{indent}weights: {s.weights}")


def _cmd_demo(args):
    from sktransfer.demo import run_demo

    try:
        run_demo(verbose=args.verbose, out=args.out)
    except FileExistsError as exc:  # --out DIR already holds a demo's files: never overwritten
        raise UsageError(str(exc)) from exc
    return EXIT_OK


def build_parser():
    from sktransfer import __version__

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="sktransfer",
        description="Pretrained image and text networks as sklearn estimators.",
        epilog=EXIT_HELP,
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"sktransfer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
        help="image files, directories (recursive), globs, a .txt file (one item per line), "
        "a CSV/TSV/Parquet file (see --column), or - for standard input (one item per line)",
    )
    p.add_argument(
        "-o",
        "--output",
        help="output CSV, written to a temporary file and renamed at the end (default: stdout)",
    )
    p.add_argument(
        "--proba", action="store_true", help="add one proba_<class> column per class (classifiers)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"items per model call and per forward pass (default: {DEFAULT_CHUNK} items per "
        "call, texts sorted by length within it, each forward at the micro-batch the model "
        "picks for the device: 4 images at 224 px on a CPU)",
    )
    p.add_argument("--device", help="'auto', 'cpu', 'cuda', 'cuda:N' (default: the model's)")
    p.add_argument("--column", help="column of a CSV/Parquet input holding texts or image paths")
    p.add_argument("--quantize", choices=["dynamic"], help="int8 dynamic quantisation (CPU)")
    p.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"CPU threads for torch and BLAS (default: {DEFAULT_THREADS}). Measured on a shared "
        "2-core machine: with one other busy process, 2 threads scored 2.8x slower than 1 "
        "(up to 5x under load); idle, 2 threads were 1.4-1.6x faster. Raise it on a "
        "dedicated machine",
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
    b = sub.add_parser("backbones", help="list the available backbones")
    b.add_argument("--modality", choices=["image", "text"])
    b.set_defaults(func=_cmd_backbones)
    d = sub.add_parser("demo", help="a short offline demonstration")
    d.add_argument("-v", "--verbose", action="count", default=1)
    d.add_argument("-q", "--quiet", dest="verbose", action="store_const", const=0)
    d.add_argument(
        "--out",
        metavar="DIR",
        help="folder for results.json, demo_curve.png, the model, the test images and the "
        "predictions (default: a new ./sktransfer-demo-<time>/); existing files are never "
        "overwritten",
    )
    d.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"sktransfer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ScoringError as exc:
        print(f"sktransfer: error: {exc}", file=sys.stderr)
        return EXIT_SCORING
    except KeyboardInterrupt:
        print("sktransfer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away: stop quietly
        _quiet_stdout()
        return EXIT_CLOSED_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
