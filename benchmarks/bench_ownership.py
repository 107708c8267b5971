"""Ownership (issue 23, invariant 2): what "one estimator never changes another" costs.

Frozen CPU estimators run the registry's loaded template; ``module_`` hands out a private
copy on first access (copy on access), and a network once handed out has its weight digest
recomputed before each use. This measures, on the packaged EfficientNet-Lite0 and 64 px
PNG files of scikit-learn's digits, in fresh child processes that each fit a frozen
classifier and then predict new files (memory cache on, as by default):

* ``predict_time_after_over_before`` and ``peak_rss_after_over_before``: the whole tree
  now / the tree before the ownership fix (:data:`BEFORE_REV`, exported with ``git
  archive``; needs the git history), children interleaved A B A B, medians of the
  per-round ratios (goals <= 1.05 each);
* ``handed_out_predict_over_private``: a predict after ``module_`` was read (the digest
  rehashed: 19 MB of weights) over one where it was not, and the memory that first read
  costs (one copy of the backbone, ``copy_on_access_extra_rss``).

Times are process CPU seconds (the 2 cores are shared); one torch thread per child.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks import datasets
from benchmarks._harness import Result

NAME = "ownership"
BEFORE_REV = "22d6b52"  # main before issue 23
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
import numpy as np
from sktransfer import PretrainedImageClassifier

files = json.loads(open(sys.argv[2]).read())
touch = sys.argv[3] == "touch"
train, test = files["train"], files["test"]
clf = PretrainedImageClassifier(image_size=64, random_state=0).fit(train, files["y"])
clf.predict_proba(test[:4])  # warm-up: lazy imports and first-call allocations
if touch:
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clf.module_  # noqa: B018  (the first read hands out a private copy)
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
else:
    extra = 0.0
start = time.process_time()
clf.predict_proba(test[4:])
cpu = time.process_time() - start
import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"cpu": cpu, "peak_mb": peak, "extra_mb": extra}))
"""


def _files(tmp, n_train, n_test):
    from PIL import Image

    X, y = datasets.load_digits_images()
    paths = []
    for i in range(n_train + n_test):
        path = os.path.join(tmp, f"d{i:05d}.png")
        Image.fromarray(X[i]).resize((64, 64), Image.BILINEAR).convert("RGB").save(path)
        paths.append(path)
    spec = {"train": paths[:n_train], "y": y[:n_train].tolist(), "test": paths[n_train:]}
    path = os.path.join(tmp, "files.json")
    with open(path, "w") as fh:
        json.dump(spec, fh)
    return path


def _export_before(tmp):
    dest = os.path.join(tmp, "before")
    os.makedirs(dest)
    archive = subprocess.run(
        ["git", "-C", _ROOT, "archive", BEFORE_REV, "sktransfer"],
        capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True, timeout=120)
    return dest


def _child(tree, files, mode="plain"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, tree, files, mode],
        capture_output=True, text=True, timeout=1800, env=env, cwd=tree,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[Result]:
    n_train, n_test, rounds = (60, 400, 5) if quick else (300, 1000, 7)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = _files(tmp, n_train, n_test)
        before = _export_before(tmp)
        time_ratio, rss_ratio, touch_ratio, extras = [], [], [], []
        for _ in range(rounds):
            old = _child(before, files)
            new = _child(_ROOT, files)
            touched = _child(_ROOT, files, "touch")
            time_ratio.append(new["cpu"] / old["cpu"])
            rss_ratio.append(new["peak_mb"] / old["peak_mb"])
            touch_ratio.append(touched["cpu"] / new["cpu"])
            extras.append(touched["extra_mb"])
        note = (
            f"{n_train} fit + {n_test} predicted 64 px PNGs, Lite0, {rounds} rounds; "
            f"before={BEFORE_REV}"
        )
        rows += [
            Result(NAME, "predict_time_after_over_before", statistics.median(time_ratio), "x",
                   goal="<= 1.05", notes=note + f"; per round {np.round(time_ratio, 3).tolist()}"),
            Result(NAME, "peak_rss_after_over_before", statistics.median(rss_ratio), "x",
                   goal="<= 1.05", notes=f"per round {np.round(rss_ratio, 3).tolist()}"),
            Result(NAME, "handed_out_predict_over_private", statistics.median(touch_ratio), "x",
                   notes="a predict after module_ was read (weights rehashed) / one without"),
            Result(NAME, "copy_on_access_extra_rss", statistics.median(extras), "MB",
                   notes="peak RSS added by the first read of module_ (a private copy)"),
        ]  # fmt: skip
    return rows
