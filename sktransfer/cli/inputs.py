"""Inputs of ``sktransfer predict``: classify, enumerate and count items.

Each INPUT is classified up front (:func:`check_inputs`, cheap: a ``stat``, the
first 8 KiB of a text file, the first match of a glob), then streamed lazily as
``(id, item)`` pairs (:func:`iter_items`). An item that cannot be read is a
:class:`~sktransfer.cli.sources.Bad` carrying its message. Only the CLI imports
this module.

What each kind of INPUT is:

* a directory: its image files, recursively, sorted (image models only); it must
  hold at least one. A FIFO, socket or device named like an image is an unreadable
  item (reported, never opened), so it cannot hang the run;
* a glob: the files it matches (directories skipped); it must match a file;
* a regular file: a table (``.csv``, ``.tsv``, ``.parquet``, ``.pq``), a list of
  items one per line (``.txt``, or any file for a text model), else one image. A
  text model refuses image files and files holding binary data (NUL bytes);
* a FIFO or character device (``<(cmd)``, ``/dev/fd/N``, ``/dev/null``) and ``-``
  (standard input): a stream of items, one per line.
"""

from __future__ import annotations

import glob
import os
import stat
import sys

from sktransfer.cli.errors import IOFailure, UsageError
from sktransfer.cli.sources import (
    Bad,
    columns,
    file_lines,
    is_parquet,
    open_csv,
    parquet_file,
    pick_column,
    read_lines,
    stdin_lines,
    table_items,
)

__all__ = ["Bad", "UsageError", "check_inputs", "count_items", "iter_items"]

TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
STDIN = "-"
_COUNT_LIMIT = 64 * 2**20  # count the items of text/CSV inputs up to this size (progress total)
_SNIFF = 8192
_BINARY_MAGIC = (
    *(b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*"),  # images
    *(b"PK\x03\x04", b"PK\x05\x06", b"\x80\x04\x95", b"\x80\x05\x95"),  # zip, pickle
)


# --------------------------------------------------------------------------- enumeration
def image_extensions():
    """:data:`sktransfer.inputs.images.IMAGE_EXTENSIONS`, imported when first needed: that
    module imports torch (2.6 s), which ``sktransfer --help`` and ``backbones`` never need."""
    from sktransfer.inputs.images import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _walk_images(root, unreadable=None):
    """Every file under ``root`` named like an image, sorted; not only regular ones (a
    FIFO is reported when it is about to be decoded, never opened). A folder that
    cannot be listed is appended to ``unreadable`` as ``(path, OSError)``."""
    extensions = image_extensions()
    onerror = None if unreadable is None else unreadable.append
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(extensions):
                yield os.path.join(dirpath, name)


def _dir_items(root):
    """``(id, path)`` per image of a folder; a sub-folder that cannot be listed is a bad
    item, not a silent gap."""
    errors = []
    for path in _walk_images(root, errors):
        while errors:
            exc = errors.pop(0)
            yield exc.filename, Bad(f"cannot list the folder: {exc.strerror or exc}")
        yield path, path
    for exc in errors:
        yield exc.filename, Bad(f"cannot list the folder: {exc.strerror or exc}")


def _glob_files(spec):
    return (p for p in glob.iglob(spec, recursive=True) if not os.path.isdir(p))


# --------------------------------------------------------------------------- classification
def _sniff(path):
    try:
        with open(path, "rb") as fh:
            return fh.read(_SNIFF)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _looks_binary(head):
    """An image or archive header; or NUL bytes in a head that is not UTF-8 (random
    bytes, a pickle) or that is more than 10% NUL (UTF-16). A stray NUL in UTF-8 text is
    that line's problem, not the file's."""
    if head.startswith(_BINARY_MAGIC):
        return True
    nuls = head.count(b"\0")
    if not nuls:
        return False
    if nuls * 10 > len(head):
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.end < len(head) or exc.start < len(head) - 3  # not just a cut character
    return False


def _refuse_binary(path, head, modality):
    """Refuse a list/text/CSV file that holds binary data (an image, a model, UTF-16)."""
    if _looks_binary(head):
        what = "a text model reads" if modality == "text" else "a list file holds"
        raise UsageError(
            f"{path} holds binary data (an image or archive header, or NUL bytes), not "
            f"UTF-8 text: {what} one item per line"
        )


def _regular_file(spec, modality, column):
    lower = spec.lower()
    table, lines = lower.endswith(TABLE_EXTENSIONS), lower.endswith(".txt") or modality == "text"
    if modality == "text" and not table and lower.endswith(image_extensions()):
        raise UsageError(
            f"{spec} is an image file, and this is a text model: it reads .txt files (one "
            "text per line), CSV/TSV/Parquet files (see --column) or - (standard input)"
        )
    if table or lines:
        head = _sniff(spec)  # also: is it readable at all?
        if not is_parquet(spec):
            _refuse_binary(spec, head, modality)
    if table:
        pick_column(spec, columns(spec), column)
        return "table"
    return "lines" if lines else "file"


def _directory(spec, modality):
    if modality != "image":
        raise UsageError(f"{spec} is a directory; a text model reads .txt or CSV files")
    if next(_walk_images(spec), None) is None:
        raise UsageError(
            f"no image file in the directory {spec} (looked for {', '.join(image_extensions())})"
        )
    return "dir"


def _glob(spec, modality):
    first = next(glob.iglob(spec, recursive=True), None)
    if first is None:
        raise UsageError(f"no file matches {spec!r}")
    if modality != "image":
        raise UsageError(f"{spec}: glob patterns select image files; this is a text model")
    if next(_glob_files(spec), None) is None:
        raise UsageError(
            f"{spec!r} matches only directories: a glob selects files (name a directory "
            "without a pattern to read its images)"
        )
    return "glob"


def _classify(spec, modality, column):
    try:
        mode = os.stat(spec).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:  # a loop of links, a name too long, a folder not searchable
        raise UsageError(f"cannot read {spec}: {exc.strerror or exc}") from exc
    if mode is None:
        if glob.has_magic(spec):
            return _glob(spec, modality)
        raise UsageError(f"no such file or directory: {spec}")
    if stat.S_ISDIR(mode):
        return _directory(spec, modality)
    if stat.S_ISREG(mode):
        return _regular_file(spec, modality, column)
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):  # <(cmd), /dev/fd/N, /dev/null
        return "stream"
    what = "a socket" if stat.S_ISSOCK(mode) else "a block device"
    raise UsageError(f"cannot read {spec}: it is {what}, not a file, directory or stream")


