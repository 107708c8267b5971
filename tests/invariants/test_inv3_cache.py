"""Invariant 3: the cache never serves wrong data, and it is never fatal.

* A disk entry is served only if its checksum (over its key, header and payload) and its
  header (an allow-listed dtype, a shape matching the payload) both check out; anything
  else is removed and recomputed, and no read raises.
* A file is keyed by its bytes: new content under a restored mtime (``cp -p``, ``tar x``,
  ``rsync -t``) is a miss, and features of a file that changed while they were computed
  are not stored.
* An ``OSError`` of the disk tier (a full disk, an I/O error) warns once and the memory
  tier carries on.
* Temp files of killed cache writers are removed; a live writer's never are.

Key-level instances (PIL palette / EXIF keys, FIFOs, read-only values) are in
``tests/test_cache.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sktransfer import ImageEmbedder, PretrainedImageClassifier, cache_info, clear_cache
from sktransfer.cache import config_context, disk, lookup
from sktransfer.cache.keys import digest, sample_keys

pytestmark = pytest.mark.usefixtures("fresh_cache")  # conftest.py
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _cnn():
    from conftest import make_cnn

    return make_cnn()


def _rows(idx):
    return [np.arange(24, dtype=np.float32).reshape(2, 12) * (i + 1) for i in idx]


def _entries(directory):
    return sorted(p for p in directory.rglob("*.sktc"))


def _cache_warnings(record):
    return [w for w in record if "feature cache directory" in str(w.message)]


# --------------------------------------------------------------------------- regressions
def test_header_dtype_edit_is_recomputed_not_served(digits_small, tmp_path):
    """The issue's case: ``<f4`` -> ``<i4`` in every entry changed 22 of 30 labels."""
    X, y = digits_small
    with config_context(cache_dir=str(tmp_path)):
        clf = PretrainedImageClassifier(_cnn(), image_size=8, random_state=0).fit(X, y)
        expected = clf.predict(X[:30])
        for path in _entries(tmp_path):
            path.write_bytes(path.read_bytes().replace(b'"<f4"', b'"<i4"', 1))
        clear_cache()  # memory tier empty: reads go to disk
        np.testing.assert_array_equal(clf.predict(X[:30]), expected)
        assert cache_info()["disk_hits"] == 0 and cache_info()["backbone_forwards"] == 30


def test_byte_order_bit_flip_drops_the_entry(digits_small, tmp_path):
    """The issue's case: one bit ``<`` -> ``>`` made every later predict fail, for good."""
    X, y = digits_small
    X = X[:30]
    with config_context(cache_dir=str(tmp_path)):
        clf = PretrainedImageClassifier(_cnn(), image_size=8, random_state=0).fit(X, y[:30])
        expected = clf.predict_proba(X)
        path = _entries(tmp_path)[0]
        blob = path.read_bytes()
        at = blob.index(b'"<f4"') + 1
        assert ord("<") ^ ord(">") == 2  # one bit
        path.write_bytes(blob[:at] + bytes([blob[at] ^ 2]) + blob[at + 1 :])
        for _ in range(2):
            clear_cache()
            np.testing.assert_allclose(clf.predict_proba(X), expected, rtol=0, atol=1e-6)
        assert cache_info()["disk_hits"] == 30  # rewritten by the first predict
        assert disk.decode(path.stem, path.read_bytes()) is not None


