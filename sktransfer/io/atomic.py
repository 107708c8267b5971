"""Atomic file writes: a temp file in the target's directory, then ``os.replace``.

Readers see either the old file or the whole new one; a failure (or Ctrl-C)
mid-write removes the temp file and leaves any previous file untouched.

A writer killed outright (SIGKILL, power loss) cannot remove its temp file, so
temp names carry the writer: ``.<target name>.<pid>@<host tag>.<random>.tmp``.
``atomic_write(..., clean_stale=True)`` first removes the stale temp files of
the same target (see :func:`remove_stale_temps`): those of a dead process on
this host, and those older than :data:`STALE_AGE_S` whose writer cannot be
checked (another host, or a name without a pid from older versions). A temp
file of a live process is never removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager

#: Age after which a temp file whose writer cannot be checked counts as stale.
STALE_AGE_S = 24 * 3600


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


def remove_stale_temps(path, *, max_age_s: float = STALE_AGE_S) -> list[str]:
    """Remove the temp files that killed writers of ``path`` left beside it; the paths removed.

    A temp file of ``path`` is ``.<basename>.<pid>@<host tag>.<random>.tmp``
    (:func:`atomic_write`). Removed: those of this host whose pid is no longer
    running, and those older than ``max_age_s`` (by modification time) that
    name another host or no pid at all (``.<basename>.<random>.tmp``, written
    before writers were named). Kept: everything of a running process, and any
    file that merely resembles a temp name of another target. Best effort: a
    file that vanishes or cannot be removed is skipped.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    pattern = re.compile(r"(?:(\d+)@([0-9a-f]{8})\.)?[a-z0-9_]{8}\.tmp")  # mkstemp: 8 chars
    here, now, removed = _host_tag(), time.time(), []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        match = pattern.fullmatch(entry.name[len(prefix) :])
        if match is None:
            continue
        pid, host = match.groups()
        try:
            if pid is not None and host == here:
                stale = not _pid_alive(int(pid))
            else:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
            if stale and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.path)
        except OSError:
            continue
    return removed


@contextmanager
def atomic_write(path, *, durable=False, mode=None, clean_stale=False):
    """Yield a binary file handle whose content replaces ``path`` on success.

    ``durable``: fsync the file and its directory (for user-facing saves; the
    feature cache skips it, a lost entry is only recomputed). ``mode``: chmod
    the file before the rename (``mkstemp`` creates it 0600). ``clean_stale``:
    first remove temp files that killed writers of ``path`` left behind
    (:func:`remove_stale_temps`); it lists the directory, so it is for
    user-facing saves, not for a cache writing many files.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if clean_stale:
        remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f"{_temp_prefix(path)}{os.getpid()}@{_host_tag()}.", suffix=".tmp"
    )
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
    if durable:
        try:  # make the rename itself durable
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:  # pragma: no cover - platforms without directory fsync
            pass
