"""The ``sktransfer`` command line: ``predict``, ``backbones``, ``demo``.

``sktransfer predict MODEL INPUT...`` streams inputs through a fitted model in
batches and writes ``id,prediction[,proba_<class>...]`` CSV rows as it goes, so
memory stays flat however many items there are. A bad item (an unreadable
image, a line that is not UTF-8, a missing value) is reported on stderr and gets
an empty prediction. Exit status: 0 all items scored, 1 some failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import itertools
import os
import sys

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
_CHUNK_ROWS = 10_000


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


class _Bad:
    """An item that could not be read; carries the message to report."""

    def __init__(self, message):
        self.message = message


# --------------------------------------------------------------------------- inputs
def _walk_images(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                yield os.path.join(dirpath, name)


def _lines(path, modality):
    """``(id, item)`` per line of a text file; a line that is not UTF-8 is a bad item."""
    base = os.path.dirname(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield f"{path}:{lineno}", _Bad(f"line {lineno} is not valid UTF-8 ({exc.reason})")
                continue
            if modality == "image":
                if not text.strip():
                    continue
                text = text if os.path.isabs(text) else os.path.join(base, text)
            yield f"{path}:{lineno}", text


def _is_parquet(path):
    return path.lower().endswith((".parquet", ".pq"))


def _parquet(path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
    return pq.ParquetFile(path)


def _open_csv(path):
    """A csv reader; bytes that are not UTF-8 survive as surrogates, reported per value."""
    csv.field_size_limit(2**31 - 1)  # long texts in one cell are fine
    fh = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    dialect = "excel-tab" if path.lower().endswith(".tsv") else "excel"
    return fh, csv.reader(fh, dialect)


def _columns(path):
    if _is_parquet(path):
        return _parquet(path).schema_arrow.names
    fh, reader = _open_csv(path)
    with fh:
        return next(reader, [])


def _table_values(path, column):
    """Stream one column of a CSV/TSV/Parquet file: ``str``, None (missing) or :class:`_Bad`."""
    if _is_parquet(path):
        pf = _parquet(path)
        column = _pick_column(path, pf.schema_arrow.names, column)
        for batch in pf.iter_batches(batch_size=_CHUNK_ROWS, columns=[column]):
            yield from batch.column(0).to_pylist()
        return
    fh, reader = _open_csv(path)
    with fh:
        header = next(reader, [])
        index = header.index(_pick_column(path, header, column))
        for record in reader:
            value = record[index] if index < len(record) else ""
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                yield _Bad("not valid UTF-8")
                continue
            yield value if value != "" else None


def _pick_column(path, names, column):
    if column is None:
        if len(names) == 1:
            return names[0]
        raise UsageError(f"{path} has columns {names}: choose one with --column NAME")
    if column not in names:
        raise UsageError(f"{path} has no column {column!r} (columns: {names})")
    return column


def _table(path, column, modality):
    base = os.path.dirname(path)
    for row, value in enumerate(_table_values(path, column)):
        ident = f"{path}:{row}"
        if value is None or isinstance(value, _Bad):
            reason = "missing value" if value is None else value.message
            yield ident, _Bad(f"row {row}: {reason}")
        elif modality == "image":
            value = str(value)
            yield ident, value if os.path.isabs(value) else os.path.join(base, value)
        else:
            yield ident, str(value)


def check_inputs(inputs, modality, column):
    """Classify every INPUT up front (cheap); raises :class:`UsageError` for bad ones."""
    plan = []
    for spec in inputs:
        lower = spec.lower()
        if os.path.isdir(spec):
            if modality != "image":
                raise UsageError(f"{spec} is a directory; a text model reads .txt or CSV files")
            plan.append(("dir", spec))
        elif os.path.isfile(spec):
            if lower.endswith(TABLE_EXTENSIONS):
                _pick_column(spec, _columns(spec), column)
                plan.append(("table", spec))
            elif lower.endswith(".txt") or modality == "text":
                plan.append(("lines", spec))
            else:
                plan.append(("file", spec))
        elif glob.has_magic(spec):
            if next(glob.iglob(spec, recursive=True), None) is None:
                raise UsageError(f"no file matches {spec!r}")
            if modality != "image":
                raise UsageError(f"{spec}: glob patterns select image files; this is a text model")
            plan.append(("glob", spec))
        else:
            raise UsageError(f"no such file or directory: {spec}")
    return plan


def iter_items(plan, modality, column):
    """``(id, item or _Bad)`` for every input, lazily, in command-line order."""
    for kind, spec in plan:
        if kind == "dir":
            for path in _walk_images(spec):
                yield path, path
        elif kind == "glob":
            for path in glob.iglob(spec, recursive=True):
                if os.path.isfile(path):
                    yield path, path
        elif kind == "table":
            yield from _table(spec, column, modality)
        elif kind == "lines":
            yield from _lines(spec, modality)
        else:
            yield spec, spec


# --------------------------------------------------------------------------- scoring
def load_model(path, device=None, quantize=None):
    """A fitted estimator from a :func:`sktransfer.save` file or a joblib/pickle file."""
    from sktransfer import persistence

    if not os.path.isfile(path):
        raise UsageError(f"model file not found: {path}")
    if device is not None:
        from sktransfer._base import resolve_device

        try:
            resolve_device(device)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if persistence.is_sktransfer_file(path):
        try:
            return persistence.load(path, device=device, quantize=quantize)
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"cannot load model {path}: {exc}") from exc
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


def _score(est, items):
    """Probabilities for ``items``; ``(proba rows, errors)`` with one entry per item."""
    try:
        return list(est.predict_proba(items)), [None] * len(items)
    except Exception:  # noqa: BLE001 - find the culprit item by item
        pass
    rows, errors = [], []
    for item in items:
        try:
            rows.append(est.predict_proba([item])[0])
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - reported, never fatal
            rows.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return rows, errors


def no_feature_cache():
    """Turn sktransfer's in-process feature cache off within a ``with`` block."""
    try:
        from sktransfer.cache import config_context
    except ImportError:  # pragma: no cover - a build without the cache
        return contextlib.nullcontext()
    return config_context(cache=False)


