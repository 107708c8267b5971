"""docs/scale.md's scripts run: the first block makes ``model.skt``, each engine's block runs as a
script of its own in that folder (skipped where its engine is missing) and prints what
``predict`` in this process gives."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "scale.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
REVIEWS = ["what a lovely film", "a dull, boring plot", "clever and funny"]


def _engine(block):
    for engine, marker in (("spark", "pyspark"), ("ray", "import ray"), ("dask", "dask")):
        if marker in block:
            return engine
    return None


def _missing(engine):
    needs = {"spark": ["pyspark", "pyarrow"], "ray": ["ray"], "dask": ["dask", "distributed"]}
    for module in needs[engine]:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if engine == "spark" and shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Spark needs Java"
    return None


def _run(block, cwd, name):
    script = cwd / f"{name}.py"
    script.write_text(block)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The page's first block, run: a folder holding model.skt; and its predictions."""
    import sktransfer

    assert _engine(BLOCKS[0]) is None and "model.skt" in BLOCKS[0]
    cwd = tmp_path_factory.mktemp("scale_docs")
    _run(BLOCKS[0], cwd, "make_model")
    est = sktransfer.load(cwd / "model.skt")
    return cwd, list(est.predict(REVIEWS)), est.predict_proba(REVIEWS)


SCORING = [b for b in BLOCKS if "GridSearchCV" not in b and "torchrun" not in b]
TRAINING = [b for b in BLOCKS if b not in SCORING]


def test_the_page_has_one_block_per_engine():
    assert sorted(filter(None, map(_engine, SCORING))) == ["dask", "ray", "spark"]
    for block in SCORING[1:]:
        assert 'if __name__ == "__main__":' in block  # engines start worker processes
        assert REVIEWS[0] in block


@pytest.mark.slow  # each script starts its engine: a JVM, a Ray cluster, a Dask cluster
@pytest.mark.packaged
@pytest.mark.parametrize("engine", ["dask", "spark", "ray"])
def test_engine_block_runs_as_a_script(engine, model_dir):
    reason = _missing(engine)
    if reason:
        pytest.skip(reason)
    cwd, labels, proba = model_dir
    block = next(b for b in SCORING if _engine(b) == engine)
    out = _run(block, cwd, f"scale_{engine}")  # (a script named ray.py would shadow ray)
    if engine == "dask":
        assert ast.literal_eval(out.strip().splitlines()[-1]) == labels
    elif engine == "spark":  # show(): | id | prediction | proba_neg | proba_pos |
        rows = [line.strip("|").split("|") for line in out.splitlines() if line.startswith("|")]
        assert [c.strip() for c in rows[0]] == ["id", "prediction", "proba_neg", "proba_pos"]
        assert [r[1].strip() for r in rows[1:]] == labels
        shown = [float(c) for r in rows[1:] for c in r[2:]]
        assert shown == pytest.approx(proba.ravel().tolist(), abs=1e-4)
    else:  # take(2): [{'id': 0, 'text': ..., 'prediction': 'pos', 'proba_neg': ...}, ...]
        printed = out.strip().splitlines()[-1]
        assert re.findall(r"'prediction': '(\w+)'", printed) == labels[:2]
        assert "'proba_neg'" in printed and "'proba_pos'" in printed


def _port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.packaged
def test_the_training_script_runs_under_torchrun(tmp_path):
    """The page's train.py, as it is, under torchrun with 2 gloo processes."""
    block = next(b for b in TRAINING if "torchrun" in b)
    (tmp_path / "train.py").write_text(block)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_port()}", "train.py"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = [float(x) for x in proc.stdout.split()]
    assert len(losses) == 2 and losses[0] == losses[1]  # the same model on both processes
    assert (tmp_path / "finetuned.skt").is_file()


@pytest.mark.slow
@pytest.mark.packaged
def test_the_search_block_runs_as_a_script(tmp_path):
    reason = _missing("dask")
    if reason:
        pytest.skip(reason)
    block = next(b for b in TRAINING if "GridSearchCV" in b)
    out = _run(block, tmp_path, "search")
    assert ast.literal_eval(out.strip().splitlines()[-1])["C"] in (0.1, 1.0, 10.0)
