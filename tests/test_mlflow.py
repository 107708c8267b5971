"""sktransfer.mlflow against the real MLflow: log, load in a fresh process, serve, docs."""

from __future__ import annotations

import base64
import io
import json
import os
import pickletools
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")

import sktransfer  # noqa: E402
import sktransfer.mlflow as skm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "mlflow.md"
PY = sys.executable


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A local sqlite tracking store and artifact folder; the previous URI restored after."""
    root = tmp_path_factory.mktemp("mlflow")
    before = mlflow.get_tracking_uri()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("sktransfer", artifact_location=(root / "art").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    yield uri
    mlflow.set_tracking_uri(before)


@pytest.fixture(scope="module")
def image_clf(digits_small, tmp_path_factory):
    """A frozen image classifier on a tiny random ViT (a backbone the safe format rebuilds)."""
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    import torch
    import transformers

    path = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
    )
    transformers.ViTModel(config).save_pretrained(str(path))
    X, y = digits_small
    labels = np.array(["even", "odd"])[y[:60] % 2]
    clf = sktransfer.PretrainedImageClassifier(str(path), image_size=32, random_state=0)
    return clf.fit(X[:60], labels)


def _png(pixels):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(digits_small):
    return [_png(a) for a in digits_small[0][200:206]]


@pytest.fixture(scope="module")
def texts_in():
    return ["a wonderful brilliant film", "boring awful plot", "the acting was lovely", "dull"]


@pytest.fixture(scope="module")
def logged(tracking, text_model, image_clf):
    """Both classifiers logged in one run: ``{"text": (clf, uri, dir), "image": ...}``."""
    out = {}
    with mlflow.start_run():
        for key, clf in (("text", text_model[0]), ("image", image_clf)):
            info = skm.log_model(clf, name=f"{key}-model")
            local = mlflow.artifacts.download_artifacts(info.model_uri)
            out[key] = (clf, info.model_uri, Path(local))
    return out


# --------------------------------------------------------------------------- 1. no pickle
def _is_pickle(data: bytes) -> bool:
    """Whether ``data`` parses as a whole pickle stream (parsed, never executed)."""
    if data[:1] == b"\x80" and data[1:2] and 2 <= data[1] <= 5:
        return True  # protocol 2+ header
    try:
        ops = list(pickletools.genops(data))
    except Exception:  # noqa: BLE001 - any parse failure: not a pickle
        return False
    return bool(ops) and ops[-1][0].name == "STOP" and ops[-1][2] == len(data) - 1


def _all_blobs(model_dir):
    """``(name, bytes)`` of each file in the model directory and each member of a zip in it."""
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield str(path.relative_to(model_dir)), data
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for member in zf.namelist():
                    yield f"{path.name}:{member}", zf.read(member)


def test_is_pickle_detects_pickles():
    import pickle

    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert _is_pickle(pickle.dumps({"a": [1, 2]}, protocol=protocol))
    assert not _is_pickle(b'{"a": [1, 2]}')
    assert not _is_pickle(b"flavors:\n  sktransfer: {}\n")


@pytest.mark.parametrize("key", ["text", "image"])
def test_logged_model_has_the_flavour_and_no_pickle(logged, key):
    clf, _, model_dir = logged[key]
    names = []
    for name, data in _all_blobs(model_dir):
        names.append(name)
        assert not re.search(r"\.(pkl|pickle|joblib|cloudpickle|pt|pth)$", name), name
        assert not _is_pickle(data), f"{name} is a pickle"
    assert "model.skt" in names and any(n.startswith("model.skt:") for n in names)
    conf = mlflow.models.Model.load(str(model_dir / "MLmodel"))
    flavour = conf.flavors["sktransfer"]
    assert flavour["sktransfer_version"] == sktransfer.__version__
    assert flavour["model_file"] == "model.skt"
    assert flavour["estimator"] == type(clf).__name__
    assert flavour["task"] == "classification" and flavour["modality"] == key
    pyfunc = conf.flavors["python_function"]
    assert pyfunc["loader_module"] == "sktransfer.mlflow"
    assert pyfunc["data"] == "model.skt"
    assert "python_model" not in pyfunc and "cloudpickle_version" not in pyfunc
    # the default signature: one column (strings / binary image bytes) and a method param
    col = conf.signature.inputs.inputs[0]
    assert str(col.type) == ("DataType.string" if key == "text" else "DataType.binary")
    assert conf.signature.params.params[0].name == "method"
    assert (model_dir / "input_example.json").is_file()


# --------------------------------------------------------------------------- 2. fresh process
CHILD = r"""
import base64, json, pickle, sys
def refuse(*a, **k):
    raise AssertionError("something was unpickled")
