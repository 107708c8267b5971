"""CUDA paths: bf16 autocast, channels-last, cuDNN autotuning, GPU-fitted models used on the CPU.

Every test here is marked ``gpu`` and skipped without a CUDA device (CI has none); run them on a
GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

import sktransfer
from sktransfer import ImageEmbedder, PretrainedImageClassifier, PretrainedTextClassifier

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _clf(cnn, **kw):
    kw.setdefault("image_size", 8)
    kw.setdefault("random_state", 0)
    kw.setdefault("batch_size", 64)
    kw.setdefault("device", "cuda")
    return PretrainedImageClassifier(cnn, **kw)


def test_gpu_features_match_cpu_features(cnn, digits_small):
    X, _ = digits_small
    sktransfer.clear_cache()
    gpu = ImageEmbedder(cnn, image_size=8, device="cuda").fit_transform(X)
    cpu = ImageEmbedder(cnn, image_size=8, device="cpu").fit_transform(X)
    # TF32 convolutions on the GPU: about three significant digits
    np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-2 * np.abs(cpu).max())
    clf = _clf(cnn, precision="bf16").fit(X, np.arange(len(X)) % 3)
    assert clf.predict_proba(X).shape == (len(X), 3)


def test_pinned_uint8_batches_are_normalised_on_the_gpu():
    from sktransfer.inputs.pixels import PixelBatch
    from sktransfer.runtime.device import to_device

    pixels = torch.randint(0, 256, (5, 3, 9, 7), dtype=torch.uint8)
    batch = PixelBatch(pixels, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).pin_memory()
    assert batch.pixels.is_pinned()
    x = to_device(batch, "cuda", channels_last=True)
    assert x.device.type == "cuda" and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    # true divisions by device tensors: IEEE float32, as on the CPU
    torch.testing.assert_close(x.cpu(), to_device(batch, "cpu"), rtol=0, atol=1e-6)


def test_fit_restores_the_users_cudnn_flag(cnn, digits_small):
    X, y = digits_small
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        _clf(cnn, freeze_depth=1, max_epochs=1).fit(X, y)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_bf16_fine_tuning_learns(cnn, digits):
    X, y = digits
    clf = _clf(cnn, freeze_depth=0, max_epochs=6, lr=3e-3).fit(X[:1200], y[:1200])
    assert clf.score(X[1200:], y[1200:]) > 0.6  # chance is 0.1


def test_grid_search_on_gpu_runs_the_backbone_once_per_sample(cnn, digits_small):
    X, y = digits_small
    sktransfer.clear_cache()
    before = sktransfer.cache_info()["backbone_forwards"]
    search = GridSearchCV(_clf(cnn), {"C": [0.1, 1.0, 10.0]}, cv=3).fit(X, y)
    assert sktransfer.cache_info()["backbone_forwards"] - before == len(X)
    assert search.best_score_ > 0.5


def test_gpu_text_model_saved_and_used_on_the_cpu(tiny_bert_dir, texts, tmp_path):
    X, y = texts
    clf = PretrainedTextClassifier(
        tiny_bert_dir, freeze_depth=-1, max_epochs=2, device="cuda", precision="fp32",
        random_state=0,
    ).fit(X, y)  # fmt: skip
    assert next(clf.module_.parameters()).is_cuda
    sktransfer.save(clf, tmp_path / "m.skt")
    cpu = sktransfer.load(tmp_path / "m.skt", device="cpu")
    assert not next(cpu.module_.parameters()).is_cuda
    np.testing.assert_allclose(cpu.predict_proba(X), clf.predict_proba(X), atol=5e-3)
    bf16 = clf.set_params(precision="bf16").predict_proba(X)
    assert np.all(np.isfinite(bf16))
    np.testing.assert_allclose(bf16.sum(axis=1), 1.0, rtol=1e-5)
