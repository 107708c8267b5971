"""Data-parallel fine-tuning: the same script under ``torchrun`` (gloo on the CPU)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_texts, save_tiny_bert
from torch.utils.data import SequentialSampler

from sktransfer import PretrainedTextClassifier
from sktransfer.runtime.process_group import World
from sktransfer.training.loaders import NoSingletonBatches, ShardedBatches

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"


@pytest.fixture(scope="module")
def bert_without_dropout(tmp_path_factory):
    """A tiny BERT without dropout: one process and two then draw no different masks."""
    path = tmp_path_factory.mktemp("bert_no_dropout")
    return save_tiny_bert(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(n, out, model_dir):
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(SCRIPT), str(out),
           model_dir]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


@pytest.fixture(scope="module")
def runs(bert_without_dropout, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    two = _torchrun(2, tmp / "two", bert_without_dropout)
    one = _torchrun(1, tmp / "one", bert_without_dropout)
    return one, two, tmp


def test_every_rank_ends_with_the_same_model(runs):
    _, (r0, r1), _ = runs
    assert r0["world"] == r1["world"] == 2
    assert r0["weights"] == r1["weights"]  # exactly: gradients all-reduced, rank 0 broadcast
    def drop_dur(h):
        return [{k: v for k, v in row.items() if k != "dur"} for row in h]

    assert drop_dur(r0["history"]) == drop_dur(r1["history"])  # the same losses and stop
    assert r0["proba"] == r1["proba"]


def test_two_processes_follow_the_one_process_loss_curve(runs):
    (one,), (two, _), _ = runs
    assert len(one["history"]) == len(two["history"])
    for a, b in zip(one["history"], two["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(one["weights"], two["weights"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(one["proba"], two["proba"], atol=1e-5)


def test_ddp_forward_runs_every_step(runs):
    (one,), (r0, r1), _ = runs
    assert one["ddp_forward"] == 0  # one process: no DDP
    # 70 training texts in global batches of 8: 9 steps; 18 validation texts: 3 batches
    epochs = len(r0["history"])
    assert r0["ddp_forward"] == r1["ddp_forward"] == epochs * (9 + 3)


def test_rank_zero_writes(runs):
    _, (r0, r1), tmp = runs
    assert r0["writer"] and not r1["writer"]
    assert (tmp / "two" / "model.skt").is_file()
    assert not list((tmp / "two").glob(".*tmp"))


@pytest.mark.parametrize("n,batch,world", [(10, 4, 2), (9, 4, 2), (11, 4, 3), (13, 4, 3), (3, 4, 2),
                                           (64, 8, 4), (17, 5, 2)])  # fmt: skip
def test_shards_deal_out_each_global_batch(n, batch, world):
    """The ranks' batches of step k together are the one-process batch k (a trailing
    batch smaller than the world joins the one before); every rank gets every step."""
    batches = NoSingletonBatches(SequentialSampler(range(n)), batch)
    shards = [list(ShardedBatches(batches, r, world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 == len({len(ShardedBatches(batches, 0, world))}
                                                     | {len(shards[0])})  # fmt: skip
    steps = [sorted(sum((s[k] for s in shards), [])) for k in range(len(shards[0]))]
    assert sum(steps, []) == list(range(n))
    assert all(len(s[k]) >= 1 for s in shards for k in range(len(s)))
    glob = list(batches)
    if len(glob[-1]) < world and len(glob) > 1:
        glob = glob[:-2] + [glob[-2] + glob[-1]]
    assert steps == glob


def test_what_is_not_data_parallel_yet_is_refused(monkeypatch, tiny_bert_dir):
    import sktransfer._estimator.fit_paths as fit_paths

    monkeypatch.setattr(fit_paths, "current_world", lambda device=None: World(0, 2, 0))
    X, y = make_texts(12)
    with pytest.raises(ValueError, match="contrastive.*data-parallel"):
        PretrainedTextClassifier(tiny_bert_dir, objective="contrastive", max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="partial_fit does not run data-parallel"):
        PretrainedTextClassifier(tiny_bert_dir, freeze_depth=-1).partial_fit(
            X, y, classes=sorted(set(y)))
    with pytest.raises(ValueError, match="adapter.*data-parallel"):
        PretrainedTextClassifier(tiny_bert_dir, freeze_depth=-1, adapter="lora").fit(X, y)


_ACCELERATE = """
import sys
from sktransfer.backbones.compat import ensure_transformers_importable
ensure_transformers_importable()  # accelerate imports torchvision (see DESIGN: the op shim)
from accelerate.commands.accelerate_cli import main
sys.argv = ["accelerate", *sys.argv[1:]]
main()
"""


def test_accelerate_launch_runs_the_same_script(runs, bert_without_dropout, tmp_path):
    pytest.importorskip("accelerate")
    (one,), _, _ = runs
    cmd = [sys.executable, "-c", _ACCELERATE, "launch", "--multi_gpu", "--num_processes=2",
           f"--main_process_port={_free_port()}", str(SCRIPT), str(tmp_path),
           bert_without_dropout]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == 2 and r0["weights"] == r1["weights"] and r0["ddp_forward"] > 0
    for a, b in zip(one["history"], r0["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
