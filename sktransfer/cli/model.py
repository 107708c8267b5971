"""``sktransfer predict``'s model and threads: load MODEL safely, bound and probe threads.

MODEL is read with :func:`sktransfer.load` (no code runs); a joblib or pickle file
only with ``allow_pickle``. A load that fails because the system ran out of threads
or memory is reported as that (exit 5), never as a bad model file.

``--threads N`` is bounded (1 to 4 per CPU this process may use: beyond, OpenMP and
BLAS pools of 100,000 threads crash the process) and probed: ``2 N`` threads are
started and stopped before any work, so a ``ulimit -u`` or a container's
``pids.max`` that is too low is a clear error, not a crash half way. In a fresh
process the native pools are sized to ``N`` before numpy is imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import zipfile

from sktransfer.cli.errors import UsageError, resource_shortage, shortage_error

__all__ = ["bound_native_pools", "load_model", "max_threads", "probe_threads", "thread_limit"]

THREADS_PER_CPU = 4


# --------------------------------------------------------------------------- model
def _claims_safe_format(path):
    return os.fspath(path).lower().endswith(".skt") or zipfile.is_zipfile(path)


def _load_failed(path, exc, what):
    """The error for a MODEL that failed to load: out of threads/memory, else a usage error."""
    kind = resource_shortage(exc)
    if kind is not None:  # not the file's fault: never blame it
        return shortage_error(kind, exc, f"loading the model {path}")
    return UsageError(f"cannot load model {path}: {what}")


def load_model(path, device=None, quantize=None, *, allow_pickle=False):
    """A fitted estimator from a :func:`sktransfer.save` file, or (opt-in) a joblib file.

    A file named ``.skt`` or that is a zip archive is only ever read as the safe
    format. Anything else is unpickled with joblib only when ``allow_pickle``:
    unpickling runs code from the file.
    """
    if not os.path.isfile(path):
        what = "not found" if not os.path.exists(path) else "not a regular file"
        raise UsageError(f"model file {what}: {path}")
    if device is not None:
        from sktransfer.runtime.device import resolve_device

        try:
            resolve_device(device)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    if _claims_safe_format(path):
        from sktransfer.io.safe_format import load

        try:
            return load(path, device=device, quantize=quantize)
        except (ValueError, RuntimeError, KeyError, OSError, MemoryError) as exc:
            raise _load_failed(
                path,
                exc,
                f"{exc} (a .skt or zip file is read only as a sktransfer.save "
                "file, never unpickled)",
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
        raise _load_failed(
            path,
            exc,
            f"not a sktransfer.save file, and joblib failed ({type(exc).__name__}: {exc})",
        ) from exc
    if device is not None:
        est.set_params(device=device)
    if quantize == "dynamic":
        from sktransfer.deploy import quantize_dynamic

        est = quantize_dynamic(est)
    return est


# --------------------------------------------------------------------------- threads
def max_threads():
    """The largest ``--threads``: 4 per CPU this process may use (a bound, not advice)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return THREADS_PER_CPU * max(1, cpus)


def bound_native_pools(n):
    """In a fresh process (numpy not imported yet), size the native thread pools to ``n``
    before they start: OpenBLAS raises SIGINT when it cannot start its threads at import,
    which would read as Ctrl-C. Variables the user set are kept."""
    if "numpy" in sys.modules:
        return
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(name, str(n))
    if n == 1:  # the tokenizers' own pool (rayon): none at all
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def probe_threads(n):
    """Start and stop ``n`` threads at once; :class:`ResourceError` when the system
    refuses (a ``ulimit -u`` or a container's ``pids.max``), before any work."""
    stop, started = threading.Event(), []
    try:
        for _ in range(n):
            thread = threading.Thread(target=stop.wait, daemon=True)
            thread.start()
            started.append(thread)
    except RuntimeError as exc:
        raise shortage_error("threads", exc, f"starting {n} thread(s) for --threads") from exc
    finally:
        stop.set()
        for thread in started:
            thread.join()


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