pickle.load = pickle.loads = refuse
import mlflow
out = {}
for key, uri, items in json.loads(sys.stdin.read()):
    model = mlflow.pyfunc.load_model(uri)
    if key == "image":
        items = [base64.b64decode(s) for s in items]
    out[key] = {
        "predict": [str(v) for v in model.predict(items)],
        "proba": model.predict(items, params={"method": "predict_proba"}).to_dict("list"),
    }
print("RESULT" + json.dumps(out))
"""


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def test_pyfunc_loads_in_a_fresh_process(logged, tracking, texts_in, images):
    job = [
        ["text", logged["text"][1], texts_in],
        ["image", logged["image"][1], [_b64(b) for b in images]],
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    proc = subprocess.run(
        [PY, "-c", CHILD],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for key, items in (("text", texts_in), ("image", images)):
        clf = logged[key][0]
        assert result[key]["predict"] == [str(v) for v in clf.predict(items)]
        proba = clf.predict_proba(items)
        got = result[key]["proba"]
        assert list(got) == [f"proba_{c}" for c in clf.classes_]
        np.testing.assert_allclose(np.column_stack([got[c] for c in got]), proba, rtol=1e-6)


# --------------------------------------------------------------------------- 3. scoring server
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, payload):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_ready(proc, port, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the scoring server did not answer /ping in time")


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: uvicorn and its workers
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def servers(logged, tracking):
    """``mlflow models serve`` of both logged models, started together: ``{key: port}``."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "PATH": os.path.dirname(PY) + os.pathsep + os.environ.get("PATH", ""),
    }
    procs, ports = {}, {}
    try:
        for key in ("text", "image"):
            ports[key] = _free_port()
            cmd = [
                PY,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                logged[key][1],
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(ports[key]),
            ]
            procs[key] = subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        deadline = time.monotonic() + 150
        for key, proc in procs.items():
            _wait_ready(proc, ports[key], deadline)
        yield ports
    finally:
        for proc in procs.values():
            _stop(proc)


def test_scoring_server_texts(servers, logged, texts_in):
    clf = logged["text"][0]
    split = {"columns": ["text"], "data": [[t] for t in texts_in]}
    status, body = _post(servers["text"], {"dataframe_split": split})
    assert status == 200, body
    assert body["predictions"] == list(clf.predict(texts_in))
    payload = {"dataframe_split": split, "params": {"method": "predict_proba"}}
    status, body = _post(servers["text"], payload)
    assert status == 200, body
    assert isinstance(body["predictions"], list) and len(body["predictions"]) == len(texts_in)
    got = pd.DataFrame(body["predictions"])  # one {"proba_<class>": p, ...} record per item
    assert list(got.columns) == [f"proba_{c}" for c in clf.classes_]
    np.testing.assert_allclose(got.to_numpy(), clf.predict_proba(texts_in), rtol=1e-6)


def test_scoring_server_images(servers, logged, images):
    clf = logged["image"][0]
    split = {"columns": ["image"], "data": [[_b64(b)] for b in images]}
    status, body = _post(servers["image"], {"dataframe_split": split})
    assert status == 200, body
    assert body["predictions"] == list(clf.predict(images))
    payload = {"dataframe_split": split, "params": {"method": "predict_proba"}}
    status, body = _post(servers["image"], payload)
    assert status == 200, body
    got = pd.DataFrame(body["predictions"])
    np.testing.assert_allclose(got.to_numpy(), clf.predict_proba(images), rtol=1e-6)
    # a bad item: an error naming its index, not a crash
    bad = {"columns": ["image"], "data": [[_b64(images[0])], [_b64(b"no image here!")]]}
    status, body = _post(servers["image"], {"dataframe_split": bad})
    assert status >= 400 and "Sample 1" in json.dumps(body), body


# --------------------------------------------------------------------------- 4. load, inputs
@pytest.mark.parametrize("key", ["text", "image"])
def test_load_model_roundtrip(logged, key, texts_in, images):
    clf, uri, _ = logged[key]
    items = texts_in if key == "text" else images
    loaded = skm.load_model(uri)
    assert type(loaded) is type(clf) and loaded is not clf
    np.testing.assert_array_equal(loaded.predict(items), clf.predict(items))
    np.testing.assert_allclose(loaded.predict_proba(items), clf.predict_proba(items), rtol=1e-6)


