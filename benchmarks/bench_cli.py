"""``sktransfer predict``: the ``--threads`` default, and the cost of corrupt items.

* Threads: ``sktransfer predict`` (in this process, through ``cli.main``, model load included)
  with ``--threads 1`` versus ``--threads <all cores>``, interleaved, on (a) a folder of digits
  PNGs (64 px) through the packaged EfficientNet-Lite0, frozen, and (b) texts (Rotten Tomatoes
  when installed, else seeded 20-word sentences) through the packaged all-MiniLM-L6-v2, frozen.
  The image run is repeated with another process spinning on one core (a busy shared machine).
  The ratio ``time(all) / time(1)`` is what the CLI's default (``--threads 1``) rests on: above
  1, one thread is faster.
* Corrupt items: the same image folder with 1.5% of its files corrupt (half random bytes, half
  truncated PNGs) versus clean, interleaved (best of 3). Corrupt items are found while decoding
  and the good ones scored in one call per batch, so the ratio should stay near 1 (goal
  <= 1.1); re-scoring a batch item by item after a failure cost several times more.

The feature cache is off inside the CLI: every timed call runs the network.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks._harness import Result, time_interleaved
from benchmarks.datasets import load_digits_images

NAME = "cli"
RANDOM_STATE = 0
#: (images in the folder, texts for the threads run, timed rounds)
SIZES = {True: (400, 200, 5), False: (2000, 1000, 5)}
CORRUPT_FRACTION = 0.015


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _image_model(tmp):
    import sktransfer

    X, y = load_digits_images()
    idx = np.random.RandomState(RANDOM_STATE).permutation(len(y))[:300]
    clf = sktransfer.PretrainedImageClassifier(image_size=64, random_state=RANDOM_STATE)
    clf.fit(X[idx], y[idx])
    return sktransfer.save(clf, os.path.join(tmp, "digits.skt"), store_backbone="reference")


def _folders(tmp, n):
    """A clean folder of ``n`` 64 px PNGs and a copy with 1.5% of them corrupt."""
    from PIL import Image

    X, _ = load_digits_images()
    rng = np.random.RandomState(RANDOM_STATE)
    n_bad = max(2, round(CORRUPT_FRACTION * n))
    bad = set(rng.choice(n, n_bad, replace=False).tolist())
    clean, corrupt = os.path.join(tmp, "clean"), os.path.join(tmp, "corrupt")
    os.makedirs(clean), os.makedirs(corrupt)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(X[i % len(X)]).resize((64, 64), Image.Resampling.BILINEAR).save(buf, "PNG")
        data = buf.getvalue()
        name = f"img{i:05d}.png"
        with open(os.path.join(clean, name), "wb") as fh:
            fh.write(data)
        if i in bad:
            data = data[: len(data) // 2] if i % 2 else rng.bytes(len(data))
        with open(os.path.join(corrupt, name), "wb") as fh:
            fh.write(data)
    return clean, corrupt, n_bad


def _predict(model, inputs, threads, tmp, expect):
    from sktransfer.cli import commands as cli

    out = os.path.join(tmp, "out.csv")
    argv = ["predict", model, *inputs, "-o", out, "--no-progress", "--threads", str(threads)]

    def fn():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(argv)
        if code != expect:
            raise RuntimeError(f"sktransfer predict exited {code}: {err.getvalue()[-1000:]}")

    return fn


def _texts(n):
    """Rotten Tomatoes when installed, else seeded 20-word sentences (a review's length)."""
    from benchmarks import datasets
    from benchmarks.bench_baselines import rotten_tomatoes_data

    try:
        X_tr, y_tr, X_te, _ = rotten_tomatoes_data(RANDOM_STATE)
        return list(X_tr), np.asarray(y_tr), list(X_te)[:n], "Rotten Tomatoes texts"
    except datasets.DatasetNotInstalled:
        pass
    rng = np.random.RandomState(RANDOM_STATE)
    good, bad = ["good", "great", "moving", "fun"], ["bad", "dull", "weak", "boring"]
    filler = "the film story plot acting was a really quite and of with but its".split()
    texts, labels = [], []
    for i in range(500 + n):
        words = list(rng.choice(filler, 17)) + list(rng.choice(good if i % 2 else bad, 3))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts[:500], np.asarray(labels[:500]), texts[500:], "synthetic 20-word texts"


def _text_model(tmp, n):
    import sktransfer

    X_tr, y_tr, X_te, what = _texts(n)
    clf = sktransfer.PretrainedTextClassifier(random_state=RANDOM_STATE).fit(X_tr[:500], y_tr[:500])
    model = sktransfer.save(clf, os.path.join(tmp, "minilm.skt"), store_backbone="reference")
    path = os.path.join(tmp, "texts.txt")
    with open(path, "w", encoding="utf-8") as fh:
        for text in list(X_te)[:n]:
            fh.write(" ".join(text.split()) + "\n")
    return model, path, what


@contextlib.contextmanager
def _busy_core():
    """Another process spinning on one core for the duration (a busy shared machine)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _threads_rows(label, model, inputs, tmp, repeats, note):
    cores = _cores()
    if cores < 2:
        return [Result(NAME, f"threads_all_vs_1_time_ratio_{label}", None, notes="1 core")]
    t = time_interleaved(
        {
            "one": _predict(model, inputs, 1, tmp, 0),
            "all": _predict(model, inputs, cores, tmp, 0),
        },
        repeats=repeats,
        warmup=1,
    )
    one, every = min(t["one"]["times_s"]), min(t["all"]["times_s"])
    note = f"{note}; best of {repeats}, interleaved; --threads 1 vs --threads {cores}"
    return [
        Result(NAME, f"cli_time_threads_1_{label}", one, "s", notes=note),
        Result(NAME, f"cli_time_threads_{cores}_{label}", every, "s", notes=note),
        Result(NAME, f"threads_all_vs_1_time_ratio_{label}", every / one, "x", notes=note),
    ]


def run(quick: bool) -> list[Result]:
    n_images, n_texts, repeats = SIZES[quick]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = _image_model(tmp)
        clean, corrupt, n_bad = _folders(tmp, n_images)
        t = time_interleaved(
            {
                "clean": _predict(model, [clean], 1, tmp, 0),
                "corrupt": _predict(model, [corrupt], 1, tmp, 1),
            },
            repeats=repeats,
            warmup=1,
        )
        best_clean, best_corrupt = min(t["clean"]["times_s"]), min(t["corrupt"]["times_s"])
        ratio = best_corrupt / best_clean
        note = (
            f"{n_images} digits PNGs (64 px), {n_bad} corrupt; EfficientNet-Lite0 frozen, "
            f"batch 64, --threads 1; best of {repeats}, interleaved"
        )
        rows += [
            Result(NAME, "cli_time_clean_folder", best_clean, "s", notes=note),
            Result(NAME, "cli_time_corrupt_folder", best_corrupt, "s", notes=note),
            Result(NAME, "corrupt_vs_clean_time_ratio", ratio, "x", "<= 1.1", notes=note),
        ]
        note = f"{n_images} digits PNGs (64 px), EfficientNet-Lite0 frozen"
        rows += _threads_rows("image", model, [clean], tmp, repeats, note)
        with _busy_core():
            busy = f"{note}; another process spinning on one core"
            rows += _threads_rows("image_busy", model, [clean], tmp, repeats, busy)
        try:
            text_model, texts, what = _text_model(tmp, n_texts)
        except (ImportError, OSError) as exc:  # the packaged MiniLM is not installed
            rows.append(Result(NAME, "threads_all_vs_1_time_ratio_text", None, notes=str(exc)))
        else:
            note = f"{n_texts} {what}, all-MiniLM-L6-v2 frozen"
            rows += _threads_rows("text", text_model, [texts], tmp, repeats, note)
    return rows
