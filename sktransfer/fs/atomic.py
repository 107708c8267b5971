"""Atomic file writes: a temp file in the target's directory, then ``os.replace``.

Readers see either the old file or the whole new one; a failure (or Ctrl-C)
mid-write removes the temp file and leaves any previous file untouched.

A writer killed outright (SIGKILL, power loss) cannot remove its temp file, so
later writers do. Whether a temp file is stale is decided by a **file lock**,
not by a process id: the writer holds an exclusive ``flock`` on its temp file
from creation until after the rename, and the kernel drops the lock when the
writer dies, however it dies. A temp file is stale iff a non-blocking
``flock`` on it succeeds. This holds across PID namespaces, containers sharing
a volume, and (where the file system forwards ``flock``, as NFS does) hosts; a
pid@host test sees none of these. Temp names still carry the writer,
``.<target name>.<pid>@<host tag>.<random>.tmp``, for whoever reads a listing.

Where ``fcntl`` is missing (Windows), or a temp file cannot be opened to probe
its lock, the older rule applies: a file of this host whose pid is not running,
or one older than :data:`STALE_AGE_S`, is stale. Names without a pid (written
before writers were named, and never locked) are stale after :data:`STALE_AGE_S`.

``atomic_write(..., clean_stale=True)`` first removes the stale temp files of
the same target (:func:`remove_stale_temps`); :func:`remove_stale_temps_under`
removes those of every target in a directory tree (the disk cache).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import threading
import time
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: Age after which a temp file whose writer cannot be checked counts as stale.
STALE_AGE_S = 24 * 3600

# ``<pid>@<host tag>.<mkstemp's 8 chars>.tmp``, or ``<8 chars>.tmp`` (names before pids).
_TAIL = re.compile(r"(?:(\d+)@([0-9a-f]{8})\.)?[a-z0-9_]{8}\.tmp")
# A whole temp name of any target: ``.<target>.<tail>``.
_NAME = re.compile(r"\.(.+?)\.((?:\d+@[0-9a-f]{8}\.)?[a-z0-9_]{8}\.tmp)")

# Temp files this process is writing now. flock on a local file system already
# conflicts between two open files of one process, but NFS emulates flock with
# POSIX locks, which never conflict within a process: this set covers that.
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(path) -> str:
    return f".{os.path.basename(path)}."


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) is not a probe there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a pid beyond pid_t
        return True
    return True


def _same_file(path, fd) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not renamed away or replaced)."""
    try:
        a, b = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _unlink_if_unlocked(path) -> bool | None:
    """Remove ``path`` if no writer holds its lock: True removed, False kept (locked or
    gone), None when the lock cannot be probed (no fcntl, or the file cannot be opened)."""
    if fcntl is None:
        return None
    flags = os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
    try:  # read-write where allowed: NFS emulates flock with write locks
        try:
            fd = os.open(path, os.O_RDWR | flags)
        except PermissionError:  # a writer chmod-ed it read-only just before its rename
            fd = os.open(path, os.O_RDONLY | flags)
    except FileNotFoundError:
        return False
    except OSError:  # another user's 0600 file, a symlink...
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer holds it (or the lock is refused: keep)
        # Locked by us now. The writer may have renamed it before dying or finishing
        # (then ``path`` is gone or names another file): only unlink the same inode.
        if not _same_file(path, fd):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)  # releases the lock


def _stale_by_name(entry, pid, host, max_age_s, now) -> bool:
    """The rule without locks: a dead pid of this host, or older than ``max_age_s``."""
    if pid is not None and host == _host_tag() and not _pid_alive(int(pid)):
        return True
    return now - entry.stat(follow_symlinks=False).st_mtime > max_age_s


def _remove_if_stale(entry, pid, host, max_age_s, now) -> bool:
    with _LIVE_LOCK:
        if os.path.abspath(entry.path) in _LIVE:
            return False
    if not entry.is_file(follow_symlinks=False):
        return False
    if pid is not None:  # a locking writer's name: its lock decides
        verdict = _unlink_if_unlocked(entry.path)
        if verdict is not None:
            return verdict
    if _stale_by_name(entry, pid, host, max_age_s, now):
        os.unlink(entry.path)
        return True
    return False


