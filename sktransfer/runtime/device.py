"""Devices and precision: where a batch runs, in which layout and dtype.

``resolve_device`` (``"auto"`` -> cuda when available), ``to_device`` (any batch type, with
the CPU allocator tuned on the first move: :mod:`.allocator`), ``autocast`` and
``resolve_precision`` (bf16 on CUDA), channels-last layout, cuDNN autotuning during a fit.
"""

from __future__ import annotations

import contextlib

import torch

from sktransfer.backbones.base import TextState
from sktransfer.inputs.pixels import PixelBatch
from sktransfer.runtime.allocator import tune_heap_for


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
    tune_heap_for(torch.device(device))  # CPU forwards: keep activation pages mapped (once)
    if isinstance(x, PixelBatch):
        return x.to(device, channels_last)
    if hasattr(x, "to_device"):  # a batch type that knows its parts (training pairs)
        return x.to_device(device, channels_last)
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

