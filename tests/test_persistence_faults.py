"""Fault injection for sktransfer.save / sktransfer.load: damaged files, zip bombs, killed saves.

Every damaged file gives a ``ValueError`` naming the path (never a raw ``BadZipFile``,
``KeyError`` or ``MemoryError``), and a zip bomb is refused before it is inflated.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sktransfer
from sktransfer import PretrainedTextClassifier
from sktransfer.fs import atomic as _atomic
from sktransfer.io import archive as _archive
from sktransfer.io import safe_format

BOMB = 64 << 20  # inflated bytes of the test bombs (64 KiB compressed)
CONFIG = "backbone/config.json"


@pytest.fixture(scope="module")
def model(tiny_bert_dir, texts):
    X, y = texts
    clf = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X[:80], y[:80])
    return clf, X[80:100]


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """The bytes of a valid saved file of ``model``."""
    path = tmp_path_factory.mktemp("saved") / "m.skt"
    sktransfer.save(model[0], path)
    return path.read_bytes()


@pytest.fixture
def path(saved, tmp_path):
    p = tmp_path / "m.skt"
    p.write_bytes(saved)
    return p


def _entries(path):
    """``(comment, [(ZipInfo, data)])`` of a saved file."""
    with zipfile.ZipFile(path) as zf:
        return zf.comment, [(i, zf.read(i)) for i in zf.infolist()]


def _rewrite(path, entries, comment, *, bomb=None):
    """Write ``entries`` (name or ZipInfo, data) back, plus ``bomb = (name, declared_size, crc)``.

    The bomb is ``BOMB`` zero bytes streamed through ``zipfile`` (deflated to ~64 KiB);
    ``declared_size`` (None: honest) forges the size the central directory declares.
    """
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
        if bomb is not None:
            name, declared, crc = bomb
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            chunk = bytes(1 << 20)
            with zf.open(info, "w", force_zip64=True) as fh:
                for _ in range(BOMB // len(chunk)):
                    fh.write(chunk)
            if declared is not None:  # the local header keeps the truth; readers use this one
                info.file_size, info.CRC = declared, crc
        zf.comment = comment


class _Counting:
    """A decompressor that counts what it inflates (zipfile trims the output only afterwards)."""

    def __init__(self, inner, count):
        self._inner, self._count = inner, count

    def decompress(self, *args):
        out = self._inner.decompress(*args)
        self._count[0] += len(out)
        return out

    def flush(self, *args):
        out = self._inner.flush(*args)
        self._count[0] += len(out)
        return out

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.fixture
def inflated(monkeypatch):
    """Counts the bytes zip decompressors inflate while a test runs (zipfile's own reads too)."""
    count = [0]
    real = zipfile._get_decompressor

    def counting(compress_type):
        inner = real(compress_type)
        return None if inner is None else _Counting(inner, count)

    monkeypatch.setattr(zipfile, "_get_decompressor", counting)
    return count


def _refused(path, *fragments):
    with pytest.raises(ValueError) as info:
        sktransfer.load(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# --------------------------------------------------------------------------- zip bombs
def test_bomb_in_listed_member_refused_before_inflating(path, inflated):
    """Honest header: the member declares 64 MiB, the manifest records ~1 KB."""
    comment, entries = _entries(path)
    entries = [(i, d) for i, d in entries if i.filename != CONFIG]
    _rewrite(path, entries, comment, bomb=(CONFIG, None, 0))
    assert os.path.getsize(path) < 200_000
    inflated[0], start = 0, time.perf_counter()
    _refused(path, CONFIG, "manifest records")
    assert inflated[0] < (1 << 20)  # the manifest only; today: all 64 MiB
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("crc", ["real", "zeros"])
def test_bomb_behind_forged_header_refused_reading_at_most_its_recorded_size(path, inflated, crc):
    """Forged header: the member declares the recorded size, its stream inflates to 64 MiB."""
    comment, entries = _entries(path)
    data = dict((i.filename, d) for i, d in entries)[CONFIG]
    entries = [(i, d) for i, d in entries if i.filename != CONFIG]
    forged = zlib.crc32(data if crc == "real" else bytes(len(data)))
    _rewrite(path, entries, comment, bomb=(CONFIG, len(data), forged))
    inflated[0] = 0
    _refused(path, CONFIG)
    assert inflated[0] < (1 << 20)


def test_bomb_in_unexpected_member_refused_without_reading_it(path, inflated):
    comment, entries = _entries(path)
    _rewrite(path, entries, comment, bomb=("evil.bin", None, 0))
    inflated[0] = 0
    _refused(path, "evil.bin", "unexpected")
    assert inflated[0] < (1 << 20)


def test_bomb_recorded_in_a_consistent_manifest_refused(model, tmp_path, monkeypatch, inflated):
    """A file that is valid zip and checksums can still not make load inflate a bomb."""
    _, entries = _entries(_save(model[0], tmp_path / "ok.skt"))
    raw = {i.filename: d for i, d in entries}
    meta = json.loads(raw.pop(_archive.MANIFEST))
    meta.pop("members")
    raw["tokenizer/padding.txt"] = bytes(20 << 20)  # deflates ~1000:1
    monkeypatch.setattr(_archive, "MAX_INFLATED_BYTES", 1 << 20)
    path = tmp_path / "m.skt"
    with open(path, "wb") as fh:
        _archive._write_zip(fh, meta, raw)
    inflated[0] = 0
    _refused(path, "zip bomb")
    assert inflated[0] < (1 << 20)


def _save(est, path):
    return sktransfer.save(est, path)


# --------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("keep", [0, 4, 100, 0.5, -1, -22, -30])
def test_truncated_file(path, keep):
    data = path.read_bytes()
    keep = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:keep])
    _refused(path)