def _bmp(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")  # same size for any pixels
    return pixels


def _restore(path, how, seed, tmp):
    """Give ``path`` new pixels while its size and mtime stay as they were."""
    st0 = os.stat(path)
    if how == "utime":  # an editor, then touch -r
        _bmp(path, seed)
    elif how == "cp -p":
        other = os.path.join(tmp, "other.bmp")
        _bmp(other, seed)
        os.utime(other, ns=(st0.st_atime_ns, st0.st_mtime_ns))
        shutil.copy2(other, path)
    else:  # "tar x": the archive restores the member's mtime
        other = os.path.join(tmp, "member.bmp")
        _bmp(other, seed)
        os.utime(other, ns=(st0.st_atime_ns, st0.st_mtime_ns))
        archive = os.path.join(tmp, "a.tar")
        with tarfile.open(archive, "w") as tar:
            tar.add(other, arcname=os.path.basename(path))
        with tarfile.open(archive) as tar:
            trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(os.path.dirname(path), **trusted)  # (mtime restored either way)
    os.utime(path, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    st1 = os.stat(path)
    assert (st1.st_size, st1.st_mtime_ns) == (st0.st_size, st0.st_mtime_ns)


@pytest.mark.parametrize("how", ["utime", "cp -p", "tar x"])
def test_new_pixels_under_a_restored_mtime_are_a_miss(tmp_path, how):
    path = str(tmp_path / "img.bmp")
    _bmp(path, 0)
    emb = ImageEmbedder(_cnn(), image_size=8).fit([path])
    emb.transform([path])
    _restore(path, how, 1, str(tmp_path))
    with config_context(cache=False):
        fresh = emb.transform([path])
    np.testing.assert_array_equal(emb.transform([path]), fresh)


def _failing(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("where", ["write", "read"])
def test_disk_errors_warn_once_and_carry_on_in_memory(digits_small, tmp_path, monkeypatch, where):
    X, y = digits_small
    X, y = X[:60], y[:60]
    with config_context(cache=False):
        expected = PretrainedImageClassifier(_cnn(), image_size=8, random_state=0).fit(X, y)
        expected = expected.predict_proba(X[::-1])
    clear_cache()
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        _failing(28 if where == "write" else 5)()

    monkeypatch.setattr(disk, "atomic_write" if where == "write" else "_read_regular", fail)
    with config_context(cache_dir=str(tmp_path)), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        clf = PretrainedImageClassifier(_cnn(), image_size=8, random_state=0).fit(X, y)
        got = clf.predict_proba(X[::-1])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    (w,) = _cache_warnings(rec)
    assert w.category is UserWarning and str(tmp_path) in str(w.message)
    assert ("Errno 28" if where == "write" else "Errno 5") in str(w.message)
    assert w.filename == __file__  # points at the caller's line
    assert len(calls) == 1  # the disk tier stays off: no retry per entry
    assert cache_info()["backbone_forwards"] == len(X)  # memory tier still serves


def test_full_disk_at_the_start_warns_not_raises(digits_small, tmp_path, monkeypatch):
    X, y = digits_small
    monkeypatch.setattr(tempfile, "mkstemp", _failing(28))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        clf = PretrainedImageClassifier(_cnn(), image_size=8, cache_dir=str(tmp_path / "c"))
        clf.fit(X[:40], y[:40]).predict(X[:40])
    assert len(_cache_warnings(rec)) == 1
    # a directory that is wrong (not a directory) is still the user's error, before any work
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        PretrainedImageClassifier(_cnn(), cache_dir=str(tmp_path / "f")).fit(X[:40], y[:40])


@contextlib.contextmanager
def _tiny_filesystem(path):
    """A 64 KiB tmpfs at ``path`` (needs root, or skips)."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)]
    try:
        done = subprocess.run(mount, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
def test_a_real_full_filesystem_only_warns(digits_small, tmp_path):
    X, y = digits_small
    with config_context(cache=False):
        expected = PretrainedImageClassifier(_cnn(), image_size=8, random_state=0).fit(X, y)
        expected = expected.predict_proba(X)
    with _tiny_filesystem(tmp_path / "small") as small:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            clf = PretrainedImageClassifier(
                _cnn(), image_size=8, random_state=0, cache_dir=str(small)
            )
            got = clf.fit(X, y).predict_proba(X)
        (w,) = _cache_warnings(rec)
        assert "No space left on device" in str(w.message) and str(small) in str(w.message)
        assert not list(small.rglob("*.tmp"))  # the failed writes left no temp file
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# A cache writer that stops mid-entry: prints its temp file's path, then sleeps until
# it is killed or gets a line on stdin. argv: cache dir, key.
_WRITER = textwrap.dedent(
    """
    import contextlib, os, sys
    import numpy as np
    from sktransfer.cache import disk

    real = disk.atomic_write

    @contextlib.contextmanager
    def stalling(path):
        with real(path) as fh:
            folder, prefix = os.path.dirname(path), "." + os.path.basename(path) + "."
            (name,) = [n for n in os.listdir(folder) if n.startswith(prefix)]
            print(os.path.join(folder, name), flush=True)
            sys.stdin.readline()
            yield fh

    disk.atomic_write = stalling
    disk.write(sys.argv[1], sys.argv[2], np.ones(4, np.float32))
    print("done", flush=True)
    """
)


@contextlib.contextmanager
def _writer(cache_dir, key):
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(cache_dir), key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        temp = proc.stdout.readline().decode().strip()
        assert temp.endswith(".tmp"), proc.stderr.read().decode()[-2000:]
        yield proc, temp
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_killed_writers_temps_are_removed_and_live_ones_kept(tmp_path):
    with _writer(tmp_path, "ab" + "1" * 38) as (live, live_temp):
        with _writer(tmp_path, "ab" + "2" * 38) as (dead, dead_temp):
            dead.send_signal(signal.SIGKILL)
            dead.wait(timeout=30)
        assert os.path.exists(dead_temp)
        with config_context(cache_dir=str(tmp_path)):
            clear_cache(disk=True)
        assert not os.path.exists(dead_temp) and os.path.exists(live_temp)
        out, err = live.communicate(b"\n", timeout=60)
        assert live.returncode == 0 and out.strip() == b"done", err.decode()[-2000:]
    assert not list(tmp_path.rglob("*.tmp"))  # the live writer's entry is whole
    np.testing.assert_array_equal(disk.read(str(tmp_path), "ab" + "1" * 38), np.ones(4))


def test_killed_writers_temps_are_removed_by_the_next_write_into_their_folder(tmp_path):
    with _writer(tmp_path, "cd" + "1" * 38) as (proc, temp):
        proc.kill()
        proc.wait(timeout=30)
    assert os.path.exists(temp)
    disk.write(str(tmp_path), "cd" + "3" * 38, np.zeros(3, np.float32))
    assert not os.path.exists(temp)


def test_features_of_a_file_changed_while_computing_are_not_stored(tmp_path):
    path = str(tmp_path / "a.bmp")
    _bmp(path, 0)
    (key,) = sample_keys([path])

    def compute(idx):
        _bmp(path, 1)  # the decoder sees other bytes than were hashed
        return _rows(idx)

    lookup("ns", [key], compute, cache_dir=str(tmp_path / "c"))
    assert cache_info()["entries"] == 0 and not _entries(tmp_path / "c")
    lookup("ns", sample_keys([path]), _rows)
    assert cache_info()["entries"] == 1  # an unchanged file's features are stored


# --------------------------------------------------------------------------- properties
_WEIRD_DTYPES = ["<f4", ">f4", "<i4", "|O", "O", "<U3", "|V4", "<f8", "<c8", "float32", 1, None,
                 ["<f4"], {"a": 1}]  # fmt: skip
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
_headers = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(_WEIRD_DTYPES),
        "shape": st.one_of(st.lists(st.integers(-3, 100), max_size=4), _json_values),
        "nbytes": st.one_of(st.integers(-8, 400), _json_values),
    },
    optional={"extra": _json_values},
)
_edits = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("header"), _headers, st.booleans()),
    st.tuples(st.just("raw header"), st.binary(max_size=60), st.booleans()),
    st.tuples(st.just("replace"), st.binary(max_size=200)),
)


def _apply(edit, blob, key):
    kind = edit[0]
    if kind == "flip":
        at = int(edit[1] * len(blob))
        return blob[:at] + bytes([blob[at] ^ (1 << edit[2])]) + blob[at + 1 :]
    if kind == "truncate":
        return blob[: int(edit[1] * len(blob))]
    if kind == "append":
        return blob + edit[1]
    if kind == "replace":
        return edit[1]
    start = len(disk.MAGIC) + 41
    end = blob.index(b"\n", start)
    header = json.dumps(edit[1]).encode() if kind == "header" else edit[1]
    body = header + blob[end:]
    digits = disk._checksum(key, body) if edit[2] else blob[len(disk.MAGIC) : start - 1]
    return disk.MAGIC + digits + b"\n" + body  # re-summed: only the header check is left


@SETTINGS
@given(edit=_edits, shape=st.sampled_from([(3,), (2, 12), (1, 2, 3)]))
def test_any_edit_of_an_entry_is_recomputed_never_served_never_raised(edit, shape):
    with tempfile.TemporaryDirectory() as tmp:
        clear_cache()
        rows = lambda idx: [np.full(shape, 1.5 + i, np.float32) for i in idx]  # noqa: E731
        lookup("ns", ["k0", "k1"], rows, cache_dir=tmp)
        key = digest("ns", "k0")
        path = disk.entry_path(tmp, key)
        with open(path, "rb") as fh:
            blob = fh.read()
        damaged = _apply(edit, blob, key)
        with open(path, "wb") as fh:
            fh.write(damaged)
        clear_cache()
        calls = []
        got = lookup("ns", ["k0", "k1"], lambda idx: calls.append(idx) or rows(idx), cache_dir=tmp)
        np.testing.assert_array_equal(got[1], rows([1])[0])  # untouched entry: served
        certified = disk.decode(key, damaged)
        if certified is None:
            assert calls == [[0]]  # recomputed, never served
            np.testing.assert_array_equal(got[0], rows([0])[0])
            with open(path, "rb") as fh:  # and stored again, whole
                np.testing.assert_array_equal(disk.decode(key, fh.read()), rows([0])[0])
        else:  # only an unchanged file, or one whose checksum was made for the edit
            assert damaged == blob or (edit[0] in ("header", "raw header") and edit[2])
            assert calls == [] and certified.dtype.str in disk.DTYPES
            np.testing.assert_array_equal(got[0], certified)


@SETTINGS
@given(
    seeds=st.lists(st.integers(0, 2**16), min_size=2, max_size=4),
    how=st.lists(st.sampled_from(["utime", "cp -p", "tar x"]), min_size=3, max_size=3),
)
def test_content_changes_under_restored_mtimes_are_never_stale(seeds, how):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "img.bmp")
        _bmp(path, seeds[0])
        emb = _EMBEDDER.fit([path])
        for step, seed in enumerate(seeds[1:]):
            emb.transform([path])  # cached under the current content
            _restore(path, how[step], seed, tmp)
            with config_context(cache=False):
                fresh = emb.transform([path])
            np.testing.assert_array_equal(emb.transform([path]), fresh)


_EMBEDDER = ImageEmbedder(_cnn(), image_size=8)
_ERRNOS = [28, 5, 13, 30, 122, 27, 12]  # ENOSPC EIO EACCES EROFS EDQUOT EFBIG ENOMEM


@SETTINGS
@given(
    fail_at=st.lists(st.tuples(st.sampled_from(["read", "write"]), st.sampled_from(_ERRNOS)),
                     max_size=2),
    n=st.integers(1, 6),
)  # fmt: skip
def test_disk_faults_never_fail_a_lookup_and_warn_once(fail_at, n):
    keys = [f"k{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        clear_cache()
        lookup("ns", keys[: n // 2], _rows, cache_dir=tmp)  # some entries on disk already
        clear_cache()
        for where, code in fail_at:
            mp.setattr(
                disk, "atomic_write" if where == "write" else "_read_regular", _failing(code)
            )
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            got = lookup("ns", keys, _rows, cache_dir=tmp)
            again = lookup("ns", keys, pytest.fail, cache_dir=tmp)  # the memory tier serves
        for i, (a, b) in enumerate(zip(got, again)):
            np.testing.assert_array_equal(a, _rows([i])[0])
            np.testing.assert_array_equal(b, _rows([i])[0])
        assert len(_cache_warnings(rec)) <= 1
