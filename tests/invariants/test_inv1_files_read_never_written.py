"""Invariant 1 (CLI): no file ``sktransfer predict`` reads is ever written.

MODEL, every input and the file on standard input are refused as ``-o`` (and as a
redirected standard output), however they are named: the same path, a relative
one, a symlink, a hard link, a symlinked folder. An existing binary file is never
replaced. SIGTERM and SIGHUP unwind like Ctrl-C (the temp file is removed, ``-o``
keeps its old content) and end with 128 + the signal; the temp file a SIGKILLed
run leaves is removed by the next run.
"""

from __future__ import annotations

import glob
import io
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import CLI_CHILD as CHILD
from conftest import run_cli as _run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sktransfer.cli import commands as cli


def _snapshot(paths):
    return {str(p): open(p, "rb").read() for p in paths}


def _temps(directory):
    return glob.glob(os.path.join(str(directory), ".*.tmp"))


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(cli, "load_model", refuse)


@pytest.fixture
def world(text_model, tmp_path):
    """A model and an input, each with a hard link and a symlink, and a symlinked folder."""
    model = tmp_path / "model.skt"
    model.write_bytes(open(text_model[1], "rb").read())
    data = tmp_path / "in.txt"
    data.write_text("good film\nawful plot\n")
    os.link(model, tmp_path / "model.hard")
    os.symlink(model, tmp_path / "model.link")
    os.link(data, tmp_path / "in.hard")
    os.symlink(data, tmp_path / "in.link")
    os.symlink(tmp_path / "in.link", tmp_path / "in.link2")  # a chain of links
    os.symlink(tmp_path, tmp_path / "alias")  # the same folder under another name
    return tmp_path


# --------------------------------------------------------------------------- reproductions
def test_model_as_output_is_refused_and_unchanged(world, capsys, monkeypatch, no_model_load):
    """The reproduction: ``predict model.skt in.txt -o model.skt`` replaced the model."""
    model, data = world / "model.skt", world / "in.txt"
    before = _snapshot([model, data])
    monkeypatch.chdir(world)
    for output in ["model.skt", model, "model.hard", "model.link", "./alias/model.skt"]:
        code, out, err = _run(["predict", "model.skt", "in.txt", "-o", output], capsys)
        assert code == 2, (output, err)
        assert err.startswith("sktransfer: error: the output") and "the model" in err
        assert err.count("\n") == 1 and out == ""
    for model_arg in ["model.hard", "model.link"]:  # MODEL named through a link
        code, _, err = _run(["predict", model_arg, "in.txt", "-o", "model.skt"], capsys)
        assert code == 2 and "it would be overwritten" in err
    assert _snapshot([model, data]) == before and _temps(world) == []


