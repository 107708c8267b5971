"""Image batches on the fast path: arrays cropped by slicing, channels-last stacking, the
row-wise normalisation, the glibc heap settings. Behaviour only: every fast path gives the
bits of the path it replaces."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from sktransfer.data import ImageDataset, check_images, load_rgb, preprocess_image
from sktransfer.inputs import images as images_module
from sktransfer.inputs.pixels import PixelBatch, StackPixels
from sktransfer.inputs.preprocessing import ImagePreprocessing
from sktransfer.runtime import allocator as heap
from sktransfer.runtime.batches import Collate
from sktransfer.runtime.device import to_device

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PREP = ImagePreprocessing(image_size=16, resize_size=20, mean=MEAN, std=STD)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),  # no resize: cropped by slicing
        rng.integers(0, 256, (20, 31, 3), dtype=np.uint8),  # shorter side 20: sliced too
        rng.random((25, 20, 3)),  # float in [0, 1], no resize
        rng.integers(0, 256, (37, 23, 3), dtype=np.uint8),  # resized: through PIL
        rng.integers(0, 256, (20, 20), dtype=np.uint8),  # grey: through PIL
        rng.integers(0, 256, (20, 20, 4), dtype=np.uint8),  # alpha: through PIL
    ]


def _through_pil(item, normalize):
    return preprocess_image(load_rgb(item), PREP, normalize)


@pytest.mark.parametrize("normalize", [False, True])
def test_arrays_give_the_pil_paths_pixels(normalize):
    items = check_images(_arrays())
    ds = ImageDataset(items, PREP, normalize=normalize)
    for i, item in enumerate(items):
        x = ds[i][0]
        assert x.shape == (3, 16, 16) and x.dtype == (torch.float32 if normalize else torch.uint8)
        assert torch.equal(x, _through_pil(item, normalize)), i


def test_arrays_that_need_no_resize_skip_pil(monkeypatch):
    items = check_images(_arrays())
    expected = [_through_pil(item, False) for item in items]
    decoded = []
    real = images_module.load_rgb

    def spy(item, index=None):
        decoded.append(index)
        return real(item, index=index)

    monkeypatch.setattr(images_module, "load_rgb", spy)
    ds = ImageDataset(items, PREP, normalize=False)
    got = [ds[i][0] for i in range(len(items))]
    assert decoded == [3, 4, 5]  # the RGB arrays at the resize size were sliced
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    # uint8 samples are channels-last views of their own copy of the pixels
    assert got[0].stride() == (1, 16 * 3, 3)
    items[0][0, 0, 0] ^= 0xFF
    assert torch.equal(got[0], expected[0])


def test_the_fast_path_still_validates_arrays():
    bad = np.full((20, 20, 3), 2.0)  # float outside [0, 1], never passed through check_images
    with pytest.raises(ValueError, match="Sample 7: float image values must lie in"):
        ImageDataset([bad], PREP, index=[7])[0]
    with pytest.raises(ValueError, match="Unknown interpolation"):
        ImageDataset(
            check_images(_arrays()[:1]), ImagePreprocessing(image_size=20, interpolation="x")
        )[0]


@pytest.mark.parametrize("channels_last", [False, True])
def test_stacked_batches_are_channels_last_and_normalise_to_the_float_bits(channels_last):
    items = check_images(_arrays())
    raw = ImageDataset(items, PREP, normalize=False)
    batch = Collate(StackPixels(MEAN, STD))([raw[i] for i in range(len(items))])[0]
    assert isinstance(batch, PixelBatch)
    assert batch.pixels.is_contiguous(memory_format=torch.channels_last)  # no layout copy later
    x = to_device(batch, "cpu", channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt)
    floats = torch.stack([ImageDataset(items, PREP)[i][0] for i in range(len(items))])
    assert torch.equal(x, floats)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("stats", [(MEAN, STD), (0.5, 0.25)])
def test_pixel_batches_of_any_layout_normalise_as_the_broadcast_formula(layout, stats):
    mean, std = stats
    pixels = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    if layout == "channels_last":
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    col = lambda v: torch.tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1)  # noqa: E731
    expected = (pixels.float() / col(255.0) - col(mean)) / col(std)
    for channels_last in (False, True):
        x = PixelBatch(pixels, mean, std).to("cpu", channels_last)
        assert torch.equal(x, expected)
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last


# --------------------------------------------------------------------------- the heap
_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_PATTERN = f"""
import importlib.util, resource
import numpy as np
spec = importlib.util.spec_from_file_location("heap", {heap.__file__!r})
heap = importlib.util.module_from_spec(spec)
spec.loader.exec_module(heap)
tuned = heap.tune_heap()
def layer_after_layer():  # a forward's activations: allocated, touched, freed
    a = [np.ones(3 * 2**20) for _ in range(3)]
    del a
layer_after_layer(); layer_after_layer()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    layer_after_layer()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _pattern(env):
    out = subprocess.run(
        [sys.executable, "-c", _PATTERN], env={**os.environ, **env}, capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not _GLIBC, reason="the heap settings are glibc's")
def test_a_tuned_heap_keeps_freed_activations_mapped():
    tuned, faults = _pattern({heap.ENV: "1"})
    assert tuned and faults < 300  # 72 MB allocated and freed 3 times: no new pages
    tuned, _ = _pattern({heap.ENV: "0"})
    assert not tuned  # the opt-out leaves glibc's own (trimming) thresholds


def test_the_first_batch_moved_to_the_cpu_tunes_the_heap_once(monkeypatch):
    monkeypatch.setitem(heap._STATE, "done", False)
    pixels = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
    to_device(PixelBatch(pixels, MEAN, STD), "cpu")
    assert heap._STATE["done"]
    assert heap.tune_heap() == (_GLIBC and os.environ.get(heap.ENV, "1") != "0")


def test_a_text_batch_moved_to_the_cpu_tunes_the_heap(tiny_bert_dir, monkeypatch):
    from sktransfer import TextEmbedder
    from sktransfer.inputs.texts import TextCollate

    prep = TextEmbedder(tiny_bert_dir).fit(["a"]).preprocessing_
    monkeypatch.setitem(heap._STATE, "done", False)
    x, _ = TextCollate(prep)([("a text", 0), ("another", 0)])
    assert not heap._STATE["done"]  # collation (maybe in a worker process) tunes nothing
    to_device(x, "cpu")  # the process that runs the forward does
    assert heap._STATE["done"]
