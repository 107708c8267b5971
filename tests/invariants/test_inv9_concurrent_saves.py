"""Invariant 9: concurrent saves are safe across containers.

A save never removes the temp file of a live writer, whatever its name says
about its pid and host (another PID namespace, another container on a shared
volume), and a killed writer's temp file is removed by the next save. The rule
is a file lock, see :mod:`sktransfer.fs.atomic`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sktransfer.fs import atomic

fcntl = pytest.importorskip("fcntl")

# A writer that stops mid-write: prints its temp file's name, then waits for a
# line on stdin before it finishes (or is killed). argv: target, pid to claim or
# "", host tag to claim or "".
_WRITER = textwrap.dedent(
    """
    import os, sys
    from sktransfer.fs import atomic

    target, pid, host = sys.argv[1:4]
    if pid:
        os.getpid = lambda: int(pid)  # a pid from another namespace: dead here
    if host:
        atomic._host_tag = lambda: host
    with atomic.atomic_write(target, durable=True, clean_stale=True) as fh:
        fh.write(b"theirs-half")
        fh.flush()
        prefix = "." + os.path.basename(target) + "."
        (name,) = [n for n in os.listdir(os.path.dirname(target)) if n.startswith(prefix)]
        print(name, flush=True)
        sys.stdin.readline()
        fh.write(b"-whole")
    print("done", flush=True)
    """
)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temps(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


@contextlib.contextmanager
def _writer(target, *, pid="", host="", prefix=()):
    """A live writer of ``target`` in another process; yields ``(proc, temp name)``."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-c", _WRITER, str(target), str(pid), host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        name = proc.stdout.readline().decode().strip()
        assert name.endswith(".tmp"), proc.stderr.read().decode()[-2000:]
        yield proc, name
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _finish(proc):
    out, err = proc.communicate(b"\n", timeout=30)
    assert proc.returncode == 0 and out.strip() == b"done", err.decode()[-2000:]


def _save_here(target, content=b"ours"):
    with atomic.atomic_write(target, durable=True, clean_stale=True) as fh:
        fh.write(content)


# --------------------------------------------------------------------------- regressions
@pytest.mark.parametrize("host", ["", "0badc0de"], ids=["same-host", "other-host"])
def test_live_writer_with_a_dead_looking_pid_keeps_its_temp_file(tmp_path, host):
    """The issue's case: another PID namespace, same hostname. Both saves succeed."""
    target = tmp_path / "m.skt"
    with _writer(target, pid=_dead_pid(), host=host) as (proc, name):
        assert name in _temps(tmp_path)
        _save_here(target)  # cleans stale temps of the same target first
        assert atomic.remove_stale_temps(target) == []
        assert atomic.remove_stale_temps_under(tmp_path) == []
        assert name in _temps(tmp_path)
        assert target.read_bytes() == b"ours"
        _finish(proc)
    assert target.read_bytes() == b"theirs-half-whole"  # its rename still found its file
    assert _temps(tmp_path) == []


def test_killed_writer_temp_is_removed_by_the_next_save(tmp_path):
    target = tmp_path / "m.skt"
    with _writer(target, pid=os.getpid()) as (proc, name):  # a pid that is alive here
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert _temps(tmp_path) == [name]
    _save_here(target)
    assert _temps(tmp_path) == [] and target.read_bytes() == b"ours"


def test_killed_writers_are_removed_under_a_tree_and_live_ones_kept(tmp_path):
    sub = tmp_path / "ab"
    sub.mkdir()
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(_writer(sub / "k1.sktc", pid=_dead_pid()))
        dead = stack.enter_context(_writer(sub / "k2.sktc"))
        other = stack.enter_context(_writer(tmp_path / "notes.txt"))
        for proc in (dead[0], other[0]):
            proc.kill()
            proc.wait(timeout=30)
        removed = atomic.remove_stale_temps_under(tmp_path, target_suffix=".sktc")
        assert [os.path.basename(p) for p in removed] == [dead[1]]
        assert _temps(sub) == [live[1]] and _temps(tmp_path) == [other[1]]
        assert atomic.remove_stale_temps_under(tmp_path) == [str(tmp_path / other[1])]
        _finish(live[0])
    assert (sub / "k1.sktc").read_bytes() == b"theirs-half-whole"


def test_tree_walk_does_not_follow_symlinks(tmp_path):
    outside, tree = tmp_path / "outside", tmp_path / "tree"
    outside.mkdir()
    tree.mkdir()
    orphan = outside / f".k.sktc.{_dead_pid()}@{atomic._host_tag()}.abcdefgh.tmp"
    orphan.write_bytes(b"x")
    (tree / "link").symlink_to(outside, target_is_directory=True)
    os.symlink(orphan, tree / orphan.name)
    assert atomic.remove_stale_temps_under(tree) == []
    assert orphan.exists()


def _unshare_available():
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_available(), reason="needs root and unshare --pid")
def test_writer_in_another_pid_namespace(tmp_path):
    target = tmp_path / "m.skt"
    with _writer(target, prefix=("unshare", "--pid", "--fork")) as (proc, name):
        pid = int(name.split(".")[3].split("@")[0])
        assert pid != proc.pid  # its own namespace's pid (1 or 2), meaningless here
        _save_here(target)
        assert name in _temps(tmp_path)
        _finish(proc)
    assert target.read_bytes() == b"theirs-half-whole"