def test_stdin_file_and_redirected_stdout_are_guarded(world, capsys, monkeypatch, no_model_load):
    """``... - -o in.txt < in.txt`` and ``... in.txt >> in.txt`` would write what is read."""
    data = world / "in.txt"
    before = _snapshot([data, world / "model.skt"])
    with open(data, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        code, _, err = _run(["predict", world / "model.skt", "-", "-o", world / "in.hard"], capsys)
    assert code == 2 and "standard input" in err
    for target in [data, world / "model.skt"]:
        with open(target, "a") as appended:
            monkeypatch.setattr(sys, "stdout", appended)
            code = cli.main(["predict", str(world / "model.skt"), str(world / "in.link")])
        assert code == 2, target
        assert "standard output is the" in capsys.readouterr().err
    assert _snapshot([data, world / "model.skt"]) == before


def test_existing_binary_file_is_never_replaced(world, digits, capsys, no_model_load):
    from PIL import Image

    image = world / "photo.png"
    Image.fromarray(digits[0][0]).save(image)
    archive = world / "other_model.skt"
    archive.write_bytes(open(world / "model.skt", "rb").read())
    before = _snapshot([image, archive])
    for output in [image, archive]:
        code, _, err = _run(
            ["predict", world / "model.skt", world / "in.txt", "-o", output], capsys
        )
        assert code == 2 and "holds binary data" in err
    assert _snapshot([image, archive]) == before


def test_existing_csv_output_is_replaced_as_documented(world, capsys):
    out = world / "out.csv"
    out.write_text("old,content\n")
    code, _, err = _run(["predict", world / "model.skt", world / "in.txt", "-o", out], capsys)
    assert code == 0, err
    assert out.read_text().splitlines()[0] == "id,prediction" and _temps(world) == []


# --------------------------------------------------------------------------- signals
def _signal_during_scoring(signum, monkeypatch, clf):
    """Send ``signum`` to this process from inside the second model call."""
    calls = []
    real = type(clf).predict_proba

    def spy(self, X):
        calls.append(len(X))
        if len(calls) == 2:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler interrupts the sleep
        return real(self, X)

    monkeypatch.setattr(type(clf), "predict_proba", spy)
    return calls


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_clean_up_like_sigint(
    text_model, texts, tmp_path, capsys, monkeypatch, signum
):
    if signal.getsignal(signum) is not signal.SIG_DFL:
        pytest.skip("the test runner handles this signal itself")
    clf, model = text_model
    (tmp_path / "in.txt").write_text("\n".join(texts[0][:40]) + "\n")
    out = tmp_path / "out.csv"
    out.write_text("old,content\n")
    calls = _signal_during_scoring(signum, monkeypatch, clf)
    argv = ["predict", model, tmp_path / "in.txt", "-o", out, "--batch-size", "8"]
    code, _, err = _run(argv, capsys)
    assert code == 128 + signum and calls == [8, 8], err
    assert err == f"sktransfer: terminated ({signal.Signals(signum).name})\n"
    assert out.read_text() == "old,content\n" and _temps(tmp_path) == []
    assert signal.getsignal(signum) is signal.SIG_DFL  # restored


def _start_and_wait_for_rows(argv, tmp_path):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while True:  # wait until rows are being written to the temporary file
        temps = _temps(tmp_path)
        if temps and os.path.getsize(temps[0]) > 100:
            return proc
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
        assert time.monotonic() < deadline, "the CLI never started scoring"
        time.sleep(0.05)


def test_sigterm_from_outside_keeps_old_output(text_model, texts, tmp_path):
    """The reproduction: after ``timeout``/``kill`` a 590 KB temp file stayed beside -o."""
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts[0][i % 100] for i in range(300_000)) + "\n")
    out = tmp_path / "out.csv"
    out.write_text("old,content\n")
    argv = [*CHILD, "predict", text_model[1], str(path), "-o", str(out), "--batch-size", "8"]
    proc = _start_and_wait_for_rows(argv, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err.decode(errors="replace")
    assert err == b"sktransfer: terminated (SIGTERM)\n"
    assert out.read_text() == "old,content\n" and _temps(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_next_run_removes_the_temp_file_of_a_killed_writer(text_model, tmp_path, capsys):
    """A SIGKILLed writer cannot clean up; the next ``-o`` run of that file does."""
    from sktransfer.fs.atomic import atomic_write

    out = tmp_path / "out.csv"
    out.write_text("old,content\n")
    pid = os.fork()
    if pid == 0:  # the child: a writer killed half way
        try:
            with atomic_write(str(out), durable=True) as fh:
                fh.write(b"id,prediction\r\npartial")
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and len(_temps(tmp_path)) == 1
    (tmp_path / "in.txt").write_text("good film\n")
    code, _, err = _run(["predict", text_model[1], tmp_path / "in.txt", "-o", out], capsys)
    assert code == 0, err
    assert _temps(tmp_path) == [] and out.read_text().startswith("id,prediction")


# --------------------------------------------------------------------------- property
_TARGETS = [
    "model.skt",
    "model.hard",
    "model.link",
    "alias/model.skt",
    "alias/model.link",
    "in.txt",
    "in.hard",
    "in.link",
    "in.link2",
    "alias/in.txt",
    "alias/./in.hard",
    "out.csv",  # not read: written
    "alias/out.csv",
]
_INPUTS = ["in.txt", "in.hard", "in.link", "in.link2", "alias/in.txt"]
_MODELS = ["model.skt", "model.hard", "model.link", "alias/model.skt"]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    model=st.sampled_from(_MODELS),
    inputs=st.lists(st.sampled_from(_INPUTS), min_size=1, max_size=3),
    target=st.sampled_from(_TARGETS),
    absolute=st.booleans(),
    extra=st.lists(st.sampled_from(["--proba", "--no-progress", "--threads=1"]), max_size=2),
)
def test_any_name_of_a_read_file_is_refused_as_output(
    world, capsys, monkeypatch, model, inputs, target, absolute, extra
):
    """Random MODEL/input/-o names, through links and aliases: -o naming any file the
    command reads (MODEL or an input, whatever the names) is exit 2, and no read
    file's bytes change; other targets are written normally."""
    monkeypatch.chdir(world)
    files = [world / "model.skt", world / "in.txt"]
    before = _snapshot(files)
    output = str(world / target) if absolute else target
    code, _, err = _run(["predict", model, *inputs, "-o", output, *extra], capsys)
    if target.endswith("out.csv"):
        assert code == 0, err
        assert (world / "out.csv").read_text().startswith("id,prediction")
    else:
        assert code == 2, (model, inputs, output, err)
        assert err.startswith("sktransfer: error: the output") and err.count("\n") == 1
    assert _snapshot(files) == before and _temps(world) == []