def test_flipped_byte_in_weights_is_a_checksum_mismatch(path):
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(_archive.WEIGHTS)
    data[info.header_offset + 200] ^= 0xFF
    path.write_bytes(bytes(data))
    msg = _refused(path, _archive.WEIGHTS)
    assert "Bad CRC-32" in msg or "checksum mismatch" in msg  # zip's CRC catches it first


def test_extra_member(path):
    comment, entries = _entries(path)
    _rewrite(path, entries + [(zipfile.ZipInfo("tokenizer/extra.json"), b"{}")], comment)
    _refused(path, "tokenizer/extra.json", "unexpected")


def test_missing_member(path):
    comment, entries = _entries(path)
    _rewrite(path, [(i, d) for i, d in entries if i.filename != CONFIG], comment)
    _refused(path, CONFIG, "missing")


def test_duplicate_member(path):
    comment, entries = _entries(path)
    dup = [(zipfile.ZipInfo(CONFIG), dict((i.filename, d) for i, d in entries)[CONFIG])]
    with pytest.warns(UserWarning, match="Duplicate name"):
        _rewrite(path, entries + dup, comment)
    _refused(path, CONFIG, "duplicate")


def test_member_with_a_larger_declared_size_is_not_inflated(path, inflated):
    comment, entries = _entries(path)
    entries = [(i, d + b" " * 4096 if i.filename == CONFIG else d) for i, d in entries]
    _rewrite(path, entries, comment)
    inflated[0] = 0
    _refused(path, CONFIG, "declares")
    assert inflated[0] < 16_384  # the manifest only


def _with_manifest(path, manifest: bytes):
    """Replace the manifest, with a matching checksum in the zip comment."""
    _, entries = _entries(path)
    entries = [(i, manifest if i.filename == _archive.MANIFEST else d) for i, d in entries]
    comment = _archive._COMMENT + _archive._sha256(manifest).encode()
    _rewrite(path, entries, comment)


@pytest.mark.parametrize(
    "manifest",
    [b"not json {", b"\xff\xfe\x00", b"[" * 100_000, b"[1, 2]", b'"text"', b"null"],
    ids=["garbage", "not-utf8", "deep", "list", "string", "null"],
)
def test_manifest_that_is_not_a_json_object(path, manifest):
    _with_manifest(path, manifest)
    _refused(path)


def _edited_manifest(path, edit):
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read(_archive.MANIFEST))
    edit(meta)
    _with_manifest(path, json.dumps(meta).encode())


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("members"),
        lambda m: m["members"][CONFIG].pop("size"),
        lambda m: m["members"][CONFIG].update(size="995"),
        lambda m: m["members"][CONFIG].update(size=-1),
        lambda m: m.update(members=[]),
        lambda m: m.update(format_version="1"),
        lambda m: m.update(versions=None),
        lambda m: m.pop("estimator"),
        lambda m: m.pop("params"),
        lambda m: m.update(modality="audio"),
        lambda m: m.update(attributes={"classes_": {"__ndarray__": [1], "dtype": "V9"}}),
        lambda m: m.update(
            attributes={"classes_": {"__ndarray__": ["a"], "dtype": "<U999999999", "shape": [1]}}
        ),
        lambda m: m.update(n_frozen="1"),
        lambda m: m.update(block_names=None),
    ],
    ids=[
        "no-members",
        "no-size",
        "str-size",
        "negative-size",
        "members-list",
        "str-version",
        "versions-null",
        "no-estimator",
        "no-params",
        "modality",
        "void-dtype",
        "huge-str-dtype",
        "str-n-frozen",
        "block-names",
    ],
)
def test_malformed_manifest(path, edit):
    """Consistent checksums, but not what save writes: a ValueError, never KeyError/MemoryError."""
    _edited_manifest(path, edit)
    _refused(path)


