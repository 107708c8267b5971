"""Atomic file writes: a temp file in the target's directory, then ``os.replace``.

Readers see either the old file or the whole new one; a failure (or Ctrl-C)
mid-write removes the temp file and leaves any previous file untouched.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_write(path, *, durable=False, mode=None):
    """Yield a binary file handle whose content replaces ``path`` on success.

    ``durable``: fsync the file and its directory (for user-facing saves; the
    feature cache skips it, a lost entry is only recomputed). ``mode``: chmod
    the file before the rename (``mkstemp`` creates it 0600).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
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
