"""How ``sktransfer`` ends: the exit statuses, the errors behind them, one line each.

Every way a command can fail is one of the exceptions below, each with its exit
status; :func:`classify` maps anything else (a signal, a closed pipe, threads or
memory running out, a bug) onto the same table, so the command never ends in a
traceback or in a status that means something else.
"""

from __future__ import annotations

import signal

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_SCORING = 0, 1, 2, 3
EXIT_IO, EXIT_RESOURCES, EXIT_INTERNAL = 4, 5, 70
EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = 130, 141
EXIT_HANGUP, EXIT_TERMINATED = 128 + signal.SIGHUP, 128 + signal.SIGTERM  # 129, 143

#: every status a command can end with
EXIT_STATUSES = frozenset(
    {
        EXIT_OK,
        EXIT_SOME_FAILED,
        EXIT_USAGE,
        EXIT_SCORING,
        EXIT_IO,
        EXIT_RESOURCES,
        EXIT_INTERNAL,
        EXIT_HANGUP,
        EXIT_INTERRUPTED,
        EXIT_CLOSED_PIPE,
        EXIT_TERMINATED,
    }
)

EXIT_HELP = """\
exit status (unless it is 0 or 1, an -o file keeps its old content; standard output
keeps the rows written before the failure):
  0    every item scored
  1    some items could not be read (named on stderr; their rows have an empty prediction)
  2    usage error: nothing is scored (a bad option, a missing or unreadable input, an
       -o FILE that the command reads: MODEL, an input, or a link to either)
  3    the model failed on items that passed validation (a bug): scoring stops
  4    input/output error: the output could not be written (disk full, /dev/full, an
       I/O error) or an input could not be read part way; the message names the file
  5    the system ran out of threads or memory (lower --threads or --batch-size)
  70   internal error (a bug): one line on stderr; SKTRANSFER_TRACEBACK=1 shows the traceback
  129  hang-up (SIGHUP)
  130  interrupted (Ctrl-C, SIGINT)
  141  standard output was closed early (e.g. '| head'): ends quietly, like a tool
       killed by SIGPIPE
  143  terminated (SIGTERM, e.g. from 'timeout' or 'kill')
"""


class CLIError(Exception):
    """A failure reported as one line on stderr, with its exit status."""

    status = EXIT_INTERNAL


class UsageError(CLIError):
    """A problem with the command line itself (exit status 2)."""

    status = EXIT_USAGE


class ScoringError(CLIError):
    """The model failed on a batch of validated items (exit status 3)."""

    status = EXIT_SCORING


class IOFailure(CLIError):
    """The output could not be written, or an input could not be read part way (exit 4)."""

    status = EXIT_IO


class ResourceError(CLIError):
    """The system ran out of threads or memory (exit status 5)."""

    status = EXIT_RESOURCES


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like ``KeyboardInterrupt`` (temp files removed)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------- resources
_THREAD_SIGNS = (
    "can't start new thread",
    "ThreadPoolBuildError",  # rayon (the tokenizers' pool): pyo3 PanicException
    "Resource temporarily unavailable",
)
_MEMORY_SIGNS = ("out of memory", "can't allocate memory", "DefaultCPUAllocator")


def _chain(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def resource_shortage(exc):
    """``"threads"`` or ``"memory"`` when ``exc`` (or an exception it was raised from)
    says the system ran out of it, else None."""
    for e in _chain(exc):
        text = f"{type(e).__name__}: {e}"
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            return "memory"
        if isinstance(e, RuntimeError) or type(e).__name__ == "PanicException":
            if any(sign in text for sign in _THREAD_SIGNS):
                return "threads"
            if any(sign in text for sign in _MEMORY_SIGNS):
                return "memory"
    return None


def shortage_error(kind, exc, doing):
    """A :class:`ResourceError` for running out of ``kind`` while ``doing`` something."""
    if kind == "threads":
        advice = (
            "the process or user thread limit is reached (ulimit -u, a container's pids.max): "
            "use --threads 1, or raise the limit"
        )
    else:
        advice = "use a smaller --batch-size, or free memory"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ResourceError(f"ran out of {kind} while {doing} ({first[:200]}): {advice}")


def classify(exc):
    """``(exit status, one-line message or None)`` for an exception that ended a command.

    ``None``: end quietly (a closed pipe).
    """
    if isinstance(exc, CLIError):
        return exc.status, str(exc)
    if isinstance(exc, Terminated):
        name = signal.Signals(exc.signum).name
        return 128 + exc.signum, f"terminated ({name})"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(exc, BrokenPipeError):
        return EXIT_CLOSED_PIPE, None
    kind = resource_shortage(exc)
    if kind is not None:
        return EXIT_RESOURCES, str(shortage_error(kind, exc, "running"))
    if isinstance(exc, OSError):  # an I/O error no narrower handler claimed
        where = f" {exc.filename}" if exc.filename else ""
        return EXIT_IO, f"input/output error{where}: {exc.strerror or exc}"
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return EXIT_INTERNAL, (
        f"internal error: {type(exc).__name__}: {first} (a bug: please report it; "
        "SKTRANSFER_TRACEBACK=1 shows the traceback)"
    )
