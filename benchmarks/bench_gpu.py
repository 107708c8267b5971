"""Issue 4 on a CUDA GPU: bf16 autocast + channels-last against fp32 for CNN fine-tuning.

Runs only where ``torch.cuda.is_available()`` (elsewhere the runner skips it and keeps the results
recorded on a GPU machine). Full fine-tuning (``freeze_depth=0``) on Fashion-MNIST images resized
to 224 px, the same epochs, batch size and DataLoader workers for every candidate:

* ``sk_auto``: ``PretrainedImageClassifier(device="cuda")`` at its defaults for the runtime
  (``precision="auto"`` = bf16 autocast, channels-last on CUDA, cuDNN autotuning during ``fit``);
* ``sk_fp32``: the same estimator with fp32 and NCHW (the runtime resolution overridden);
* ``sk_fp32_strict``: the same in IEEE fp32: TF32 tensor cores off for convolutions and matmuls.
  PyTorch's default lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa) on Ampere and
  later, so its "fp32" is already a reduced-precision tensor-core format;
* ``plain_fp32`` / ``plain_bf16``: a hand-written PyTorch loop (same blocks, preprocessing code,
  AdamW, constant rate) in fp32 NCHW, and in bf16 autocast + channels-last. The loops ship
  normalised float32 samples, as a torchvision ``ToTensor`` + ``Normalize`` pipeline does; the
  estimator ships uint8 pixels and normalises on the GPU (:mod:`sktransfer.inputs.pixels`).

The goal (issue 4): bf16 + channels-last >= 2.5x faster than fp32, reported against both fp32
references: ``sk_fp32 / sk_auto`` (PyTorch's default, TF32 convolutions) and
``sk_fp32_strict / sk_auto``. ``plain_bf16 / sk_auto`` says what the
estimator costs over the hand-written loop on the GPU. Two CNNs: the packaged EfficientNet-Lite0
(real ImageNet weights; depthwise convolutions) and torchvision's ResNet-50 (weights=None: the
weight files cannot be downloaded here, and the values do not change the arithmetic).
"""

from __future__ import annotations

import numpy as np

from benchmarks import datasets
from benchmarks._harness import Result, time_interleaved
from benchmarks.bench_finetune import _backbone_factory

NAME = "gpu"
RANDOM_STATE = 0
DEVICE = "cuda"  # a smoke test may set "cpu"


def available():
    """``None`` when a CUDA device is present, else why this benchmark is skipped."""
    import torch

    return None if torch.cuda.is_available() else "needs a CUDA GPU"


def _sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


class _StrictFP32:
    """TF32 off for cuDNN convolutions and CUDA matmuls inside the block; restored after."""

    def __enter__(self):
        import torch

        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        import torch

        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def _strict(fn):
    def run():
        with _StrictFP32():
            return fn()

    return run


def _backbone(spec, weights, size):
    return _backbone_factory(spec, size, weights)()


def _plain_loop(spec, weights, X, y, *, size, epochs, batch_size, lr, bf16, workers):
    """Hand-written full fine-tuning: blocks + pool + linear head, AdamW, one device."""
    import torch
    from torch import nn

    from sktransfer.data import ImageDataset

    torch.manual_seed(RANDOM_STATE)
    torch.backends.cudnn.benchmark = bf16  # the bf16 loop gets every trick sktransfer uses
    backbone = _backbone(spec, weights, size)
    body = nn.Sequential(*[m for _, m in backbone.blocks], backbone.pool).to(DEVICE)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    body.to(memory_format=fmt)
    with torch.no_grad():
        dim = body.eval()(torch.zeros(1, 3, size, size, device=DEVICE)).shape[1]
    model = nn.Sequential(body, nn.Linear(dim, int(np.max(y)) + 1)).to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    data = ImageDataset(list(X), backbone.prep, y=np.asarray(y, dtype=np.int64))
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=True, pin_memory=DEVICE == "cuda", num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(RANDOM_STATE),
    )  # fmt: skip
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            xb = xb.to(DEVICE, non_blocking=True).to(memory_format=fmt)
            yb = yb.to(DEVICE, non_blocking=True)
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync()
    torch.backends.cudnn.benchmark = False