# --------------------------------------------------------------------------- races
def test_temp_removed_between_create_and_lock_is_recreated(tmp_path, monkeypatch):
    """A prober can find a new temp file before its writer locks it: the writer retries."""
    target, real, calls = tmp_path / "m.skt", atomic.tempfile.mkstemp, []

    def mkstemp_then_probe(**kw):
        fd, tmp = real(**kw)
        calls.append(tmp)
        if len(calls) == 1:
            assert atomic.remove_stale_temps(target) == [tmp]  # unlocked yet: "stale"
        return fd, tmp

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp_then_probe)
    _save_here(target)
    assert len(calls) == 2 and target.read_bytes() == b"ours" and _temps(tmp_path) == []


def test_probe_never_removes_a_file_that_replaced_the_one_it_locked(tmp_path, monkeypatch):
    """Writer renamed its temp away and a new file took the name: the probe keeps the new one."""
    name = f".m.skt.{os.getpid()}@{atomic._host_tag()}.abcdefgh.tmp"
    path = tmp_path / name
    path.write_bytes(b"old")

    class Racing:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        @staticmethod
        def flock(fd, op):
            fcntl.flock(fd, op)
            os.replace(path, tmp_path / "m.skt")  # the writer's rename, then a new writer
            path.write_bytes(b"new")

    monkeypatch.setattr(atomic, "fcntl", Racing)
    assert atomic.remove_stale_temps(tmp_path / "m.skt") == []
    assert path.read_bytes() == b"new"


def test_read_only_temp_of_a_live_writer_is_probed_read_only(tmp_path, monkeypatch):
    """A writer chmods its temp (e.g. 0444, the CLI keeps -o's mode) just before the rename:
    a prober that may not open it for writing still sees its lock."""
    target = tmp_path / "m.skt"
    real_open = os.open

    def no_write(path, flags, *args, **kwargs):
        if str(path).endswith(".tmp") and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    with _writer(target, pid=_dead_pid()) as (proc, name):
        monkeypatch.setattr(os, "open", no_write)
        assert atomic.remove_stale_temps(target) == []
        monkeypatch.undo()
        assert name in _temps(tmp_path)
        _finish(proc)
    assert target.read_bytes() == b"theirs-half-whole"


def test_a_writer_in_this_process_is_never_stale(tmp_path):
    target = tmp_path / "m.skt"
    with atomic.atomic_write(target) as fh:
        fh.write(b"x")
        assert atomic.remove_stale_temps(target) == []
        assert atomic.remove_stale_temps_under(tmp_path) == []
        assert os.path.exists(fh.name)
    assert target.read_bytes() == b"x"


def test_without_fcntl_the_pid_and_age_rule_applies(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "fcntl", None)
    host, old = atomic._host_tag(), atomic.STALE_AGE_S + 60
    dead = tmp_path / f".m.skt.{_dead_pid()}@{host}.abcdefgh.tmp"
    alive = tmp_path / f".m.skt.{os.getpid()}@{host}.abcdefgh.tmp"
    foreign = tmp_path / f".m.skt.{_dead_pid()}@0badc0de.abcdefgh.tmp"
    for p in (dead, alive, foreign):
        p.write_bytes(b"x")
    assert atomic.remove_stale_temps(tmp_path / "m.skt") == [str(dead)]
    t = time.time() - old
    os.utime(foreign, (t, t))
    assert atomic.remove_stale_temps(tmp_path / "m.skt") == [str(foreign)]
    _save_here(tmp_path / "m.skt")
    assert alive.exists()


# --------------------------------------------------------------------------- property
_pids = st.sampled_from(["dead", "self", "huge", "none"])
_hosts = st.sampled_from(["here", "0badc0de"])
_files = st.lists(
    st.tuples(_pids, _hosts, st.booleans(), st.booleans(), st.sampled_from([".sktc", ".skt"])),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=_files, use_tree=st.booleans())
def test_a_temp_file_is_removed_iff_no_writer_holds_it(tmp_path_factory, files, use_tree):
    """Whatever pid, host and age a temp name shows, only unlocked files are removed."""
    directory = tmp_path_factory.mktemp("inv9")
    pid_of = {"dead": _DEAD, "self": os.getpid(), "huge": 2**40}
    expected_removed, expected_kept = set(), set()
    with contextlib.ExitStack() as held:
        for i, (pid, host, locked, old, suffix) in enumerate(files):
            tag = host if host != "here" else atomic._host_tag()
            writer = "" if pid == "none" else f"{pid_of[pid]}@{tag}."
            name = f".t{suffix}.{writer}{i:08d}.tmp"
            path = directory / name
            path.write_bytes(b"partial")
            if old:
                t = time.time() - atomic.STALE_AGE_S - 60
                os.utime(path, (t, t))
            if locked:
                fh = held.enter_context(open(path, "rb"))
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            stale = (not locked) if pid != "none" else old  # unnamed legacy: by age only
            (expected_removed if stale else expected_kept).add(name)
        if use_tree:
            got = atomic.remove_stale_temps_under(directory)
        else:
            got = atomic.remove_stale_temps(directory / "t.sktc")
            got += atomic.remove_stale_temps(directory / "t.skt")
        assert {os.path.basename(p) for p in got} == expected_removed
        assert set(os.listdir(directory)) == expected_kept


_DEAD = _dead_pid()
