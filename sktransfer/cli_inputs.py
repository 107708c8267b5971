"""Inputs of ``sktransfer predict``: enumerate, count, guard and validate items.

Each INPUT is classified up front (:func:`check_inputs`, cheap), then streamed
lazily as ``(id, item)`` pairs (:func:`iter_items`). An item that cannot be
read is a :class:`Bad` carrying its message. Before scoring, every item of a
batch is decoded (images, with the estimator's own :func:`load_rgb`) or checked
(texts) by :func:`prepare`: a failure marks that one item bad, so the good ones
are scored in a single call. Only the CLI imports this module.
"""

from __future__ import annotations

import csv
import glob
import os
import sys

TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
STDIN = "-"
_CHUNK_ROWS = 10_000
_COUNT_LIMIT = 64 * 2**20  # count the items of text/CSV inputs up to this size (progress total)
_DECODED_BUDGET = 256 * 2**20  # decoded pixels kept per batch; beyond, the estimator re-reads


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


class Bad:
    """An item that could not be read; carries the message to report."""

    def __init__(self, message):
        self.message = message


# --------------------------------------------------------------------------- enumeration
def _image_extensions():
    """:data:`sktransfer.inputs.images.IMAGE_EXTENSIONS`, imported when first needed: that
    module imports torch (2.6 s), which ``sktransfer --help`` and ``backbones`` never need."""
    from sktransfer.inputs.images import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _walk_images(root):
    extensions = _image_extensions()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(extensions):
                yield os.path.join(dirpath, name)


def _glob_files(spec):
    return (p for p in glob.iglob(spec, recursive=True) if os.path.isfile(p))


def _line_items(fh, label, base, modality):
    """``(id, item)`` per line of a binary stream; a line that is not UTF-8 is a bad item."""
    for lineno, raw in enumerate(fh, start=1):
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield f"{label}:{lineno}", Bad(f"line {lineno} is not valid UTF-8 ({exc.reason})")
            continue
        if modality == "image":
            if not text.strip():
                continue
            text = text if os.path.isabs(text) else os.path.join(base, text)
        yield f"{label}:{lineno}", text


def _lines(path, modality):
    with open(path, "rb") as fh:
        yield from _line_items(fh, path, os.path.dirname(path), modality)