def _compute_only(spec, weights, X, y, *, size, epochs, batch_size, lr, bf16):
    """The loop on batches already preprocessed on the GPU: the arithmetic alone, no input path."""
    import torch
    from torch import nn

    from sktransfer.data import ImageDataset

    torch.manual_seed(RANDOM_STATE)
    backbone = _backbone(spec, weights, size)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    data = ImageDataset(list(X[: batch_size * 4]), backbone.prep)
    xs = torch.stack([data[i][0] for i in range(len(data))]).to(DEVICE).to(memory_format=fmt)
    ys = torch.as_tensor(np.asarray(y[: len(xs)]), device=DEVICE)
    body = nn.Sequential(*[m for _, m in backbone.blocks], backbone.pool).to(DEVICE)
    body.to(memory_format=fmt)
    with torch.no_grad():
        dim = body.eval()(xs[:1]).shape[1]
    model = nn.Sequential(body, nn.Linear(dim, int(np.max(y)) + 1)).to(DEVICE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    n_steps = epochs * (len(X) // batch_size)

    def run():
        torch.backends.cudnn.benchmark = bf16  # as in _plain_loop
        for step in range(n_steps):
            i = (step % 4) * batch_size
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(xs[i : i + batch_size]), ys[i : i + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync()
        torch.backends.cudnn.benchmark = False

    return run


def _sk_fit(spec, weights, X, y, *, fp32_nchw, **kw):
    import sktransfer
    from sktransfer import PretrainedImageClassifier

    class FP32NCHW(PretrainedImageClassifier):
        def _runtime(self, device, kind):  # fp32, NCHW: what the library did before issue 4
            return "fp32", False

    cls = FP32NCHW if fp32_nchw else PretrainedImageClassifier

    def fit():
        sktransfer.clear_cache()  # nothing cached is reused: every fit extracts its own
        cls(spec, weights=weights, device=DEVICE, random_state=RANDOM_STATE, **kw).fit(X, y)
        _sync()

    return fit


def _cnn_speed(spec, weights, quick, rows, sizes=None):
    import torch

    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "CPU smoke run"
    n, epochs, size, batch, workers = (4096, 2, 224, 128, 14) if quick else (8192, 3, 224, 128, 14)
    if sizes is not None:  # smoke test: (n, epochs, size, batch, workers)
        n, epochs, size, batch, workers = sizes
    X, y, _, _ = datasets.load_fashion_mnist(n, 10, random_state=RANDOM_STATE)
    X = list(X)
    same = dict(
        image_size=size, max_epochs=epochs, batch_size=batch, lr=1e-4, head_init="random",
        lr_schedule="constant", early_stopping=False, freeze_depth=0, num_workers=workers,
        train_bn=True,  # BatchNorm in training mode, as in the loop
    )  # fmt: skip
    loop = dict(size=size, epochs=epochs, batch_size=batch, lr=1e-4, workers=workers)
    t = time_interleaved(
        {
            "sk_auto": _sk_fit(spec, weights, X, y, fp32_nchw=False, **same),
            "sk_fp32": _sk_fit(spec, weights, X, y, fp32_nchw=True, **same),
            "sk_fp32_strict": _strict(_sk_fit(spec, weights, X, y, fp32_nchw=True, **same)),
            "plain_fp32": lambda: _plain_loop(spec, weights, X, y, bf16=False, **loop),
            "plain_bf16": lambda: _plain_loop(spec, weights, X, y, bf16=True, **loop),
        },
        repeats=2 if quick else 3,
        warmup=1,
    )
    best = {name: min(v["times_s"]) for name, v in t.items()}
    compute = {
        name: _compute_only(
            spec,
            weights,
            X,
            y,
            bf16=name == "bf16",
            **{k: v for k, v in loop.items() if k != "workers"},
        )
        for name in ("fp32", "bf16")
    }
    compute["fp32_strict"] = _strict(compute["fp32"])
    tc = time_interleaved(compute, repeats=2 if quick else 3, warmup=1)
    compute_best = {name: min(v["times_s"]) for name, v in tc.items()}
    w = "pretrained" if weights == "default" else f"weights={weights}"
    note = (
        f"{gpu}; {spec} ({w}) {size}px full fine-tuning, Fashion-MNIST n={n}, {epochs} epochs, "
        f"batch {batch}, {workers} workers"
    )
    imgs = n * epochs
    rows += [
        Result(NAME, f"{spec}/bf16_channels_last_speedup_over_fp32",
               best["sk_fp32"] / best["sk_auto"], "x", ">= 2.5",
               notes=note + "; sktransfer fp32 NCHW / sktransfer defaults"),
        Result(NAME, f"{spec}/bf16_channels_last_speedup_over_strict_fp32",
               best["sk_fp32_strict"] / best["sk_auto"], "x", ">= 2.5",
               notes=note + "; sktransfer fp32 NCHW with TF32 off / sktransfer defaults"),
        Result(NAME, f"{spec}/speedup_over_plain_fp32_loop", best["plain_fp32"] / best["sk_auto"],
               "x", notes=note),
        Result(NAME, f"{spec}/time_over_plain_bf16_loop", best["sk_auto"] / best["plain_bf16"],
               "x", notes=note + "; same tricks in the loop"),
        Result(NAME, f"{spec}/images_per_s_bf16", imgs / best["sk_auto"], "img/s", notes=note),
        Result(NAME, f"{spec}/images_per_s_fp32", imgs / best["sk_fp32"], "img/s", notes=note),
        Result(NAME, f"{spec}/compute_only_bf16_speedup",
               compute_best["fp32"] / compute_best["bf16"], "x",
               notes=note + "; batches preprocessed on the GPU beforehand: no input path"),
        Result(NAME, f"{spec}/compute_only_bf16_speedup_over_strict_fp32",
               compute_best["fp32_strict"] / compute_best["bf16"], "x",
               notes=note + "; as compute_only_bf16_speedup, the fp32 run with TF32 off"),
        Result(NAME, f"{spec}/compute_only_images_per_s_bf16", imgs / compute_best["bf16"],
               "img/s", notes=note + "; the ceiling the input path would have to feed"),
    ]  # fmt: skip


def run(quick: bool) -> list[Result]:
    rows: list[Result] = []
    _cnn_speed("efficientnet_lite0", "default", quick, rows)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return rows
    _cnn_speed("resnet50", None, quick, rows)
    return rows
