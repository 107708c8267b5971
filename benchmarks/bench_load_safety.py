"""Load safety: memory and time for ``sktransfer.load`` to refuse a 3 GB zip bomb.

A tiny random BERT classifier (2 layers, 32 wide, its own 40-word WordPiece vocabulary; no
packaged weights) is saved with :func:`sktransfer.save`; bomb files are built from it by
streaming 3 GiB of zeros through ``zipfile`` (``ZIP_DEFLATED`` level 1, ``force_zip64``: a
~14 MB member, nothing held in memory):

* ``oversized``: ``backbone/config.json`` replaced by the bomb; its header honestly declares
  3 GiB, the (untouched, checksum-valid) manifest records ~1 KB.
* ``forged``: the same, but the central directory declares the recorded size and the real
  member's CRC; the stream still inflates to 3 GiB.
* ``unexpected`` (full mode): the valid file plus a bomb member the manifest does not list.

Each case runs ``sktransfer.load`` in a fresh subprocess that imports torch and transformers
first (so a refused load, which never reaches transformers, is compared with a normal load on
the same footing) and reports the process's peak RSS and ``measure_peak_rss`` around the call
(the extra resident memory ``load`` needed at its peak). The goal: a refusing child's peak at
most 200 MB above that of a child loading the valid file (a normal load's own extra memory is
mostly transformers' first-use imports of the BERT modules).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

from benchmarks._harness import Result

NAME = "load_safety"
BOMB_BYTES = 3 << 30
CONFIG = "backbone/config.json"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
torch.set_num_threads(1)
import sktransfer
from sktransfer.backbones.compat import ensure_transformers_importable
ensure_transformers_importable()
import transformers  # noqa: F401  (a normal load imports it; import it for the refusals too)
from benchmarks._harness import measure_peak_rss

def load():
    start = time.perf_counter()
    try:
        sktransfer.load(sys.argv[1])
        outcome = "loaded"
    except ValueError as exc:
        outcome = "refused: " + str(exc)
    return outcome, time.perf_counter() - start

m = measure_peak_rss(load)
print(json.dumps({"outcome": m.result[0], "seconds": m.result[1], "delta_mb": m.delta_mb,
                  "peak_mb": m.peak_mb, "method": m.method}))
"""


def _tiny_model(tmp):
    """A frozen text classifier on a tiny random BERT, saved; the file's path."""
    import numpy as np
    import torch

    import sktransfer
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "good great fun bad awful dull the movie film was plot acting a really and".split()
    directory = os.path.join(tmp, "tiny_bert")
    os.makedirs(directory)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast.from_pretrained(directory).save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=5 + len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    rng = np.random.RandomState(0)
    X = [" ".join(rng.choice(words, 6)) for _ in range(60)]
    y = ["pos" if ("good" in t or "fun" in t) else "neg" for t in X]
    clf = sktransfer.PretrainedTextClassifier(directory, random_state=0).fit(X, y)
    return sktransfer.save(clf, os.path.join(tmp, "valid.skt"))


def build_bomb(valid, out, kind, size=BOMB_BYTES):
    """Write a copy of ``valid`` with a ``size``-byte zero bomb (``kind``: see the docstring)."""
    with zipfile.ZipFile(valid) as src:
        comment = src.comment
        entries = [(info, src.read(info)) for info in src.infolist()]
    real = dict((i.filename, d) for i, d in entries)[CONFIG]
    if kind in ("oversized", "forged"):
        entries = [(i, d) for i, d in entries if i.filename != CONFIG]
    name = "payload.bin" if kind == "unexpected" else CONFIG
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:  # 1: fast
        for info, data in entries:
            zf.writestr(info, data)
        chunk = bytes(64 << 20)
        with zf.open(name, "w", force_zip64=True) as fh:
            for _ in range(size // len(chunk)):
                fh.write(chunk)
        if kind == "forged":  # the central directory lies; the local header keeps the truth
            import zlib

            info = zf.getinfo(name)
            info.file_size, info.CRC = len(real), zlib.crc32(real)
        zf.comment = comment
    return out


def measure_load(path):
    """``{"outcome", "seconds", "delta_mb", "peak_mb", "method"}`` of one load in a fresh child."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, path, _ROOT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[Result]:
    kinds = ("oversized", "forged") if quick else ("oversized", "forged", "unexpected")
    repeats = 1 if quick else 3
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        valid = _tiny_model(tmp)
        normal = [measure_load(valid) for _ in range(repeats)]
        if any(n["outcome"] != "loaded" for n in normal):
            raise RuntimeError(f"the valid file did not load: {normal[0]['outcome'][:500]}")
        normal_peak = statistics.median(n["peak_mb"] for n in normal)
        rows.append(Result(NAME, "normal_load_peak_rss", normal_peak, "MB"))
        extra = statistics.median(n["delta_mb"] for n in normal)
        rows.append(Result(NAME, "normal_load_extra_rss", extra, "MB"))
        rows.append(
            Result(NAME, "normal_load_time", statistics.median(n["seconds"] for n in normal), "s")
        )
        for kind in kinds:
            start = time.perf_counter()
            bomb = build_bomb(valid, os.path.join(tmp, f"{kind}.skt"), kind)
            built_s = time.perf_counter() - start
            got = [measure_load(bomb) for _ in range(repeats)]
            if any(not g["outcome"].startswith("refused") for g in got):
                raise RuntimeError(f"the {kind} bomb was not refused: {got[0]['outcome'][:500]}")
            above = statistics.median(g["peak_mb"] for g in got) - normal_peak
            extra = statistics.median(g["delta_mb"] for g in got)
            notes = (
                f"{os.path.getsize(bomb) / 1e6:.1f} MB file inflating to "
                f"{BOMB_BYTES / 2**30:.0f} GiB (built in {built_s:.1f} s); refused with: "
                f"{got[0]['outcome'][9:170]}...; peak RSS {got[0]['peak_mb']:.0f} MB, "
                f"normal load {normal_peak:.0f} MB ({got[0]['method']})"
            )
            rows.append(
                Result(
                    NAME,
                    f"refuse_{kind}_bomb_peak_rss_above_normal_load",
                    above,
                    "MB",
                    goal="<= 200",
                    notes=notes,
                )
            )
            rows.append(Result(NAME, f"refuse_{kind}_bomb_extra_rss", extra, "MB"))
            rows.append(
                Result(
                    NAME,
                    f"refuse_{kind}_bomb_time",
                    statistics.median(g["seconds"] for g in got),
                    "s",
                    goal="<= 1",
                )
            )
    return rows
