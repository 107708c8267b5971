"""``sktransfer predict`` under faults: outputs that are inputs, unwritable outputs, Ctrl-C,
closed pipes, unsafe model files, corrupt items; plus stdin, --version and progress."""

from __future__ import annotations

import csv
import glob
import io
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import CLI_CHILD as CHILD
from conftest import run_cli as _run
from PIL import Image

import sktransfer
from sktransfer.cli import commands as cli


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def _images(root, digits, n=5):
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.fromarray(digits[0][100 + i]).save(path)
        paths.append(str(path))
    return paths


def _no_temp_left(directory):
    return glob.glob(os.path.join(str(directory), ".*.tmp")) == []


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the CLI loads the model (the error must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(cli, "load_model", refuse)


# --------------------------------------------------------------------------- 1. output is an input
def test_output_that_is_an_input_is_refused_before_loading(
    text_model, digits, tmp_path, capsys, no_model_load
):
    src = tmp_path / "reviews.txt"
    src.write_text("good film\nawful plot\n")
    imgs = _images(tmp_path / "imgs", digits)
    os.symlink(src, tmp_path / "link.txt")
    os.link(imgs[0], tmp_path / "hard.png")
    cases = [
        ([src], src),  # the very file
        ([src], tmp_path / "link.txt"),  # through a symlink
        ([tmp_path / "link.txt"], src),
        ([imgs[0]], imgs[0]),  # an image input
        ([tmp_path / "hard.png"], imgs[0]),  # a hard link to it
        ([tmp_path / "imgs"], tmp_path / "imgs" / "img1.png"),  # inside an input directory
        ([tmp_path / "imgs"], tmp_path / "imgs" / "new.png"),  # would be read back next time
        ([tmp_path], tmp_path / "imgs" / "sub" / "x.jpg"),
    ]
    before = {p: open(p, "rb").read() for p in [src, *imgs]}
    for inputs, output in cases:
        code, out, err = _run(["predict", text_model[1], *inputs, "-o", output], capsys)
        assert code == 2, (inputs, output, err)
        assert err.count("\n") == 1 and err.startswith("sktransfer: error: the output")
    assert {p: open(p, "rb").read() for p in before} == before
    assert _no_temp_left(tmp_path) and _no_temp_left(tmp_path / "imgs")


def test_output_named_by_a_glob_or_list_is_refused_and_untouched(
    image_model, digits, tmp_path, capsys
):
    imgs = _images(tmp_path / "imgs", digits)
    before = open(imgs[2], "rb").read()
    (tmp_path / "list.txt").write_text("\n".join(imgs))
    for spec in [str(tmp_path / "imgs" / "*.png"), tmp_path / "list.txt"]:
        argv = ["predict", image_model[1], spec, "-o", imgs[2], "--allow-pickle"]
        code, _, err = _run(argv, capsys)
        assert code == 2 and "holds binary data" in err  # an image is never replaced
        assert open(imgs[2], "rb").read() == before
    # a text file named as an image item by a glob or a list: refused when it is reached
    (tmp_path / "imgs" / "notes.txt").write_text("old,content\n")
    (tmp_path / "list2.txt").write_text("\n".join([imgs[0], str(tmp_path / "imgs" / "notes.txt")]))
    for spec in [str(tmp_path / "imgs" / "*.txt"), tmp_path / "list2.txt"]:
        argv = ["predict", image_model[1], spec, "-o", tmp_path / "imgs" / "notes.txt"]
        code, _, err = _run([*argv, "--allow-pickle"], capsys)
        assert code == 2 and "is also an input" in err, err
        assert (tmp_path / "imgs" / "notes.txt").read_text() == "old,content\n"
    # a CSV beside the images in the input directory is fine: it is not read as an image
    out = tmp_path / "imgs" / "preds.csv"
    argv = ["predict", image_model[1], tmp_path / "imgs", "-o", out, "--allow-pickle"]
    assert _run(argv, capsys)[0] == 0 and len(_rows(out.read_text())) == 5


# --------------------------------------------------------------------------- 2. atomic output
def test_output_replaced_atomically_and_mode_kept(text_model, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("good film\nawful plot\n")
    out = tmp_path / "out.csv"
    out.write_text("old,content\n")
    os.chmod(out, 0o640)
    code, stdout, err = _run(["predict", text_model[1], tmp_path / "in.txt", "-o", out], capsys)
    assert code == 0 and stdout == "", err
    assert [r["id"] for r in _rows(out.read_text())] == [
        f"{tmp_path / 'in.txt'}:{i}" for i in (1, 2)
    ]
    assert os.stat(out).st_mode & 0o777 == 0o640
    assert _no_temp_left(tmp_path)


@pytest.mark.parametrize("failure, status", [(KeyboardInterrupt, 130), (RuntimeError, 3)])
def test_interrupt_or_model_failure_leaves_old_output(
    text_model, texts, tmp_path, capsys, monkeypatch, failure, status
):
    clf, model = text_model
    (tmp_path / "in.txt").write_text("\n".join(texts[0][:40]) + "\n")
    out = tmp_path / "out.csv"
    out.write_text("old,content\n")
    calls = []
    real = type(clf).predict_proba

    def flaky(self, X):
        calls.append(len(X))
        if len(calls) == 2:
            raise failure("boom")
        return real(self, X)

    monkeypatch.setattr(type(clf), "predict_proba", flaky)
    argv = ["predict", model, tmp_path / "in.txt", "-o", out, "--batch-size", "8"]
    code, _, err = _run(argv, capsys)
    assert code == status, err
    assert calls == [8, 8]  # a failing batch is not re-scored item by item
    assert out.read_text() == "old,content\n" and _no_temp_left(tmp_path)
    assert err.strip().count("\n") == 0 and err.startswith("sktransfer: ")


# --------------------------------------------------------------------------- 3. unwritable output
def _unwritable_cases(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    cases = [
        (tmp_path / "missing" / "out.csv", "no such directory"),
        (tmp_path, "is a directory"),
    ]
    if os.geteuid() != 0:  # root writes into a 0555 directory anyway
        cases.append((ro / "out.csv", "Permission denied"))
    if os.path.isdir("/sys"):
        cases.append(("/sys/out.csv", "cannot write"))  # sysfs refuses new files, even to root
    return cases


def test_unwritable_output_is_a_usage_error_before_loading(
    text_model, tmp_path, capsys, no_model_load
):
    (tmp_path / "in.txt").write_text("good film\n")
    for output, message in _unwritable_cases(tmp_path):
        code, out, err = _run(["predict", text_model[1], tmp_path / "in.txt", "-o", output], capsys)
        assert code == 2, (output, err)
        assert err.startswith("sktransfer: error: cannot write") and err.count("\n") == 1
        assert message in err and out == ""
    assert _no_temp_left(tmp_path)


# --------------------------------------------------------------------------- 4. stdin
def test_dash_reads_stdin_texts_and_image_paths(
    text_model, image_model, digits, tmp_path, capsys, monkeypatch
):
    clf, model = text_model
    lines = ["good film", "awful plot", "lovely story"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(lines).encode())))
    code, out, _ = _run(["predict", model, "-", "-o", "-"], capsys)
    assert code == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["<stdin>:1", "<stdin>:2", "<stdin>:3"]
    assert [r["prediction"] for r in rows] == list(clf.predict(lines))
    iclf, imodel = image_model
    paths = _images(tmp_path, digits, n=3)
    listing = "\n".join([paths[0], "", paths[1], str(tmp_path / "gone.png"), paths[2]]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(listing.encode())))
    code, out, err = _run(["predict", imodel, "-", "--allow-pickle"], capsys)
    assert code == 1 and "<stdin>:4" in err and "gone.png" in err
    rows = _rows(out)
    assert [r["prediction"] for r in rows if r["prediction"]] == list(iclf.predict(paths))
    code, _, err = _run(["predict", model, "-", "-"], capsys)
    assert code == 2 and "only once" in err


