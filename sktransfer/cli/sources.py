"""Reading one INPUT of ``sktransfer predict``: lines of a file or stream, cells of a table.

Every line or cell becomes exactly one item, so the output rows line up with the
input: a line that cannot be an item (not UTF-8, NUL bytes, blank where an image
path is expected) is a :class:`Bad` item with its line number, never dropped.

Memory is bounded per line: a line is read at most :data:`MAX_LINE_BYTES` (1 MiB)
at a time; the rest of a longer line is read in 64 KiB chunks and dropped. A text
model gets the first 1 MiB of such a line (it reads only its first ``max_length``
tokens anyway; :class:`Cuts` counts these lines for a note on stderr); an image
model gets a bad item (no path is that long).
"""

from __future__ import annotations

import csv
import datetime
import decimal
import itertools
import math
import os
import sys

from sktransfer.cli.errors import IOFailure, UsageError

MAX_LINE_BYTES = 2**20
_SKIP_CHUNK = 2**16
_CHUNK_ROWS = 10_000
_SCALARS = (str, int, float, decimal.Decimal, datetime.date, datetime.time, datetime.timedelta)


class Bad:
    """An item that could not be read; carries the message to report."""

    def __init__(self, message):
        self.message = message


class Cuts:
    """Texts longer than :data:`MAX_LINE_BYTES` that were cut: how many, and the first."""

    def __init__(self):
        self.count, self.first = 0, None

    def add(self, ident):
        self.count += 1
        self.first = self.first or ident

    def note(self):
        if not self.count:
            return None
        return (
            f"{self.count} text(s) longer than 1 MiB were cut to their first 1 MiB "
            f"(the first: {self.first}); a text model reads only its first max_length tokens"
        )


# --------------------------------------------------------------------------- lines
def read_lines(fh, limit=MAX_LINE_BYTES):
    """``(bytes, cut)`` per line of a binary stream, its line end removed.

    A line longer than ``limit`` bytes yields its first ``limit`` bytes and ``cut=True``;
    the rest of it is read in chunks and never held.
    """
    while raw := fh.readline(limit + 1):
        if raw.endswith(b"\n") or len(raw) <= limit:
            yield raw.rstrip(b"\r\n"), False
            continue
        while (chunk := fh.readline(_SKIP_CHUNK)) and not chunk.endswith(b"\n"):
            pass
        yield raw[:limit], True


def _decode(raw, cut):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if cut and exc.end == len(raw) and exc.start >= len(raw) - 3:  # a character cut
            return raw[: exc.start].decode("utf-8")
        raise


def _line_item(raw, cut, lineno, base, modality):
    """The item of one line: a text, an image path, or :class:`Bad`."""
    if b"\0" in raw:
        return Bad(f"line {lineno} holds NUL bytes: binary data, not a text or a path")
    try:
        text = _decode(raw, cut)
    except UnicodeDecodeError as exc:
        return Bad(f"line {lineno} is not valid UTF-8 ({exc.reason})")
    if modality != "image":
        return text
    if cut:
        return Bad(f"line {lineno} is longer than 1 MiB: not an image path")
    if not text.strip():
        return Bad(f"line {lineno} is blank: no image path")
    return text if os.path.isabs(text) else os.path.join(base, text)


def line_items(fh, label, base, modality, cuts=None):
    """``(id, item)`` per line of a binary stream; ids are ``label:lineno`` (from 1)."""
    for lineno, (raw, cut) in enumerate(read_lines(fh), start=1):
        ident = f"{label}:{lineno}"
        item = _line_item(raw, cut, lineno, base, modality)
        if cut and isinstance(item, str) and cuts is not None:
            cuts.add(ident)
        yield ident, item


def file_lines(path, modality, cuts=None, *, stream=False):
    """Lines of a file, or of a FIFO or character device (``stream``: ``<(cmd)``,
    ``/dev/null``). Relative image paths are relative to the file's folder; for a
    stream, as for standard input, to the working directory."""
    base = "" if stream else os.path.dirname(path)
    with open(path, "rb") as fh:
        yield from line_items(fh, path, base, modality, cuts)