@pytest.mark.parametrize(
    "content", [b"", b"hello", b"PK\x03\x04" + bytes(40), b"PK\x05\x06" + bytes(18)]
)
def test_not_a_zip_file(tmp_path, content):
    path = tmp_path / "x.skt"
    path.write_bytes(content)
    _refused(path, "not a")


def test_a_plain_zip_is_not_a_model(tmp_path):
    path = tmp_path / "x.skt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.txt", "hello")
    _refused(path, "no sktransfer.json manifest")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        sktransfer.load(tmp_path / "nope.skt")


def test_files_saved_before_the_bounded_reader_still_load(model, path):
    """Format 1 has always recorded sizes; this file's bytes come from save itself."""
    assert _archive.FORMAT_VERSION == 1
    clf, X = model
    np.testing.assert_allclose(sktransfer.load(path).predict_proba(X), clf.predict_proba(X))


# --------------------------------------------------------------------------- property
def _corruptions(n):
    position = st.one_of(
        st.integers(0, n - 1),
        st.integers(max(0, n - 600), n - 1),  # central directory and end record
        st.integers(0, 3000),  # manifest, config and tokenizer members and their headers
    )
    flips = st.lists(st.tuples(position, st.integers(1, 255)), min_size=1, max_size=4)
    return st.tuples(flips, st.one_of(st.none(), st.integers(0, n)))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_corruption_loads_the_same_model_or_raises_value_error(model, saved, data):
    clf, X = model
    flips, cut = data.draw(_corruptions(len(saved)))
    blob = bytearray(saved)
    for pos, mask in flips:
        blob[pos] ^= mask
    if cut is not None:
        blob = blob[:cut]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.skt")
        with open(path, "wb") as fh:
            fh.write(blob)
        try:
            loaded = sktransfer.load(path)
        except ValueError as exc:
            assert path in str(exc)
            return
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


# --------------------------------------------------------------------------- no unpickling
def _forbid_unpickling(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during sktransfer.load")

    real_np_load = np.load

    def np_load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            raise AssertionError("np.load(allow_pickle=True) during sktransfer.load")
        return real_np_load(*args, allow_pickle=False, **kwargs)

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(np, "load", np_load)


def test_packaged_source_naming_a_path_is_refused(model, path, tiny_bert_dir, monkeypatch):
    """A file must not make load read (and maybe unpickle) a model directory it names."""
    other = os.path.join(os.path.dirname(path), "elsewhere")
    import shutil

    shutil.copytree(tiny_bert_dir, other)

    def packaged(meta):
        meta["backbone_source"] = {"kind": "packaged", "name": other, "weights": None}

    _edited_manifest(path, packaged)
    _forbid_unpickling(monkeypatch)
    _refused(path, "packaged")


@pytest.mark.parametrize("name", ["resnet18", "/etc", "sentence-transformers/all-MiniLM-L6-v2"])
def test_reference_to_a_non_packaged_backbone_is_refused(path, name, monkeypatch):
    """store_backbone='reference' rebuilds registered packaged backbones only (no downloads)."""

    def reference(meta):
        meta["store_backbone"] = "reference"
        meta["referenced"] = {"keys": [], "sha256": ""}
        meta["backbone_source"] = {"kind": "packaged", "name": name, "weights": "default"}

    _edited_manifest(path, reference)
    _forbid_unpickling(monkeypatch)
    _refused(path, "packaged")


def test_config_describing_a_huge_network_is_refused_before_allocating(path):
    with zipfile.ZipFile(path) as zf:
        config = json.loads(zf.read(CONFIG))
    config["intermediate_size"] = 400_000  # 2 layers x 2 x 32 x 400k floats: ~200 MB

    comment, entries = _entries(path)
    raw = {i.filename: d for i, d in entries}
    meta = json.loads(raw.pop(_archive.MANIFEST))
    meta.pop("members")
    raw[CONFIG] = json.dumps(config).encode()
    with open(path, "wb") as fh:
        _archive._write_zip(fh, meta, raw)
    _refused(path, "refusing to allocate")


def test_load_never_unpickles(model, path, monkeypatch):
    clf, X = model
    _forbid_unpickling(monkeypatch)
    loaded = sktransfer.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


# --------------------------------------------------------------------------- killed save
_CHILD = textwrap.dedent(
    """
    import io, os, sys, time
    import sktransfer
    from sktransfer.io import archive as _archive

    est = sktransfer.load(sys.argv[1])
    real = _archive._write_zip

    def half_then_hang(fh, meta, members):
        buf = io.BytesIO()
        real(buf, meta, members)
        data = buf.getvalue()
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
        print("half", flush=True)
        time.sleep(120)

    _archive._write_zip = half_then_hang
    sktransfer.save(est, sys.argv[2])
    """
)


def _temps(directory, target="m.skt"):
    return sorted(
        n for n in os.listdir(directory) if n.startswith(f".{target}.") and n.endswith(".tmp")
    )


def test_sigkill_during_save_keeps_the_old_file_and_next_save_removes_the_orphan(model, path):
    clf, X = model
    before = path.read_bytes()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == b"half", proc.stderr.read()[-2000:]
        orphans = _temps(path.parent)
        assert len(orphans) == 1 and f".{proc.pid}@" in orphans[0], orphans
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)  # reaped: a zombie's pid still answers kill(pid, 0)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(sktransfer.load(path).predict(X), clf.predict(X))
    assert len(_temps(path.parent)) == 1  # the orphan

    sktransfer.save(clf, path)
    assert _temps(path.parent) == []
    np.testing.assert_array_equal(sktransfer.load(path).predict(X), clf.predict(X))