def _stdin_lines(modality):
    """Lines of standard input: texts, or image paths relative to the working directory."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    yield from _line_items(stream, "<stdin>", "", modality)


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


def _pick_column(path, names, column):
    if column is None:
        if len(names) == 1:
            return names[0]
        raise UsageError(f"{path} has columns {names}: choose one with --column NAME")
    if column not in names:
        raise UsageError(f"{path} has no column {column!r} (columns: {names})")
    return column


def _table_values(path, column):
    """Stream one column of a CSV/TSV/Parquet file: ``str``, None (missing) or :class:`Bad`."""
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
                yield Bad("not valid UTF-8")
                continue
            yield value if value != "" else None


def _table(path, column, modality):
    base = os.path.dirname(path)
    for row, value in enumerate(_table_values(path, column)):
        ident = f"{path}:{row}"
        if value is None or isinstance(value, Bad):
            reason = "missing value" if value is None else value.message
            yield ident, Bad(f"row {row}: {reason}")
        elif modality == "image":
            value = str(value)
            yield ident, value if os.path.isabs(value) else os.path.join(base, value)
        else:
            yield ident, str(value)


def check_inputs(inputs, modality, column):
    """Classify every INPUT up front (cheap); raises :class:`UsageError` for bad ones."""
    plan = []
    if list(inputs).count(STDIN) > 1:
        raise UsageError("'-' (standard input) can be given only once")
    for spec in inputs:
        lower = spec.lower()
        if spec == STDIN:
            plan.append(("stdin", spec))
        elif os.path.isdir(spec):
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
    """``(id, item or Bad)`` for every input, lazily, in command-line order."""
    for kind, spec in plan:
        if kind == "dir":
            for path in _walk_images(spec):
                yield path, path
        elif kind == "glob":
            for path in _glob_files(spec):
                yield path, path
        elif kind == "table":
            yield from _table(spec, column, modality)
        elif kind == "lines":
            yield from _lines(spec, modality)
        elif kind == "stdin":
            yield from _stdin_lines(modality)
        else:
            yield spec, spec


def _count_lines(path, modality):
    if os.path.getsize(path) > _COUNT_LIMIT:
        return None
    with open(path, "rb") as fh:
        if modality == "image":  # blank lines are skipped
            return sum(1 for line in fh if line.strip())
        data = fh.read()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _count_rows(path):
    if _is_parquet(path):
        return _parquet(path).metadata.num_rows  # free: the footer says
    if os.path.getsize(path) > _COUNT_LIMIT:
        return None
    fh, reader = _open_csv(path)
    with fh:
        return max(0, sum(1 for _ in reader) - 1)


def count_items(plan, modality):
    """The number of items, when cheap to know (for the progress bar's total); else None.

    Files count 1; directories and globs are walked (names only, nothing kept); text
    and CSV files up to 64 MiB are counted; Parquet row counts come from the footer.
    Standard input and larger text files are unknown: None.
    """
    total = 0
    for kind, spec in plan:
        if kind == "stdin":
            return None
        if kind == "dir":
            total += sum(1 for _ in _walk_images(spec))
        elif kind == "glob":
            total += sum(1 for _ in _glob_files(spec))
        elif kind in ("lines", "table"):
            n = _count_lines(spec, modality) if kind == "lines" else _count_rows(spec)
            if n is None:
                return None
            total += n
        else:
            total += 1
    return total


# --------------------------------------------------------------------------- output guard
def _same(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_not_input(output, inputs):
    """Refuse an ``-o`` file that is an input, or an image file inside an input directory.

    Paths are compared as real paths (symlinks resolved, hard links by inode). An
    image named by a list file, a table or a glob is guarded per item (:func:`prepare`).
    """
    if output in (None, STDIN):
        return
    real = os.path.realpath(output)
    for spec in inputs:
        if spec == STDIN:
            continue
        if os.path.isfile(spec) and _same(spec, output):
            raise UsageError(f"the output {output} is also an input: it would be overwritten")
        if os.path.isdir(spec) and output.lower().endswith(_image_extensions()):
            root = os.path.join(os.path.realpath(spec), "")
            if real.startswith(root):
                raise UsageError(
                    f"the output {output} lies inside the input directory {spec}, "
                    "where it would be read as an image"
                )


def file_identity(path):
    """``(st_dev, st_ino)`` of an existing regular file, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    import stat

    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


# --------------------------------------------------------------------------- validation
def _decode_image(path, guard):
    from sktransfer.data import load_rgb

    if guard is not None:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == guard:
            raise UsageError(f"the output file is also an input ({path}): it would be overwritten")
    return load_rgb(path)


def prepare(batch, modality, guard=None):
    """Decode (images) or check (texts) each item of a batch; a failure marks that item bad.

    Returns ``[(id, item or Bad)]``. Decoded images replace their paths (so they are
    decoded once) while the batch's decoded pixels stay under 256 MiB; later ones keep
    the path and are decoded again by the estimator. ``guard`` is the ``(dev, inode)``
    of the output file: an item that is that file is a usage error.
    """
    out, budget = [], _DECODED_BUDGET
    for ident, item in batch:
        if isinstance(item, Bad):
            out.append((ident, item))
        elif modality == "image" and isinstance(item, str):
            try:
                image = _decode_image(item, guard)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - any decoder failure is this item's
                if not isinstance(exc, ValueError):  # load_rgb's own errors name the path
                    exc = f"cannot read image file {item!r}: {type(exc).__name__}: {exc}"
                out.append((ident, Bad(str(exc))))
                continue
            size = image.width * image.height * 3
            keep = size <= budget
            budget -= size if keep else 0
            out.append((ident, image if keep else item))
        elif modality == "image" or isinstance(item, str):
            try:
                if isinstance(item, str):
                    item.encode("utf-8")
            except UnicodeEncodeError as exc:
                out.append((ident, Bad(f"not valid UTF-8 ({exc.reason})")))
                continue
            out.append((ident, item))
        else:
            out.append((ident, Bad(f"expected a text, got {type(item).__name__}")))
    return out