def check_inputs(inputs, modality, column):
    """Classify every INPUT up front (cheap); raises :class:`UsageError` for bad ones."""
    if list(inputs).count(STDIN) > 1:
        raise UsageError("'-' (standard input) can be given only once")
    plan = []
    for spec in inputs:
        if spec == STDIN:
            if sys.stdin is None:
                raise UsageError("'-' reads standard input, which is closed")
            plan.append(("stdin", spec))
        else:
            plan.append((_classify(spec, modality, column), spec))
    return plan


# --------------------------------------------------------------------------- items
def _items(kind, spec, modality, column, cuts):
    if kind == "dir":
        yield from _dir_items(spec)
    elif kind == "glob":
        yield from ((path, path) for path in _glob_files(spec))
    elif kind == "table":
        yield from table_items(spec, column, modality, cuts)
    elif kind in ("lines", "stream"):
        yield from file_lines(spec, modality, cuts, stream=kind == "stream")
    elif kind == "stdin":
        yield from stdin_lines(modality, cuts)
    else:
        yield spec, spec


def iter_items(plan, modality, column, cuts=None):
    """``(id, item or Bad)`` for every input, lazily, in command-line order.

    An input that fails part way (an I/O error, a file removed) raises
    :class:`~sktransfer.cli.errors.IOFailure` naming it. ``cuts``: a
    :class:`~sktransfer.cli.sources.Cuts` counting the texts cut to 1 MiB.
    """
    for kind, spec in plan:
        try:
            yield from _items(kind, spec, modality, column, cuts)
        except OSError as exc:
            name = "standard input" if kind == "stdin" else spec
            raise IOFailure(f"cannot read {name}: {exc.strerror or exc}") from exc


def _count_lines(path):
    if os.path.getsize(path) > _COUNT_LIMIT:
        return None
    with open(path, "rb") as fh:
        return sum(1 for _ in read_lines(fh))  # every line is an item (blank ones too)


def _count_rows(path):
    if is_parquet(path):
        return parquet_file(path).metadata.num_rows  # free: the footer says
    if os.path.getsize(path) > _COUNT_LIMIT:
        return None
    fh, reader = open_csv(path)
    with fh:
        return max(0, sum(1 for _ in reader) - 1)


def count_items(plan, modality=None):
    """The number of items, when cheap to know (for the progress bar's total); else None.

    Files count 1; directories and globs are walked (names only, nothing kept); text
    and CSV files up to 64 MiB are counted; Parquet row counts come from the footer.
    Streams (standard input, FIFOs) and larger text files are unknown: None.
    """
    total = 0
    for kind, spec in plan:
        if kind in ("stdin", "stream"):
            return None
        if kind == "dir":
            total += sum(1 for _ in _walk_images(spec))
        elif kind == "glob":
            total += sum(1 for _ in _glob_files(spec))
        elif kind in ("lines", "table"):
            n = _count_lines(spec) if kind == "lines" else _count_rows(spec)
            if n is None:
                return None
            total += n
        else:
            total += 1
    return total