def remove_stale_temps(path, *, max_age_s: float = STALE_AGE_S) -> list[str]:
    """Remove the temp files that killed writers of ``path`` left beside it; the paths removed.

    A temp file of ``path`` is ``.<basename>.<pid>@<host tag>.<random>.tmp``
    (:func:`atomic_write`). Removed: those whose lock no writer holds (see the
    module docstring; without ``fcntl``, those of a dead pid of this host or
    older than ``max_age_s``), and those older than ``max_age_s`` named without
    a pid (``.<basename>.<random>.tmp``, written before writers were named).
    Kept: every file a live writer holds, and any file that merely resembles a
    temp name of another target. Best effort: a file that vanishes or cannot be
    removed is skipped.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    now, removed = time.time(), []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        match = _TAIL.fullmatch(entry.name[len(prefix) :])
        if match is None:
            continue
        try:
            if _remove_if_stale(entry, *match.groups(), max_age_s, now):
                removed.append(entry.path)
        except OSError:
            continue
    return removed


def remove_stale_temps_under(
    directory, *, target_suffix: str | None = None, max_age_s: float = STALE_AGE_S
) -> list[str]:
    """Remove every stale temp file in the tree under ``directory``, of any target.

    The rule is :func:`remove_stale_temps`'s: a temp file a live writer holds is
    never removed, in this process or any other (another container included).
    ``target_suffix`` (e.g. ``".sktc"``) limits it to temp files whose target
    name ends with it. Symlinks are not followed. Returns the paths removed;
    best effort, like :func:`remove_stale_temps`.
    """
    now, removed = time.time(), []
    for root, _dirs, _files in os.walk(os.fspath(directory)):
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for entry in entries:
            match = _NAME.fullmatch(entry.name)
            if match is None or (target_suffix and not match.group(1).endswith(target_suffix)):
                continue
            tail = _TAIL.fullmatch(match.group(2))
            try:
                if _remove_if_stale(entry, *tail.groups(), max_age_s, now):
                    removed.append(entry.path)
            except OSError:
                continue
    return removed


def _locked_temp(directory, prefix):
    """``(fd, path)`` of a new temp file whose exclusive lock this process holds.

    Between ``mkstemp`` and ``flock`` another process may find the file unlocked
    and remove it as stale; then the path no longer names our file and we retry.
    """
    while True:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
        if fcntl is None:
            return fd, tmp
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a prober holds it
        except OSError:  # a file system without locks: nothing can probe it either
            return fd, tmp
        if _same_file(tmp, fd):
            return fd, tmp
        os.close(fd)  # removed as "stale" before we locked it: a fresh one


@contextmanager
def atomic_write(path, *, durable=False, mode=None, clean_stale=False):
    """Yield a binary file handle whose content replaces ``path`` on success.

    ``durable``: fsync the file and its directory (for user-facing saves; the
    feature cache skips it, a lost entry is only recomputed). ``mode``: chmod
    the file before the rename (``mkstemp`` creates it 0600). ``clean_stale``:
    first remove temp files that killed writers of ``path`` left behind
    (:func:`remove_stale_temps`); it lists the directory, so it is for
    user-facing saves, not for a cache writing many files. The temp file is
    locked (``flock``) until after the rename, so no other writer removes it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if clean_stale:
        remove_stale_temps(path)
    fd, tmp = _locked_temp(directory, f"{_temp_prefix(path)}{os.getpid()}@{_host_tag()}.")
    # A second descriptor keeps the lock after the handle is closed, until after the
    # rename (Windows cannot rename an open file, and has no flock to keep).
    lock_fd = os.dup(fd) if fcntl is not None else None
    with _LIVE_LOCK:
        _LIVE.add(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(tmp)
        if lock_fd is not None:
            os.close(lock_fd)
    if durable:
        try:  # make the rename itself durable
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:  # pragma: no cover - platforms without directory fsync
            pass