def _touch(directory, name, age_s=0.0, *, hold=None):
    """A temp-looking file; with ``hold`` (an ExitStack) it stays flock-ed, as a live writer's."""
    p = os.path.join(directory, name)
    with open(p, "wb") as fh:
        fh.write(b"partial")
    t = time.time() - age_s
    os.utime(p, (t, t))
    if hold is not None:
        import fcntl

        fh = hold.enter_context(open(p, "rb"))
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    return name


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_rule(tmp_path):
    """A writer's lock decides, not its pid or host; unnamed legacy temps go by age."""
    import contextlib

    host, old = _atomic._host_tag(), _atomic.STALE_AGE_S + 60
    target = tmp_path / "m.skt"
    with contextlib.ExitStack() as live:
        removed = {
            _touch(tmp_path, f".m.skt.{_dead_pid()}@{host}.abcdefgh.tmp"),  # unlocked, this host
            _touch(tmp_path, f".m.skt.{os.getpid()}@{host}.abcdefgh.tmp"),  # unlocked, pid alive
            _touch(tmp_path, f".m.skt.{_dead_pid()}@00000000.abcdefgh.tmp"),  # unlocked, other host
            _touch(tmp_path, ".m.skt.x1y2z3_9.tmp", age_s=old),  # pre-pid name, old
        }
        kept = {
            _touch(tmp_path, f".m.skt.{_dead_pid()}@{host}.abcdefgh.tmp", hold=live),  # locked
            _touch(tmp_path, f".m.skt.{os.getpid()}@00000000.abcdefgh.tmp", age_s=old, hold=live),
            _touch(tmp_path, ".m.skt.q1y2z3_9.tmp"),  # pre-pid name, recent
            _touch(tmp_path, f".m.skt.v2.{_dead_pid()}@{host}.abcdefgh.tmp", age_s=old),  # v2's
            _touch(tmp_path, ".m.skt.my-notes.tmp", age_s=old),  # not a temp name
            _touch(tmp_path, "m.skt.abcdefgh.tmp", age_s=old),  # no leading dot
        }
        got = _atomic.remove_stale_temps(target)
        assert {os.path.basename(p) for p in got} == removed
        assert set(os.listdir(tmp_path)) == kept


def test_save_cleans_only_its_own_targets_stale_temps(model, tmp_path):
    import contextlib

    host = _atomic._host_tag()
    with contextlib.ExitStack() as hold:
        mine = _touch(tmp_path, f".m.skt.{os.getpid()}@{host}.abcdefgh.tmp")
        live = _touch(tmp_path, f".m.skt.{_dead_pid()}@{host}.abcdefgh.tmp", hold=hold)
        other = _touch(tmp_path, f".n.skt.{_dead_pid()}@{host}.abcdefgh.tmp")
        sktransfer.save(model[0], tmp_path / "m.skt")
        assert mine not in os.listdir(tmp_path)
        assert {live, other} <= set(os.listdir(tmp_path))


def test_safe_format_module_has_no_pickle_imports():
    import ast
    import inspect

    for module in (safe_format, _archive, _atomic):
        tree = ast.parse(inspect.getsource(module))
        names = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not names & {"pickle", "joblib", "dill", "cloudpickle", "_pickle"}, module