# --------------------------------------------------------------------------- 5. closed pipe
def test_closed_pipe_ends_quietly(text_model, texts, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts[0][i % 100] for i in range(20_000)) + "\n")
    argv = [*CHILD, "predict", text_model[1], str(path), "--batch-size", "256"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"id,prediction\r\n"
        proc.stdout.close()  # like `| head -1`
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == cli.EXIT_CLOSED_PIPE == 141, err
    assert err == b"", err.decode(errors="replace")


# --------------------------------------------------------------------------- 6. progress
def test_progress_only_on_a_terminal_with_a_total(
    image_model, digits, tmp_path, capsys, monkeypatch
):
    _images(tmp_path / "imgs", digits)
    argv = ["predict", image_model[1], tmp_path / "imgs", "--allow-pickle", "--batch-size", "2"]
    code, _, err = _run(argv, capsys)
    assert code == 0 and err == ""  # stderr is not a terminal: no bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for extra, expect in [([], "5/5"), (["--no-progress"], None)]:
        fake = Terminal()
        monkeypatch.setattr(sys, "stderr", fake)
        assert _run([*argv, *extra], capsys)[0] == 0
        if expect:
            assert expect in fake.getvalue() and "item" in fake.getvalue()
        else:
            assert fake.getvalue() == ""


def test_progress_totals_are_counted_cheaply(tmp_path):
    from sktransfer.cli.inputs import check_inputs, count_items

    (tmp_path / "a.txt").write_text("x\ny\nz")  # no final newline
    (tmp_path / "b.csv").write_text('t\n"multi\nline"\nplain\n')
    plan = check_inputs([str(tmp_path / "a.txt"), str(tmp_path / "b.csv")], "text", "t")
    assert count_items(plan, "text") == 5
    assert count_items(check_inputs(["-", str(tmp_path / "a.txt")], "text", None), "text") is None


# --------------------------------------------------------------------------- 7. version
def test_version(capsys):
    code, out, _ = _run(["--version"], capsys)
    assert code == 0 and out == f"sktransfer {sktransfer.__version__}\n"


# --------------------------------------------------------------------------- 8. pickles
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling creates the marker file
        return (open, (self.marker, "w"))


def test_pickles_are_never_loaded_without_opt_in(image_model, digits, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "img.png").write_bytes(b"")
    _images(tmp_path / "imgs", digits, n=2)
    evil = pickle.dumps(_Evil(str(marker)))
    for name in ["model.skt", "model.joblib", "model.pkl", "model"]:
        (tmp_path / name).write_bytes(evil)
        code, _, err = _run(["predict", tmp_path / name, tmp_path / "imgs"], capsys)
        assert code == 2 and not marker.exists(), name
        assert err.count("\n") == 1
        if name != "model.skt":
            assert "not a sktransfer.save file" in err and "--allow-pickle" in err
    # a file that claims the safe format is never unpickled, even with --allow-pickle
    argv = ["predict", tmp_path / "model.skt", tmp_path / "imgs", "--allow-pickle"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and not marker.exists() and "never unpickled" in err
    with open(image_model[1], "rb") as fh:  # a genuine joblib model named .skt: refused too
        (tmp_path / "real.skt").write_bytes(fh.read())
    argv = ["predict", tmp_path / "real.skt", tmp_path / "imgs", "--allow-pickle"]
    assert _run(argv, capsys)[0] == 2
    # the opt-in loads a genuine joblib model
    argv = ["predict", image_model[1], tmp_path / "imgs", "--allow-pickle"]
    code, out, _ = _run(argv, capsys)
    assert code == 0 and len(_rows(out)) == 2


def test_help_documents_pickle_threads_and_exit_codes(capsys):
    code, out, _ = _run(["predict", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    assert "--allow-pickle" in flat and "EXECUTES CODE" in flat
    assert "default: 1" in flat
    for status in ["0", "1", "2", "3", "130", "141"]:
        assert f"\n  {status} " in out
    for doc in [cli.__doc__, _run(["--help"], capsys)[1]]:
        assert "130" in doc and "141" in doc


# --------------------------------------------------------------------------- 9. threads
def test_threads_default_is_one_while_scoring(text_model, tmp_path, capsys, monkeypatch):
    clf, model = text_model
    (tmp_path / "in.txt").write_text("good film\n")
    seen = []
    real = type(clf).predict_proba

    def spy(self, X):
        seen.append(torch.get_num_threads())
        return real(self, X)

    monkeypatch.setattr(type(clf), "predict_proba", spy)
    before = torch.get_num_threads()
    assert _run(["predict", model, tmp_path / "in.txt"], capsys)[0] == 0
    assert seen == [cli.DEFAULT_THREADS] == [1] and torch.get_num_threads() == before


# --------------------------------------------------------------------------- 10. bad items
def test_bad_items_isolated_while_decoding_one_call_per_batch(
    image_model, digits, tmp_path, capsys, monkeypatch
):
    clf, model = image_model
    paths = _images(tmp_path / "imgs", digits, n=8)
    good = open(paths[0], "rb").read()
    (tmp_path / "imgs" / "img2.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (tmp_path / "imgs" / "img5.png").write_bytes(os.urandom(200))  # random bytes
    calls = []
    real = type(clf).predict_proba

    def spy(self, X):
        calls.append(len(X))
        return real(self, X)

    monkeypatch.setattr(type(clf), "predict_proba", spy)
    code, out, err = _run(["predict", model, tmp_path / "imgs", "--allow-pickle"], capsys)
    assert code == 1 and "img2.png" in err and "img5.png" in err
    assert calls == [6]  # the six good images, in one call; no item-by-item re-scoring
    rows = _rows(out)
    ok = [p for i, p in enumerate(paths) if i not in (2, 5)]
    expected = clf.classes_[real(clf, ok).argmax(1)]
    assert [r["prediction"] for r in rows if r["prediction"]] == list(expected)
    assert [r["id"] for r in rows if not r["prediction"]] == [paths[2], paths[5]]


# --------------------------------------------------------------------------- 12. SIGINT
def test_sigint_mid_run_keeps_old_output(text_model, texts, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts[0][i % 100] for i in range(300_000)) + "\n")
    out = tmp_path / "out.csv"
    out.write_text("old,content\n")
    argv = [*CHILD, "predict", text_model[1], str(path), "-o", str(out), "--batch-size", "8"]
    # a suite launched in the background (`cmd &` without job control) ignores SIGINT, and a
    # child Python keeps an ignored SIGINT ignored: give the CLI a terminal user's Ctrl-C
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 180
        while True:  # wait until rows are being written to the temporary file
            temps = glob.glob(str(tmp_path / ".out.csv.*.tmp"))
            if temps and os.path.getsize(temps[0]) > 100:
                break
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the CLI never started scoring"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode(errors="replace")
    assert b"interrupted" in err and b"Traceback" not in err
    assert out.read_text() == "old,content\n"
    assert glob.glob(str(tmp_path / ".out.csv.*.tmp")) == []
