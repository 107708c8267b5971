"""The ``sktransfer`` command line (issue 5, item 3)."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import types

import joblib
import numpy as np
import pytest
import torch
from conftest import run_cli as _run
from PIL import Image

import sktransfer
from sktransfer import PretrainedTextClassifier
from sktransfer.cli import scoring as cli_scoring


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def _write_images(root, digits):
    X, _ = digits
    paths = []
    for i in range(5):
        sub = root / ("a" if i < 3 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i}.png"
        Image.fromarray(X[100 + i]).save(path)
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- text
def test_predict_text_file_with_bad_line(text_model, texts, tmp_path, capsys):
    clf, model = text_model
    lines = texts[0][:6]
    data = "\n".join(lines[:3]).encode() + b"\n\xff\xfe broken\n" + "\n".join(lines[3:]).encode()
    (tmp_path / "in.txt").write_bytes(data + b"\n")
    code, out, err = _run(["predict", model, tmp_path / "in.txt", "--proba"], capsys)
    assert code == 1
    assert "in.txt:4" in err and "UTF-8" in err
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"{tmp_path / 'in.txt'}:{i}" for i in range(1, 8)]
    assert rows[3]["prediction"] == "" and rows[3]["proba_neg"] == ""
    good = rows[:3] + rows[4:]
    assert [r["prediction"] for r in good] == list(clf.predict(lines))
    proba = np.array([[float(r["proba_neg"]), float(r["proba_pos"])] for r in good])
    np.testing.assert_allclose(proba, clf.predict_proba(lines), atol=1e-5)


def test_predict_csv_and_parquet_columns(text_model, texts, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    clf, model = text_model
    frame = pd.DataFrame({"n": range(5), "review": texts[0][:5]})
    frame.loc[2, "review"] = None
    frame.to_csv(tmp_path / "in.csv", index=False)
    with open(tmp_path / "in.csv", "ab") as fh:  # a sixth row whose text is not UTF-8
        fh.write(b"5,caf\xe9 latte\n")
    code, out, err = _run(["predict", model, tmp_path / "in.csv", "--column", "review"], capsys)
    assert code == 1 and "row 2: missing value" in err and "row 5: not valid UTF-8" in err
    rows = _rows(out)
    assert [r["id"] for r in rows] == [f"{tmp_path / 'in.csv'}:{i}" for i in range(6)]
    assert [r["prediction"] for r in rows] == [
        "" if i == 2 else p for i, p in enumerate(clf.predict(texts[0][:5]))
    ] + [""]
    pytest.importorskip("pyarrow")
    frame.dropna().to_parquet(tmp_path / "in.parquet")
    out_file = tmp_path / "pred.csv"
    argv = ["predict", model, tmp_path / "in.parquet", "--column", "review", "-o", out_file]
    code, out, _ = _run(argv, capsys)
    assert code == 0 and out == ""
    rows = _rows(out_file.read_text())
    assert [r["prediction"] for r in rows] == list(clf.predict(frame.dropna()["review"].tolist()))


def test_batches_are_streamed(text_model, texts):
    """Rows are written while the input is still being read (no materialised input)."""
    clf, _ = text_model
    pulled = []

    def items():
        for i in range(10_000):
            pulled.append(i)
            yield str(i), texts[0][i % len(texts[0])]

    class StopAfterFirstBatch(io.StringIO):
        def flush(self):
            raise StopIteration("first batch written")

    with pytest.raises(StopIteration):
        cli_scoring.predict_stream(
            clf, items(), StopAfterFirstBatch(), batch_size=16, progress=False
        )
    call = cli_scoring.call_size(clf, 16)  # 16 rounded up to whole micro-batches of the model
    assert 16 <= call <= 64
    assert call <= len(pulled) <= call + 1  # one call's items read, not the 10,000


# --------------------------------------------------------------------------- images
def test_predict_images_dir_glob_and_corrupt_file(image_model, digits, tmp_path, capsys):
    clf, model = image_model
    paths = _write_images(tmp_path / "imgs", digits)
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "imgs" / "a" / "notes.md").write_text("ignored: not an image extension")
    argv = ["predict", model, tmp_path / "imgs", "--batch-size", "2", "--proba", "--allow-pickle"]
    code, out, err = _run(argv, capsys)
    assert code == 1 and "broken.png" in err
    rows = {r["id"]: r for r in _rows(out)}
    assert set(rows) == set(paths) | {str(tmp_path / "imgs" / "a" / "broken.png")}
    expected = clf.predict(paths)
    assert [rows[p]["prediction"] for p in paths] == list(expected)
    sums = [float(rows[p]["proba_even"]) + float(rows[p]["proba_odd"]) for p in paths]
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    argv = ["predict", model, str(tmp_path / "imgs" / "**" / "img*.png"), "--allow-pickle"]
    code, out, _ = _run(argv, capsys)
    assert code == 0
    assert sorted(r["id"] for r in _rows(out)) == sorted(paths)


def test_predict_image_list_file_and_device(image_model, digits, tmp_path, capsys):
    clf, model = image_model
    paths = _write_images(tmp_path, digits)
    (tmp_path / "list.txt").write_text("\n".join(os.path.relpath(p, tmp_path) for p in paths))
    argv = ["predict", model, tmp_path / "list.txt", "--device", "cpu", "--threads", "3"]
    seen = []
    predict_proba = type(clf).predict_proba

    def spy(self, X):
        seen.append(torch.get_num_threads())
        return predict_proba(self, X)

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(clf), "predict_proba", spy)
        code, out, _ = _run([*argv, "--allow-pickle"], capsys)
    assert seen == [3] and torch.get_num_threads() == threads  # set while scoring, restored
    assert code == 0
    assert [r["prediction"] for r in _rows(out)] == list(clf.predict(paths))


# --------------------------------------------------------------------------- other targets
@pytest.fixture(scope="module")
def multi_label_model(tiny_bert_dir, texts, tmp_path_factory):
    X, labels = texts
    pos = (labels == "pos").astype(int)
    film = np.array(["film" in x.split() for x in X], dtype=int)
    Y = np.stack([pos * film, (1 - pos) * film, film, pos], axis=1)  # some rows: no label
    clf = PretrainedTextClassifier(tiny_bert_dir, C=100.0, random_state=0).fit(X, Y)
    path = tmp_path_factory.mktemp("models") / "multi.skt"
    sktransfer.save(clf, path)
    return clf, str(path)


def test_predict_multi_label_lists_labels(multi_label_model, texts, tmp_path, capsys):
    clf, model = multi_label_model
    lines = texts[0][:30]
    data = "\n".join(lines[:3]).encode() + b"\n\xff broken\n" + "\n".join(lines[3:]).encode()
    (tmp_path / "in.txt").write_bytes(data + b"\n")
    code, out, err = _run(["predict", model, tmp_path / "in.txt", "--proba"], capsys)
    assert code == 1 and "in.txt:4" in err
    rows = _rows(out)
    header = ["id", "prediction", "proba_0", "proba_1", "proba_2", "proba_3"]
    assert list(rows[0]) == header
    assert rows[3]["prediction"] == "" and rows[3]["proba_0"] == ""
    good = rows[:3] + rows[4:]
    indicators = clf.predict(lines)
    expected = [
        cli_scoring.MULTI_LABEL_SEPARATOR.join(str(j) for j in np.flatnonzero(r))
        for r in indicators
    ]
    assert [r["prediction"] for r in good] == expected
    assert any(";" in e for e in expected) and any(e == "" for e in expected)
    proba = np.array([[float(r[f"proba_{j}"]) for j in range(4)] for r in good])
    np.testing.assert_allclose(proba, clf.predict_proba(lines), atol=1e-5)
    code, out, _ = _run(["predict", model, tmp_path / "in.txt"], capsys)  # no --proba
    assert list(_rows(out)[0]) == ["id", "prediction"]


@pytest.fixture(scope="module")
def regressor_models(tiny_bert_dir, texts, tmp_path_factory):
    from sktransfer import PretrainedTextRegressor

    X, labels = texts
    score = np.where(labels == "pos", 1000.0, 900.0) + np.arange(len(X))
    models = {}
    for name, y in [("1d", score), ("2d", np.stack([score, -score / 7, np.ones(len(X))], 1))]:
        reg = PretrainedTextRegressor(tiny_bert_dir, random_state=0).fit(X, y)
        path = tmp_path_factory.mktemp("models") / f"reg_{name}.skt"
        sktransfer.save(reg, path)
        models[name] = reg, str(path)
    return models


@pytest.mark.parametrize("name", ["1d", "2d"])
def test_predict_regressor_values(regressor_models, texts, tmp_path, capsys, name):
    reg, model = regressor_models[name]
    lines = texts[0][:12]
    data = "\n".join(lines[:2]).encode() + b"\n\xff broken\n" + "\n".join(lines[2:]).encode()
    (tmp_path / "in.txt").write_bytes(data + b"\n")
    code, out, err = _run(["predict", model, tmp_path / "in.txt"], capsys)
    assert code == 1 and "in.txt:3" in err
    rows = _rows(out)
    columns = ["prediction"] if name == "1d" else ["prediction_0", "prediction_1", "prediction_2"]
    assert list(rows[0]) == ["id", *columns]
    assert all(rows[2][c] == "" for c in columns)
    good = rows[:2] + rows[3:]
    values = np.array([[float(r[c]) for c in columns] for r in good])
    expected = reg.predict(lines).reshape(len(lines), -1)
    # (not bit-equal: the CLI batches the good items of each batch, uncached)
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert 850 < values[:, 0].min() and values[:, 0].max() < 1200  # original units
    assert max(len(r[columns[0]]) for r in good) > 8  # more than %.6g would keep
    code, out, err = _run(["predict", model, tmp_path / "in.txt", "--proba"], capsys)
    assert code == 2 and out == "" and "--proba needs a classifier" in err


def test_predict_refuses_a_model_without_predictions(digits_small, tmp_path, capsys):
    from conftest import make_cnn

    from sktransfer import ImageEmbedder

    emb = ImageEmbedder(make_cnn(), image_size=16).fit(digits_small[0][:4])
    joblib.dump(emb, tmp_path / "emb.joblib")
    (tmp_path / "in.txt").write_text("x.png\n")
    argv = ["predict", tmp_path / "emb.joblib", tmp_path / "in.txt", "--allow-pickle"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "ImageEmbedder, not a fitted classifier or regressor" in err


# --------------------------------------------------------------------------- usage
@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "{model}", "{tmp}/missing.txt"], "no such file"),
        (["predict", "{tmp}/nope.skt", "{tmp}/in.txt"], "model file not found"),
        (["predict", "{model}", "{tmp}/in.csv"], "--column"),
        (["predict", "{model}", "{tmp}/in.csv", "--column", "x"], "no column 'x'"),
        (["predict", "{model}", "{tmp}/*.png"], "no file matches"),
        (["predict", "{model}", "{tmp}/in.txt", "--batch-size", "0"], "batch-size"),
        (["predict", "{model}", "{tmp}/in.txt", "--threads", "0"], "threads"),
        (["predict", "{model}", "{tmp}/in.txt", "--device", "cuda:9"], "CUDA"),
        (["predict", "{tmp}/in.txt", "{tmp}/in.txt"], "cannot load model"),
        (["predict", "{model}"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(text_model, tmp_path, capsys, argv, message):
    (tmp_path / "in.txt").write_text("good film\n")
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    argv = [a.format(model=text_model[1], tmp=tmp_path) for a in argv]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert message in err


def test_backbones_table(capsys):
    code, out, _ = _run(["backbones"], capsys)
    assert code == 0
    assert "efficientnet_lite0" in out and "all-MiniLM-L6-v2" in out and "resnet18" in out
    code, out, _ = _run(["backbones", "--modality", "text"], capsys)
    assert "all-MiniLM-L6-v2" in out and "resnet18" not in out


def test_demo_calls_run_demo(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("sktransfer.demo.run")
    fake.run_demo = lambda verbose=1, out=None: calls.append((verbose, out))
    monkeypatch.setitem(sys.modules, "sktransfer.demo.run", fake)
    assert _run(["demo"], capsys)[0] == 0
    assert _run(["demo", "--quiet", "--out", "here"], capsys)[0] == 0
    assert calls == [(1, None), (0, "here")]


def test_console_entry_point_runs(text_model, tmp_path):
    (tmp_path / "in.txt").write_text("good film\nawful plot\n")
    code = "import sys; from sktransfer.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", code, "predict", text_model[1], str(tmp_path / "in.txt")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "id,prediction" and len(proc.stdout.splitlines()) == 3
