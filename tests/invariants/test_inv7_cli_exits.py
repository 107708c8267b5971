"""Invariant 7: the CLI never ends in a traceback or a misleading exit code.

Every failure is one line on stderr and one status of ``--help``'s table: 1 only
when some items could not be read, 2 a usage error, 3 the model failed, 4 an
input/output error (a full disk, ``/dev/full``, an input failing part way), 5 out
of threads or memory, 141 a closed pipe; never a traceback, never "interrupted"
for anything but a signal. Inputs that are not plain files (FIFOs, devices,
``<(cmd)``, ``/dev/null``) neither hang the run nor count as missing, and every
line of input is one row of output, for text and image models alike.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import tracemalloc

import pytest
from conftest import CLI_CHILD as CHILD
from conftest import run_cli as _run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sktransfer.cli import commands as cli
from sktransfer.cli.errors import EXIT_STATUSES
from sktransfer.cli.sources import MAX_LINE_BYTES, read_lines


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def _one_error_line(err, *words):
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("sktransfer: error: "), err
    for word in words:
        assert word in err, (word, err)


def _images(root, digits, n=3):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(digits[0][100 + i]).save(root / f"img{i}.png")
    return [str(root / f"img{i}.png") for i in range(n)]


@contextlib.contextmanager
def _no_hang(seconds=60):
    """Fail (instead of hanging the suite) when the block takes over ``seconds``."""

    def fail(signum, frame):
        raise AssertionError(f"hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- writes
def test_full_output_is_an_io_error_not_some_items_failed(
    text_model, tmp_path, capsys, monkeypatch
):
    """The reproduction: -o /dev/full and stdout on a full disk printed a traceback, exit 1."""
    (tmp_path / "in.txt").write_text("good film\nawful plot\n")
    argv = ["predict", text_model[1], tmp_path / "in.txt"]
    if os.path.exists("/dev/full"):
        code, _, err = _run([*argv, "-o", "/dev/full"], capsys)
        assert code == 4
        _one_error_line(err, "cannot write /dev/full", "No space left")
        for other in (argv, ["backbones"], ["--help"], ["predict", "--help"], ["--version"]):
            with _full_file() as full:  # a failed run points stdout's fd at /dev/null
                monkeypatch.setattr(sys, "stdout", full)
                assert cli.main([str(a) for a in other]) == 4, other
            _one_error_line(capsys.readouterr().err, "standard output", "No space left")
        monkeypatch.undo()

    def full_disk(fd):  # the last fsync of the temp file fails: the old file stays
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "out.csv"
    out.write_text("old,content\n")
    monkeypatch.setattr(os, "fsync", full_disk)
    code, _, err = _run([*argv, "-o", out], capsys)
    assert code == 4
    _one_error_line(err, f"cannot write {out}", "No space left")
    assert out.read_text() == "old,content\n"
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


@contextlib.contextmanager
def _full_file():
    full = open("/dev/full", "w")
    try:
        yield full
    finally:
        with contextlib.suppress(OSError):
            full.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_closed_or_full_stderr_does_not_change_the_status(text_model, tmp_path, monkeypatch):
    with _full_file() as full:
        monkeypatch.setattr(sys, "stderr", full)
        assert cli.main(["predict", text_model[1], str(tmp_path / "missing.txt")]) == 2
        monkeypatch.setattr(sys, "stderr", None)
        assert cli.main(["predict", text_model[1], str(tmp_path / "missing.txt")]) == 2


def test_ids_with_undecodable_file_names_reach_stdout(image_model, digits, tmp_path, monkeypatch):
    name = os.fsdecode(b"caf\xe9.png")  # a Latin-1 file name on a UTF-8 system
    _images(tmp_path / "imgs", digits, n=1)
    shutil.copy(tmp_path / "imgs" / "img0.png", tmp_path / "imgs" / name)
    sink = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(sink, encoding="utf-8"))
    code = cli.main(["predict", image_model[1], str(tmp_path / "imgs"), "--allow-pickle"])
    sys.stdout.flush()
    assert code == 0
    assert b"caf\xe9.png," in sink.getvalue() and sink.getvalue().count(b"\r\n") == 3


# --------------------------------------------------------------------------- inputs
def test_corrupt_parquet_names_the_path(text_model, texts, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all\n")
    code, _, err = _run(["predict", text_model[1], tmp_path / "garbage.parquet"], capsys)
    assert code == 2
    _one_error_line(err, str(tmp_path / "garbage.parquet"), "not a valid Parquet file")
    pd.DataFrame({"t": texts[0][:50]}).to_parquet(tmp_path / "ok.parquet")
    data = bytearray((tmp_path / "ok.parquet").read_bytes())
    data[10:-60] = os.urandom(len(data) - 70)  # pages damaged, footer intact
    (tmp_path / "damaged.parquet").write_bytes(bytes(data))
    code, _, err = _run(["predict", text_model[1], tmp_path / "damaged.parquet"], capsys)
    assert code in (2, 4)
    assert "Traceback" not in err and str(tmp_path / "damaged.parquet") in err


def test_threads_and_batch_size_are_bounded(text_model, tmp_path, capsys):
    """The reproduction: --threads 100000 segfaulted (139) after printing "interrupted"."""
    (tmp_path / "in.txt").write_text("good film\n")
    from sktransfer.cli.model import max_threads

    for option, value in [
        ("--threads", 100_000),
        ("--threads", max_threads() + 1),
        ("--threads", -3),
        ("--batch-size", 10**30),
        ("--batch-size", -1),
    ]:
        code, _, err = _run(["predict", text_model[1], tmp_path / "in.txt", option, value], capsys)
        assert code == 2
        _one_error_line(err, option, "between 1 and")
    argv = ["predict", text_model[1], tmp_path / "in.txt", "--threads", max_threads()]
    assert _run(argv, capsys)[0] == 0


def test_fifo_socket_and_device_in_a_folder_do_not_hang(image_model, digits, tmp_path, capsys):
    """The reproduction: a FIFO named x.png inside an input folder hung forever."""
    _images(tmp_path / "imgs", digits)
    os.mkfifo(tmp_path / "imgs" / "x.png")
    os.symlink("/dev/zero", tmp_path / "imgs" / "zero.png")
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'imgs' / 'x.png'}\n")
    for spec in [tmp_path / "imgs", tmp_path / "imgs" / "*.png", tmp_path / "list.txt"]:
        with _no_hang():
            code, out, err = _run(["predict", image_model[1], spec, "--allow-pickle"], capsys)
        assert code == 1, err
        assert "x.png" in err and "FIFO, not a regular file" in err and "Traceback" not in err
        assert any(r["prediction"] == "" for r in _rows(out))


def test_streams_and_dev_null_are_inputs(text_model, image_model, digits, tmp_path, capsys):
    """The reproduction: ``<(cmd)`` (/dev/fd/N) and /dev/null were refused as missing."""
    clf, model = text_model
    code, out, err = _run(["predict", model, "/dev/null"], capsys)
    assert code == 0 and out == "id,prediction\r\n", err
    paths = _images(tmp_path, digits, n=2)
    for data, target in [(b"good film\n\nawful plot\n", model), ("\n".join(paths).encode(), None)]:
        read, write = os.pipe()
        os.write(write, data)
        os.close(write)
        argv = ["predict", target or image_model[1], f"/dev/fd/{read}", "--allow-pickle"]
        try:
            code, out, err = _run(argv, capsys)
        finally:
            os.close(read)
        assert code == 0, err
        assert [r["id"] for r in _rows(out)] == [
            f"/dev/fd/{read}:{i + 1}" for i in range(len(data.splitlines()))
        ]


def test_globs_of_directories_and_imageless_folders_are_usage_errors(image_model, tmp_path, capsys):
    """The reproduction: a glob matching only directories succeeded with an empty CSV."""
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "notes.md").write_text("no image here")
    for spec, words in [
        (tmp_path / "*", ["matches only directories"]),
        (tmp_path / "**" / "sub", ["matches only directories"]),
        (tmp_path / "b", ["no image file in the directory"]),
    ]:
        code, out, err = _run(["predict", image_model[1], spec, "--allow-pickle"], capsys)
        assert code == 2 and out == ""
        _one_error_line(err, *words)


def test_text_model_refuses_images_and_binary_files(text_model, digits, tmp_path, capsys):
    """The reproduction: a text model given a .png scored its bytes line by line."""
    png = _images(tmp_path, digits, n=1)[0]
    shutil.copy(png, tmp_path / "photo")  # no extension: its bytes say what it is
    (tmp_path / "utf16.txt").write_bytes("good film\n".encode("utf-16"))
    for spec in [png, tmp_path / "photo", tmp_path / "utf16.txt", text_model[1]]:
        code, out, err = _run(["predict", text_model[1], spec], capsys)
        assert code == 2 and out == ""
        _one_error_line(err, str(spec))


def test_a_huge_line_is_read_in_bounded_memory_and_cut(text_model, tmp_path, capsys, monkeypatch):
    """The reproduction: one 30 MB line cost 5.3 GB: reading is bounded, the model gets 1 MiB."""
    stream = io.BufferedReader(io.BytesIO(b"good film " * 3_000_000 + b"\nshort\n"))  # 30 MB
    tracemalloc.start()
    try:
        lines = list(read_lines(stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(raw) for raw, _ in lines] == [MAX_LINE_BYTES, 5]
    assert [cut for _, cut in lines] == [True, False]
    assert peak < 4 * MAX_LINE_BYTES  # the line is never held whole
    line = b"abcd " + "good film é".encode() * 200_000  # 1 MiB falls inside an "é"
    (tmp_path / "in.txt").write_bytes(line + b"\nawful plot\n")
    clf, model = text_model
    seen = []
    real = type(clf).predict_proba

    def spy(self, X):
        seen.extend(len(x.encode()) for x in X)
        return real(self, X)

    monkeypatch.setattr(type(clf), "predict_proba", spy)
    code, out, err = _run(["predict", model, tmp_path / "in.txt"], capsys)
    assert code == 0 and len(_rows(out)) == 2
    assert sorted(seen) == [10, MAX_LINE_BYTES - 1]  # cut on a character boundary (é: 2 bytes)
    assert "note: 1 text(s) longer than 1 MiB" in err and "in.txt:1" in err


def test_blank_lines_are_rows_for_text_and_image_models(
    text_model, image_model, digits, tmp_path, capsys
):
    """The reproduction: a text model scored a blank line, an image model dropped it."""
    paths = _images(tmp_path, digits, n=2)
    (tmp_path / "texts.txt").write_text("good film\n\nawful plot\n")
    (tmp_path / "paths.txt").write_text(f"{paths[0]}\n\n{paths[1]}\n")
    code, out, _ = _run(["predict", text_model[1], tmp_path / "texts.txt"], capsys)
    assert code == 0 and [r["prediction"] != "" for r in _rows(out)] == [True, True, True]
    argv = ["predict", image_model[1], tmp_path / "paths.txt", "--allow-pickle"]
    code, out, err = _run(argv, capsys)
    assert code == 1 and "paths.txt:2: line 2 is blank" in err
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"{tmp_path / 'paths.txt'}:{i}" for i in (1, 2, 3)]
    assert [r["prediction"] != "" for r in rows] == [True, False, True]


def test_unreadable_inputs_are_named_never_skipped(
    text_model, image_model, digits, tmp_path, capsys, monkeypatch
):
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    (tmp_path / "empty.csv").write_text("")
    for spec, words in [
        (tmp_path / "loop_a", ["cannot read", "symbolic links"]),
        (tmp_path / "empty.csv", ["is empty", "header"]),
        ("x" * 5000, ["cannot read", "too long"]),
    ]:
        code, _, err = _run(["predict", text_model[1], spec], capsys)
        assert code == 2
        _one_error_line(err, *words)
    code, _, err = _run(["predict", text_model[1], tmp_path / "empty.csv", "-o", ""], capsys)
    assert code == 2 and "-o needs a file name" in err
    _images(tmp_path / "imgs", digits, n=1)
    _images(tmp_path / "imgs" / "locked", digits, n=1)
    real = os.scandir

    def scandir(path="."):  # as for a folder without read permission (root reads all)
        if os.fspath(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code, out, err = _run(["predict", image_model[1], tmp_path / "imgs", "--allow-pickle"], capsys)
    assert code == 1 and "locked: cannot list the folder: Permission denied" in err
    assert [r["prediction"] == "" for r in _rows(out)] == [False, True]


# --------------------------------------------------------------------------- resources
def _no_threads(*args, **kwargs):
    raise RuntimeError("can't start new thread")


def test_running_out_of_threads_is_said_so(text_model, tmp_path, capsys, monkeypatch):
    """The reproduction: blamed the model file (exit 2) or said "interrupted" (130)."""
    (tmp_path / "in.txt").write_text("good film\n")
    argv = ["predict", text_model[1], tmp_path / "in.txt"]
    with pytest.MonkeyPatch.context() as mp:  # the probe before any work
        mp.setattr(threading.Thread, "start", _no_threads)
        code, _, err = _run(argv, capsys)
    assert code == 5
    _one_error_line(err, "ran out of threads", "--threads 1")
    from sktransfer.io import safe_format

    def load_fails(*args, **kwargs):  # a loader that wraps the thread error in its own
        try:
            _no_threads()
        except RuntimeError as exc:
            raise ValueError("is a directory but not a loadable Hugging Face model") from exc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(safe_format, "load", load_fails)
        code, _, err = _run(argv, capsys)
    assert code == 5 and "cannot load model" not in err
    _one_error_line(err, "ran out of threads", "loading the model")

    class PanicException(BaseException):  # as pyo3 raises it for the tokenizers' pool
        pass

    def panics(self, X):
        raise PanicException("ThreadPoolBuildError { kind: IOError(WouldBlock) }")

    monkeypatch.setattr(type(text_model[0]), "predict_proba", panics)
    code, _, err = _run(argv, capsys)
    assert code == 5
    _one_error_line(err, "ran out of threads", "scoring")


def test_thread_limit_in_a_real_process(text_model, tmp_path):
    """The real case: ``prlimit --nproc`` as a non-root user (skipped where impossible)."""
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    if os.geteuid() != 0 or not setpriv or not prlimit:
        pytest.skip("needs root, setpriv and prlimit to run as a thread-limited user")
    (tmp_path / "in.txt").write_text("good film\n")
    os.chmod(tmp_path, 0o755)
    caps = ["--inh-caps=+dac_override", "--ambient-caps=+dac_override"]  # read the venv
    base = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *caps, prlimit]
    argv = [*CHILD, "predict", text_model[1], str(tmp_path / "in.txt")]
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_NUM_THREADS", "PARALLELISM"))}
    statuses = {}
    for nproc in (1, 2):
        proc = subprocess.run(
            [*base, f"--nproc={nproc}", *argv], capture_output=True, env=env, timeout=300
        )
        if proc.returncode in (126, 127) or b"failed to execute" in proc.stderr:
            pytest.skip(f"cannot run as the limited user: {proc.stderr[-200:]!r}")
        err = proc.stderr.decode(errors="replace")
        assert "Traceback" not in err and "interrupted" not in err, err
        assert proc.returncode in (0, 5), err
        statuses[nproc] = proc.returncode
        if proc.returncode == 5:
            assert "ran out of threads" in err
    assert statuses == {1: 5, 2: 0}  # --threads 1 needs no thread beside the main one


# --------------------------------------------------------------------------- property
@pytest.fixture(scope="module")
def arena(text_model, image_model, digits, texts, tmp_path_factory):
    """Every kind of path the property test draws from; ``{name}`` placeholders."""
    pd = pytest.importorskip("pandas")
    root = tmp_path_factory.mktemp("arena")
    shutil.copy(text_model[1], root / "text.skt")
    shutil.copy(image_model[1], root / "image.joblib")
    (root / "junk.skt").write_bytes(os.urandom(300))
    (root / "empty.skt").write_bytes(b"")
    _images(root / "imgs", digits)
    (root / "imgs" / "broken.png").write_bytes(b"not a png")
    os.mkfifo(root / "imgs" / "fifo.png")
    (root / "dirs" / "a").mkdir(parents=True)
    (root / "emptydir").mkdir()
    lines = [*texts[0][:4], "", "imgs/img0.png"]
    (root / "in.txt").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe latin-1\n")
    (root / "nul.txt").write_bytes(b"good film\n\0 a stray NUL\n")
    (root / "list.txt").write_text("imgs/img0.png\n\nimgs/fifo.png\nimgs/broken.png\nnone.png\n")
    pd.DataFrame({"t": texts[0][:5]}).to_csv(root / "in.csv", index=False)
    pd.DataFrame({"t": texts[0][:5], "n": range(5)}).to_csv(root / "two.csv", index=False)
    (root / "dup.csv").write_text("t,t\na,b\n")
    pd.DataFrame({"t": [*texts[0][:3], None, float("nan")]}).to_parquet(root / "in.parquet")
    (root / "bad.parquet").write_bytes(b"PAR1 not really")
    (root / "bin.dat").write_bytes(os.urandom(100) + b"\0")
    return root


_BAD_MODELS = ["junk.skt", "empty.skt", "missing.skt", "imgs", "in.txt"]
_TEXT_INPUTS = ["in.txt", "nul.txt", "in.csv", "in.parquet", "-", "/dev/null"]
_IMAGE_INPUTS = ["imgs", "imgs/*.png", "imgs/img0.png", "list.txt", "-", "/dev/null"]
_BAD_INPUTS = [
    "two.csv", "dup.csv", "bad.parquet", "dirs/*", "emptydir", "missing.txt", "bin.dat",
    "nothing/*.png",
]  # fmt: skip
_MODEL = st.one_of(st.just("text.skt"), st.just("image.joblib"), st.sampled_from(_BAD_MODELS))
_INPUT_LISTS = st.one_of(
    st.lists(st.sampled_from(_TEXT_INPUTS), min_size=1, max_size=3),
    st.lists(st.sampled_from(_IMAGE_INPUTS), min_size=1, max_size=3),
    st.lists(st.sampled_from(_TEXT_INPUTS + _IMAGE_INPUTS + _BAD_INPUTS), max_size=3),
)
_OPTIONS = st.one_of(
    st.just(["--proba"]),
    st.just(["--no-progress"]),
    st.just(["--quantize", "dynamic"]),
    st.tuples(st.just("--batch-size"), st.sampled_from(["1", "3", "70000", "0", "1e3"])),
    st.tuples(st.just("--threads"), st.sampled_from(["1", "2", "100000", "0", "x"])),
    st.tuples(st.just("--device"), st.sampled_from(["cpu", "auto", "cuda:9", "mps"])),
    st.tuples(st.just("--column"), st.sampled_from(["t", "n"])),
)
_OUTPUT = st.sampled_from(
    [None, None, "out.csv", "/dev/full", "/dev/full", "/dev/null", "emptydir", "no/dir.csv"]
)
_ALLOWED = EXIT_STATUSES - {70, 129, 130, 141, 143}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    model=_MODEL,
    inputs=_INPUT_LISTS,
    options=st.lists(_OPTIONS, max_size=3),
    output=_OUTPUT,
    allow_pickle=st.sampled_from([True, True, True, False]),
)
def test_any_command_line_ends_in_one_documented_status(
    arena, capsys, monkeypatch, model, inputs, options, output, allow_pickle
):
    """Random MODEL, inputs and options: a documented status, never a traceback, never
    a signal's status; a failure (2-5) says so in one "sktransfer: error:" line (or
    argparse's usage lines); the files read are unchanged."""
    monkeypatch.chdir(arena)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"good film\n\nimgs/img1.png\n")))
    before = {p: (arena / p).read_bytes() for p in ["text.skt", "in.txt", "in.csv"]}
    argv = ["predict", model, *inputs, *[str(v) for option in options for v in option]]
    argv += (["--allow-pickle"] if allow_pickle else []) + (["-o", output] if output else [])
    with _no_hang(120):
        code, _, err = _run(argv, capsys)
    assert code in _ALLOWED, (argv, code, err)
    assert "Traceback" not in err and "interrupted" not in err, (argv, err)
    if code >= 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith(("sktransfer: error: ", "sktransfer predict: error: ")), (argv, err)
    assert {p: (arena / p).read_bytes() for p in before} == before
