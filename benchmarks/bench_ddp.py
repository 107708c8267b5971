"""Data-parallel fine-tuning on the CPU: 2 gloo processes against 1, same data and epochs.

The same script (``_CHILD``: the packaged all-MiniLM-L6-v2, ``freeze_depth=-2``, Rotten
Tomatoes) runs under ``python -m torch.distributed.run --nproc_per_node N``: once with one
process of 2 torch threads, once with 2 processes of 1 thread each (the machine's 2 cores
either way). Reported: the fit's wall time ratio (2 processes over 1) and both runs'
test accuracy, which must agree within noise (the two runs see the same global batches in
the same order; they differ only by float rounding of the gradient all-reduce). Rounds are
interleaved; the best time of each is kept.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

from benchmarks._harness import Result

NAME = "ddp"

_CHILD = r"""
import json, os, sys, time
import numpy as np
import torch
from benchmarks.datasets import load_rotten_tomatoes
from sktransfer import PretrainedTextClassifier

n_train, n_test, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
texts, y = load_rotten_tomatoes(n_train + n_test, random_state=0)
X_tr, y_tr, X_te, y_te = texts[:n_train], y[:n_train], texts[n_train:], y[n_train:]
clf = PretrainedTextClassifier(freeze_depth=-2, max_epochs=2, batch_size=16, lr=5e-5,
                               early_stopping=False, random_state=0, device="cpu")
start = time.perf_counter()
clf.fit(X_tr, y_tr)
seconds = time.perf_counter() - start
acc = float((clf.predict(X_te) == y_te).mean()) if int(os.environ["RANK"]) == 0 else None
if int(os.environ["RANK"]) == 0:
    with open(out, "w") as fh:
        json.dump({"seconds": seconds, "accuracy": acc,
                   "train_loss": [r["train_loss"] for r in clf.history_]}, fh)
"""


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(n_proc, threads, n_train, n_test, tmp):
    script = os.path.join(tmp, "child.py")
    with open(script, "w") as fh:
        fh.write(_CHILD)
    out = os.path.join(tmp, f"out{n_proc}.json")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n_proc}",
           "--master_addr=127.0.0.1", f"--master_port={_port()}", script, str(n_train),
           str(n_test), out]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr[-3000:]}")
    with open(out) as fh:
        return json.load(fh)


def available() -> str | None:
    try:
        from benchmarks.datasets import load_rotten_tomatoes

        load_rotten_tomatoes(10)
    except Exception as exc:  # noqa: BLE001 - any missing piece is a skip reason
        return f"Rotten Tomatoes not available ({exc})"
    return None


def run(quick: bool) -> list[Result]:
    n_train, n_test = (256, 400) if quick else (1024, 1000)
    rounds = 1 if quick else 2
    one, two = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):  # interleaved
            one.append(_run(1, 2, n_train, n_test, tmp))
            two.append(_run(2, 1, n_train, n_test, tmp))
    t1 = min(r["seconds"] for r in one)
    t2 = min(r["seconds"] for r in two)
    note = (f"packaged MiniLM, freeze_depth=-2, {n_train} Rotten Tomatoes texts, 2 epochs, "
            f"global batch 16; 1 process x 2 threads vs 2 gloo processes x 1 thread; "
            f"best of {rounds}")  # fmt: skip
    acc_gap = abs(one[0]["accuracy"] - two[0]["accuracy"])
    return [
        Result(NAME, "ddp2_over_1_fit_time", t2 / t1, "x", notes=note),
        Result(NAME, "one_process_fit_seconds", t1, "s", notes=note),
        Result(NAME, "two_process_fit_seconds", t2, "s", notes=note),
        Result(NAME, "one_process_accuracy", one[0]["accuracy"], "acc", notes=f"{n_test} test"),
        Result(NAME, "two_process_accuracy", two[0]["accuracy"], "acc", notes=f"{n_test} test"),
        Result(NAME, "accuracy_gap", acc_gap, "acc", goal="<= 0.01",
               notes="|1 process - 2 processes|: the same batches, float rounding apart"),
    ]