def test_pyfunc_takes_bytes_base64_paths_and_arrays(logged, images, tmp_path, digits_small):
    clf, uri, _ = logged["image"]
    model = mlflow.pyfunc.load_model(uri)
    expected = clf.predict(images)
    paths = []
    for i, data in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Path(paths[-1]).write_bytes(data)
    for items in (images, [_b64(b) for b in images], paths, pd.Series(images)):
        np.testing.assert_array_equal(model.predict(items), expected)
    np.testing.assert_array_equal(model.predict(pd.DataFrame({"anything": images})), expected)
    raw = skm._load_pyfunc(str(logged["image"][2] / "model.skt"))
    pixels = digits_small[0][200:206]
    np.testing.assert_array_equal(raw.predict(pixels), clf.predict(pixels))


def test_bad_inputs_name_the_item(logged, images):
    text = skm._load_pyfunc(str(logged["text"][2] / "model.skt"))
    image = skm._load_pyfunc(str(logged["image"][2] / "model.skt"))
    with pytest.raises(ValueError, match=r"columns \['a', 'b'\]"):
        text.predict(pd.DataFrame({"a": ["good"], "b": ["bad"]}))
    both = pd.DataFrame({"id": [1, 2], "text": ["good film", "bad film"]})
    np.testing.assert_array_equal(text.predict(both), logged["text"][0].predict(both["text"]))
    with pytest.raises(TypeError, match="item 1"):
        text.predict(["good", None, "bad"])
    with pytest.raises(ValueError, match="Sample 2"):
        image.predict([images[0], images[1], b"\x00\x01 not an image"])
    with pytest.raises(ValueError, match="Sample 1"):
        image.predict([images[0], _b64(b"\x00\x01 not an image at all")])
    with pytest.raises(ValueError, match="method"):
        text.predict(["good"], params={"method": "transform"})
    with pytest.raises(TypeError, match="one str"):
        text.predict("good")


def test_a_model_the_safe_format_cannot_hold_is_refused(image_model, tmp_path):
    clf, _ = image_model  # a user nn.Module backbone
    target = tmp_path / "m"
    with pytest.raises(TypeError, match="cannot save"):
        skm.save_model(clf, target)
    assert not target.exists()
    target.mkdir()  # an empty directory is accepted, and left empty by a failed save
    with pytest.raises(TypeError, match="cannot save"):
        skm.save_model(clf, target)
    assert target.is_dir() and not any(target.iterdir())
    (target / "x").write_text("")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        skm.save_model(clf, target)
    with pytest.raises(TypeError, match="sktransfer's own"):
        skm.save_model(object(), tmp_path / "o")


def test_sklearn_autolog_records_nothing_for_these_estimators(tracking, tiny_bert_dir):
    """What docs/mlflow.md says: mlflow.sklearn.autolog() logs no params, metrics or model."""
    from conftest import make_texts

    X, y = make_texts(40, seed=1)
    mlflow.sklearn.autolog(log_models=True, silent=True)
    try:
        with mlflow.start_run() as run:
            sktransfer.PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X, y)
    finally:
        mlflow.sklearn.autolog(disable=True)
    data = mlflow.get_run(run.info.run_id).data
    assert data.params == {} and data.metrics == {}
    assert (
        mlflow.search_logged_models(
            filter_string=f"source_run_id='{run.info.run_id}'", output_format="list"
        )
        == []
    )


# --------------------------------------------------------------------------- docs
def _doc_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.packaged
def test_docs_python_blocks_run(tmp_path):
    """Each ```python block of docs/mlflow.md runs as a script in its own temp directory
    (MLflow's default store there); the blocks run side by side."""
    blocks = _doc_blocks()
    assert len(blocks) >= 2, "docs/mlflow.md lost its python blocks"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = []
    for i, code in enumerate(blocks):
        cwd = tmp_path / f"block{i}"
        cwd.mkdir()
        (cwd / "block.py").write_text(code)
        procs.append(
            subprocess.Popen(
                [PY, "block.py"],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    errors = []
    try:
        for proc in procs:
            errors.append(proc.communicate(timeout=300)[1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, (proc, err) in enumerate(zip(procs, errors)):
        assert proc.returncode == 0, f"block {i} of {DOC.name} failed:\n{err[-3000:]}"
