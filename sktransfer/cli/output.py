"""Where ``sktransfer predict`` writes, and what it must never write.

*No file the command reads is ever written.* :func:`check_output` refuses an
``-o`` (or a redirected standard output) that is MODEL, an input, the file on
standard input, or an image inside an input directory: compared by ``(st_dev,
st_ino)``, so symlinks and hard links count, and by real path when the target
does not exist. It also refuses to replace an existing file that holds binary
data (a model, an image, an archive): ``-o`` replaces text/CSV files only.

:func:`open_output` writes a file atomically (temp file beside it, renamed at the
end; stale temp files of killed writers removed first) and a device or FIFO in
place. Every write goes through :class:`Sink`, which turns a write error (disk
full, ``/dev/full``) into :class:`~sktransfer.cli.errors.IOFailure` naming the
output; a closed pipe stays ``BrokenPipeError`` (exit 141).

:func:`signals_unwind` makes SIGTERM and SIGHUP unwind like Ctrl-C, so the temp
file is removed and ``-o FILE`` keeps its old content.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys

from sktransfer.cli.errors import IOFailure, Terminated, UsageError

STDIN = "-"
_SNIFF = 8192
_BINARY_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # zip archives (.skt, .zip, .npz, .docx)


# --------------------------------------------------------------------------- sink
class Sink:
    """A text writer over a binary stream; writes UTF-8 (file names' odd bytes kept).

    ``OSError`` on write, flush or close becomes :class:`IOFailure` naming ``name``;
    ``BrokenPipeError`` (the reader went away) is left as it is.
    """

    def __init__(self, binary, name):
        self._binary = binary
        self.name = name

    def _guard(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise IOFailure(f"cannot write {self.name}: {exc.strerror or exc}") from exc

    def write(self, text):
        data = text.encode("utf-8", "surrogateescape")
        self._guard(self._binary.write, data)
        return len(text)

    def flush(self):
        self._guard(self._binary.flush)


def _stdout_binary():
    out = sys.stdout
    if out is None:
        raise IOFailure("cannot write standard output: it is closed")
    out.flush()
    return getattr(out, "buffer", None) or _TextAsBinary(out)


class _TextAsBinary:
    """A text stream without ``.buffer`` (a test's StringIO) seen as a binary one."""

    def __init__(self, text):
        self._text = text

    def write(self, data):
        return self._text.write(data.decode("utf-8", "surrogateescape"))

    def flush(self):
        self._text.flush()


# --------------------------------------------------------------------------- open
def _new_file_mode(target):
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def identity(path):
    """``(st_dev, st_ino)`` of an existing regular file (links followed), else None."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


@contextlib.contextmanager
def _in_place(path):
    """A device or FIFO (``/dev/null``, ``/dev/full``, a named pipe): written, not replaced."""
    try:
        fh = open(path, "wb")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    sink, done = Sink(fh, path), False
    try:
        yield sink, None
        sink.flush()
        done = True
    finally:
        if done:
            sink._guard(fh.close)
        else:
            with contextlib.suppress(OSError):
                fh.close()


@contextlib.contextmanager
def open_output(path):
    """``(Sink, (dev, inode) or None)`` for ``-o``; a file is replaced atomically.

    Unwritable targets raise :class:`UsageError` here, before any work: the
    temporary file is created first. A device or FIFO is written in place.
    """
    from sktransfer.fs.atomic import atomic_write

    if path in (None, STDIN):
        sink = Sink(_stdout_binary(), "standard output")
        yield sink, None
        sink.flush()
        return
    if os.path.isdir(path):
        raise UsageError(f"cannot write {path}: it is a directory")
    if os.path.exists(path) and not os.path.isfile(path):
        with _in_place(path) as opened:
            yield opened
        return
    target = os.path.realpath(path)  # through a symlink: replace the file, keep the link
    parent, done = os.path.dirname(target), False
    try:
        with contextlib.ExitStack() as stack:
            try:
                raw = stack.enter_context(
                    atomic_write(
                        target, durable=True, mode=_new_file_mode(target), clean_stale=True
                    )
                )
            except OSError as exc:
                why = f"no such directory {parent}" if not os.path.isdir(parent) else exc.strerror
                raise UsageError(f"cannot write {path}: {why or exc}") from exc
            sink = Sink(raw, path)
            yield sink, identity(target)
            sink.flush()
            done = True
    except OSError as exc:  # the final fsync or rename: the old file stays
        if not done or isinstance(exc, BrokenPipeError):
            raise
        raise IOFailure(f"cannot write {path}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- guard
def _stream_identity(stream):
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):  # closed, or not a real file (tests)
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def _image_extensions():
    from sktransfer.inputs.images import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


def _read_files(model, inputs):
    """``(name, spec, identity or None)`` of each file the command reads whole: MODEL,
    each file input, and the file on standard input."""
    named = [(f"the model {model}", model, identity(model))]
    for spec in inputs:
        if spec == STDIN:
            named.append(("standard input", None, _stream_identity(sys.stdin)))
        else:
            named.append((f"the input {spec}", spec, identity(spec)))
    return named


def _check_not_binary(output):
    """Refuse to replace an existing file holding binary data (a model, an image)."""
    try:
        with open(output, "rb") as fh:
            head = fh.read(_SNIFF)
    except OSError:
        return  # unreadable: open_output reports what matters
    if b"\0" in head or head.startswith(_BINARY_MAGIC):
        raise UsageError(
            f"the output {output} exists and holds binary data (a model, an image, an "
            "archive?): -o replaces only text/CSV files; remove it first or choose another name"
        )


def _check_inside_dirs(output, inputs):
    if not output.lower().endswith(_image_extensions()):
        return
    real = os.path.realpath(output)
    for spec in inputs:
        if spec != STDIN and os.path.isdir(spec):
            root = os.path.join(os.path.realpath(spec), "")
            if real.startswith(root):
                raise UsageError(
                    f"the output {output} lies inside the input directory {spec}, "
                    "where it would be read as an image"
                )


def check_output(output, model, inputs):
    """Refuse an output that this command reads; see the module docstring.

    Images named by a list file, a table or a glob are guarded per item when they
    are decoded (``guard`` of :func:`open_output`).
    """
    read = _read_files(model, inputs)
    if output in (None, STDIN):
        mine = _stream_identity(sys.stdout)
        for name, _, ident in read:
            if mine is not None and ident == mine:
                raise UsageError(f"standard output is {name}: it would be overwritten")
        return
    if not output or "\0" in output:
        raise UsageError("-o needs a file name without NUL characters (or - for standard output)")
    mine, real = identity(output), os.path.realpath(output)
    for name, spec, ident in read:
        if mine is not None:
            same = ident == mine
        elif os.path.exists(output) and not stat.S_ISFIFO(os.stat(output).st_mode):
            same = False  # a device: /dev/null read and written is harmless
        else:  # no such file yet (or a FIFO): only the same path can be the same file
            same = spec is not None and "\0" not in spec and os.path.realpath(spec) == real
        if same:
            raise UsageError(f"the output {output} is also {name}: it would be overwritten")
    _check_inside_dirs(output, inputs)
    try:
        mode = os.stat(output).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISBLK(mode):
        raise UsageError(f"cannot write {output}: it is a block device")
    if stat.S_ISREG(mode):
        _check_not_binary(output)


# --------------------------------------------------------------------------- standard streams
def isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class SafeErr:
    """Standard error for diagnostics: a closed or full stderr never changes the outcome."""

    def write(self, text):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.write(text)
        return len(text)

    def flush(self):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()

    def isatty(self):
        return isatty(sys.stderr)

    def fileno(self):
        return sys.stderr.fileno()

    def line(self, text):
        self.write(text + "\n")
        self.flush()


def quiet_stdout():
    """After a failed write: point stdout at /dev/null so the interpreter's final flush
    of what is still buffered stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture it)
        pass


def flush_stdout():
    """Flush standard output; a failure is the command's (exit 4), not the interpreter's."""
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise IOFailure(f"cannot write standard output: {why}") from exc


def print_out(text="", end="\n"):
    """``print`` to standard output, its write errors as :class:`IOFailure`."""
    if sys.stdout is None:
        raise IOFailure("cannot write standard output: it is closed")
    try:
        print(text, end=end)
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise IOFailure(f"cannot write standard output: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- signals
_UNWIND = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_unwind():
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (as SIGINT raises
    ``KeyboardInterrupt``), so ``finally`` blocks run and temp files are removed.

    A signal that is ignored (``nohup``) stays ignored; outside the main thread
    nothing changes. After the first signal, the others are ignored while unwinding.
    """

    def unwind(signum, frame):
        for sig in installed:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    installed = {}
    try:
        for sig in _UNWIND:
            if signal.getsignal(sig) is signal.SIG_DFL:
                installed[sig] = signal.signal(sig, unwind)
    except ValueError:  # not the main thread
        installed.clear()
    try:
        yield
    finally:
        for sig, previous in installed.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, previous)