def _batches(iterable, size):
    it = iter(iterable)
    while batch := list(itertools.islice(it, size)):
        yield batch


def predict_stream(est, items, out, *, proba=False, batch_size=64, progress=True, err=None):
    """Score ``(id, item)`` pairs in batches and write CSV rows to ``out``.

    Returns
    -------
    (int, int)
        Number of items scored and number that failed.
    """
    from tqdm.auto import tqdm

    err = err or sys.stderr
    classes = list(est.classes_)
    writer = csv.writer(out)
    writer.writerow(["id", "prediction"] + ([f"proba_{c}" for c in classes] if proba else []))
    n_ok = n_bad = 0
    bar = tqdm(unit="item", file=err, disable=not progress, dynamic_ncols=True)
    try:
        for batch in _batches(items, batch_size):
            good = [(i, item) for i, (_, item) in enumerate(batch) if not isinstance(item, _Bad)]
            rows, errors = _score(est, [item for _, item in good]) if good else ([], [])
            result = {i: (row, e) for (i, _), row, e in zip(good, rows, errors)}
            for i, (ident, item) in enumerate(batch):
                row, error = result.get(i, (None, getattr(item, "message", None)))
                if row is None:
                    n_bad += 1
                    bar.write(f"sktransfer: error: {ident}: {error}", file=err)
                    writer.writerow([ident, ""] + ([""] * len(classes) if proba else []))
                    continue
                n_ok += 1
                label = classes[int(row.argmax())]
                writer.writerow([ident, label] + ([f"{p:.6g}" for p in row] if proba else []))
            out.flush()
            bar.update(len(batch))
    finally:
        bar.close()
    return n_ok, n_bad


# --------------------------------------------------------------------------- commands
def _cmd_predict(args):
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    est = load_model(args.model, device=args.device, quantize=args.quantize)
    if not hasattr(est, "predict_proba") or not hasattr(est, "classes_"):
        raise UsageError(f"{args.model} holds a {type(est).__name__}, not a fitted classifier")
    modality = getattr(est, "modality_", None) or getattr(est, "_modality", None)
    plan = check_inputs(args.inputs, modality, args.column)
    if "batch_size" in est.get_params():
        est.set_params(batch_size=args.batch_size)
    items = iter_items(plan, modality, args.column)
    out = sys.stdout if args.output in (None, "-") else open(args.output, "w", newline="")
    try:
        with no_feature_cache():  # every item is seen once: caching would only grow memory
            _, n_bad = predict_stream(
                est,
                items,
                out,
                proba=args.proba,
                batch_size=args.batch_size,
                progress=args.progress,
            )
    finally:
        if out is not sys.stdout:
            out.close()
    if n_bad:
        print(f"sktransfer: {n_bad} item(s) failed", file=sys.stderr)
    return 1 if n_bad else 0


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
    return 0


def _cmd_demo(args):
    from sktransfer.demo import run_demo

    result = run_demo(verbose=args.verbose)
    return result if isinstance(result, int) else 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="sktransfer", description="Pretrained image and text networks as sklearn estimators."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("predict", help="score images or texts with a saved model")
    p.add_argument("model", help="a sktransfer.save file or a joblib file")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, directories (recursive), globs, a .txt file (one item per line) "
        "or a CSV/TSV/Parquet file (see --column)",
    )
    p.add_argument("-o", "--output", help="output CSV (default: stdout)")
    p.add_argument("--proba", action="store_true", help="add one proba_<class> column per class")
    p.add_argument("--batch-size", type=int, default=64, help="items per batch (default: 64)")
    p.add_argument("--device", help="'auto', 'cpu', 'cuda', 'cuda:N' (default: the model's)")
    p.add_argument("--column", help="column of a CSV/Parquet input holding texts or image paths")
    p.add_argument("--quantize", choices=["dynamic"], help="int8 dynamic quantisation (CPU)")
    p.add_argument(
        "--threads", type=int, help="CPU threads for torch (default: torch's choice, all cores)"
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )
    p.set_defaults(func=_cmd_predict)
    b = sub.add_parser("backbones", help="list the available backbones")
    b.add_argument("--modality", choices=["image", "text"])
    b.set_defaults(func=_cmd_backbones)
    d = sub.add_parser("demo", help="a short offline demonstration")
    d.add_argument("-v", "--verbose", action="count", default=1)
    d.add_argument("-q", "--quiet", dest="verbose", action="store_const", const=0)
    d.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed items, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"sktransfer: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sktransfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