def stdin_lines(modality, cuts=None):
    """Lines of standard input: texts, or image paths relative to the working directory."""
    if sys.stdin is None:
        raise IOFailure("cannot read standard input: it is closed")
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    yield from line_items(stream, "<stdin>", "", modality, cuts)


# --------------------------------------------------------------------------- tables
def is_parquet(path):
    return path.lower().endswith((".parquet", ".pq"))


def parquet_file(path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError(f"reading {path} needs pyarrow: pip install pyarrow") from exc
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError...: a bad INPUT
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot read {path}: not a valid Parquet file ({first})") from exc


def open_csv(path):
    """A csv reader; bytes that are not UTF-8 survive as surrogates, reported per value."""
    csv.field_size_limit(2**31 - 1)  # long texts in one cell are read (then cut to 1 MiB)
    fh = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    dialect = "excel-tab" if path.lower().endswith(".tsv") else "excel"
    return fh, csv.reader(fh, dialect)


def columns(path):
    if is_parquet(path):
        return parquet_file(path).schema_arrow.names
    fh, reader = open_csv(path)
    with fh:
        try:
            return next(reader, [])
        except csv.Error as exc:
            raise UsageError(f"cannot read {path}: not a valid CSV file ({exc})") from exc


def pick_column(path, names, column):
    if not names:
        raise UsageError(f"{path} is empty: it has no header row naming its columns")
    if column is None:
        if len(names) == 1:
            return names[0]
        raise UsageError(f"{path} has columns {names}: choose one with --column NAME")
    if column not in names:
        raise UsageError(f"{path} has no column {column!r} (columns: {names})")
    if names.count(column) > 1:
        raise UsageError(
            f"{path} has {names.count(column)} columns named {column!r}: rename them apart"
        )
    return column


def _table_values(path, column):
    """Stream one column of a CSV/TSV/Parquet file (raw values)."""
    if is_parquet(path):
        pf = parquet_file(path)
        column = pick_column(path, pf.schema_arrow.names, column)
        for batch in pf.iter_batches(batch_size=_CHUNK_ROWS, columns=[column]):
            yield from batch.column(0).to_pylist()
        return
    fh, reader = open_csv(path)
    with fh:
        header = next(reader, [])
        index = header.index(pick_column(path, header, column))
        for record in reader:
            yield record[index] if index < len(record) else ""


def _missing(value):
    if value is None or (isinstance(value, str) and value == ""):
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, decimal.Decimal) and value.is_nan()


def _cell(value, row):
    """A CSV/Parquet cell as a ``str``, or :class:`Bad` (missing, NaN, not a scalar)."""
    if _missing(value):
        return Bad(f"row {row}: missing value")
    if isinstance(value, bytes) or not isinstance(value, _SCALARS):
        return Bad(f"row {row}: a {type(value).__name__} value, not a text or a path")
    text = value if isinstance(value, str) else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Bad(f"row {row}: not valid UTF-8")
    return text


def table_items(path, column, modality, cuts=None):
    """``(id, item)`` per row of a table's column; ids are ``path:row`` (from 0)."""
    base = os.path.dirname(path)
    values = _table_values(path, column)
    for row in itertools.count():
        try:
            value = next(values)
        except StopIteration:
            return
        except (csv.Error, ValueError, OSError) as exc:  # a corrupt page, a bad quote
            raise IOFailure(f"cannot read {path} (row {row}): {exc}") from exc
        ident, item = f"{path}:{row}", _cell(value, row)
        if isinstance(item, str) and len(item) > MAX_LINE_BYTES:
            if modality == "image":
                item = Bad(f"row {row}: longer than 1 MiB: not an image path")
            else:
                item = item[:MAX_LINE_BYTES]
                if cuts is not None:
                    cuts.add(ident)
        if modality == "image" and isinstance(item, str) and not os.path.isabs(item):
            item = os.path.join(base, item)
        yield ident, item
