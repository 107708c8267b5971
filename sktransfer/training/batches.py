"""Batches for the torch loops: datasets, collation, device moves, block runs.

Shared by the fine-tuning loop (:mod:`sktransfer.training.loop`), the estimators'
feature extraction and prediction, and the embedders; plus the device and RNG
helpers those loops run under.
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from sktransfer.backbones._base import TextState
from sktransfer.inputs.pixels import PixelBatch
from sktransfer.training.calibrate import Timer


class LabeledDataset(Dataset):
    """``base[i] = (x, _)`` -> ``(x, (target, weight))`` for the training loop; a target is
    a class index or a float row (multi-label indicators, regression outputs)."""

    def __init__(self, base, targets, weights):
        self.base, self.targets, self.weights = base, np.asarray(targets), weights

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, _ = self.base[i]
        return x, (self.targets[i], float(self.weights[i]))


class Collate:
    """Collate ``(x, target)`` pairs with ``inner`` for x; targets stay (labels, weights)."""

    def __init__(self, inner=None):
        self.inner = inner

    def __call__(self, batch):
        xs = [(x, 0) for x, _ in batch]
        x = self.inner(xs)[0] if self.inner is not None else default_collate(xs)[0]
        targets = [t for _, t in batch]
        if targets and isinstance(targets[0], tuple):
            values = np.stack([t[0] for t in targets])
            dtype = torch.int64 if values.dtype.kind in "iub" else torch.float32
            weights = torch.tensor([t[1] for t in targets], dtype=torch.float32)
            return x, (torch.as_tensor(values, dtype=dtype), weights)
        return x, torch.as_tensor(targets)


def runs_channels_last(kind: str, device) -> bool:
    """Image batches run channels-last on CUDA and on the CPU, where oneDNN's channels-last
    convolutions are 1.2-1.6x faster than NCHW ones in training and inference
    (EfficientNet-Lite0, ResNet-18, MobileNetV3; ConvNeXt breaks even)."""
    return kind == "image" and torch.device(device).type in ("cpu", "cuda")


def set_layout(module, channels_last: bool) -> None:
    """Lay the module's 4-D weights out channels-last or NCHW (no walk when they already are).

    Judged on the first 4-D weight whose two layouts differ (a 1x1 kernel's weight is both).
    """
    from torch.nn.parameter import is_lazy

    cl = torch.channels_last
    for p in module.parameters():
        if (
            not is_lazy(p)
            and p.dim() == 4
            and p.is_contiguous() != p.is_contiguous(memory_format=cl)
        ):
            if p.is_contiguous(memory_format=cl) != channels_last:
                module.to(memory_format=cl if channels_last else torch.contiguous_format)
            return


def to_device(x, device, channels_last=False):
    """Move a batch (tensor, dict, :class:`TextState`, :class:`PixelBatch`, tuple) to ``device``.

    ``channels_last``: 4-D tensors (image batches) in channels-last memory format. A
    :class:`PixelBatch` (uint8) is normalised to float32 on ``device``, after the copy.
    """
    if isinstance(x, PixelBatch):
        return x.to(device, channels_last)
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    if isinstance(x, TextState):
        return TextState(*(to_device(v, device) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device, channels_last) for v in x)
    if channels_last and x.dim() == 4:
        return x.to(device, memory_format=torch.channels_last, non_blocking=True)
    return x.to(device, non_blocking=True)


def resolve_precision(precision: str, device) -> str:
    """``"auto"`` -> ``"bf16"`` on CUDA, ``"fp32"`` elsewhere."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(device, precision: str):
    """bf16 autocast for ``precision="bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cudnn_autotune(device):
    """cuDNN autotuning (``cudnn.benchmark``) while a CUDA fit runs; the user's flag is restored.

    A fit sees a fixed input size, so the per-shape algorithm search pays for itself within
    the first epoch (convolutions are often several times faster than the heuristic pick).
    """
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def split_output(out, dtype=np.float32) -> list:
    """A batch of block outputs -> one array per sample (text: real tokens only)."""
    if isinstance(out, TextState):
        hidden = out.hidden.float().cpu().numpy().astype(dtype, copy=False)
        mask = out.attention_mask.bool().cpu().numpy()
        return [h[m] for h, m in zip(hidden, mask)]
    return list(out.float().cpu().numpy().astype(dtype, copy=False))


class RowsDataset(Dataset):
    """Cached per-sample block outputs as a dataset: ``(tensor, 0)``."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return torch.tensor(self.rows[i], dtype=torch.float32), 0  # a copy: rows are shared


class PadTokens:
    """Collate cached token states ``(L_i, d)`` into a right-padded :class:`TextState`."""

    def __call__(self, batch):
        rows = [x for x, _ in batch]
        n, d = len(rows), rows[0].shape[-1]
        length = max(r.shape[0] for r in rows)
        hidden = torch.zeros(n, length, d)
        mask = torch.zeros(n, length, dtype=torch.int64)
        for i, r in enumerate(rows):
            hidden[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = 1
        return TextState(hidden, mask), torch.zeros(n)


def _progress(loader, verbose, desc):
    """A tqdm bar over ``loader``'s batches, named for what it computes (``desc``)."""
    if not verbose:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, total=len(loader), unit="batch", leave=False, file=sys.stderr)


def run_blocks(
    net,
    loader,
    device,
    start=0,
    stop=None,
    out_dtype=np.float32,
    *,
    precision="fp32",
    channels_last=False,
    verbose=0,
    desc="features",
) -> list:
    """Run ``net`` blocks ``start:stop`` (pooled at the end) in eval mode over ``loader``.

    Returns one array per sample (see :func:`split_output`). ``verbose``: a progress bar
    named ``desc``.
    """
    from torch.nn.parameter import is_lazy

    # inference_mode (no view/version bookkeeping) unless lazy modules still have to
    # materialise their parameters here; the rows leave as numpy arrays either way
    lazy = any(is_lazy(p) for p in net.parameters())
    was_training = net.training
    net.eval()
    rows = []
    try:
        with torch.no_grad() if lazy else torch.inference_mode():
            timer = Timer(loader, net, start, stop, channels_last=channels_last,
                          precision=precision)  # fmt: skip
            for x, _ in _progress(loader, verbose, desc):
                x = to_device(x, device, channels_last)
                with timer, autocast(device, precision):
                    out = net.features(x, start=start, stop=stop)
                rows.extend(split_output(out, out_dtype))
    finally:
        net.train(was_training)
    return rows


def predict_logits(
    net, loader, device, start=0, *, precision="fp32", channels_last=False, verbose=0
):
    """Logits of ``net`` (from block ``start``) over ``loader``, float32 numpy."""
    net.eval()
    out = []
    with torch.inference_mode():
        timer = Timer(loader, net, start, head=True, channels_last=channels_last,
                      precision=precision)  # fmt: skip
        for x, _ in _progress(loader, verbose, "prediction"):
            x = to_device(x, device, channels_last)
            with timer, autocast(device, precision):
                logits = net(x, start=start)
            out.append(logits.float().cpu().numpy())
    return np.concatenate(out)


class ArrayDataset(Dataset):
    """Rows of a 2-D float array (the numeric-vector input of a user module)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return torch.as_tensor(np.asarray(self.rows[i], dtype=np.float32)), 0


DEVICE_FORMS = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; explicit devices are checked.

    Only CPU and CUDA devices are supported (the training loop, autocast and the
    pinned-memory copies are written for those two); anything else is a ``ValueError``
    listing the accepted forms.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"device must be {DEVICE_FORMS}, got {device!r}") from exc
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ValueError(f"device must be {DEVICE_FORMS}, got {device!r} (unsupported here)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return dev
