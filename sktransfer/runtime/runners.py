"""Block runners: a network's blocks over a loader of micro-batches, in eval mode.

``run_blocks`` returns one array per sample (the cache stores them), ``predict_logits`` the
logits of the whole network from a block on. Both time their forwards for the CPU
micro-batch tuning (:mod:`.batch_tuning`).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from sktransfer.backbones.base import TextState
from sktransfer.runtime.batch_tuning import Timer
from sktransfer.runtime.device import autocast, to_device


def split_output(out, dtype=np.float32) -> list:
    """A batch of block outputs -> one array per sample (text: real tokens only)."""
    if isinstance(out, TextState):
        hidden = out.hidden.float().cpu().numpy().astype(dtype, copy=False)
        mask = out.attention_mask.bool().cpu().numpy()
        return [h[m] for h, m in zip(hidden, mask)]
    return list(out.float().cpu().numpy().astype(dtype, copy=False))


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

