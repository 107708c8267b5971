"""Inference micro-batches: their size per device, and length-sorted text order.

Inference (frozen features, activations at a frozen boundary, predictions) runs in its own
micro-batches, separate from the training ``batch_size``: the best batch for a forward pass
without gradients depends on the device, not on the optimisation.

* CPU: small batches that keep a batch's activations in the core's caches. Measured
  (``benchmarks/bench_inference.py``, one thread): EfficientNet-Lite0 at 224 px peaks at
  batch 4-8 and loses a third of its speed at 32; ResNet-18 peaks at 8 (4-15% above 4 in
  the quick runs on this shared machine: the rule below does not fit it best). The rule is
  a pixel budget, ``4 x 224 x 224`` pixels per batch (4 images at 224 px, 49 at 64 px),
  clamped to ``[1, 64]``, and balanced over the items of a call (:func:`balanced`). When
  the size is automatic, the image loaders then calibrate it per backbone and image size
  around the rule's (:mod:`sktransfer.runtime.batch_tuning`). Texts run 32 per batch
  (sorted by length, see below; flat between 16 and 64 for MiniLM-L6), vectors 256.
* CUDA: the largest batch that fits, by a simple rule: ``256 x 224 x 224`` pixels per batch
  (clamped to ``[1, 1024]``), 256 texts, 1024 vectors.

A size is a scheduling choice only: outputs are computed per sample and cached per sample
under a namespace that does not include it (:func:`sktransfer.cache.keys.block_namespace`);
they are equal across sizes up to float rounding (bit-identical for small CNNs; ResNet-18's
features move by ~1e-6 between batch 1 and 16 at 224 px).

Texts are run longest first, sorted by token count, and the outputs put back in input
order, so that dynamic padding pads each batch to lengths its texts nearly share. Measured on
1,024 Rotten Tomatoes snippets at batch 32 (MiniLM tokenizer): in input order a batch holds
1.89 padded tokens per real one; sorted by characters 1.25; sorted by tokens 1.04. Counting
tokens costs one unpadded batched tokenisation (0.18 s per 1,024 texts here, about 3% of a
one-thread MiniLM-L6 forward over them), which the padding it saves repays several times.
Training batches stay shuffled.
"""

from __future__ import annotations

import numpy as np
import torch

#: pixels per micro-batch (height x width x images) on each device type
PIXEL_BUDGET = {"cpu": 4 * 224 * 224, "cuda": 256 * 224 * 224}
#: (smallest, largest) image micro-batch on each device type
IMAGE_BOUNDS = {"cpu": (1, 64), "cuda": (1, 1024)}
#: texts and numeric vectors per micro-batch on each device type
TEXT_BATCH = {"cpu": 32, "cuda": 256}
VECTOR_BATCH = {"cpu": 256, "cuda": 1024}


def inference_batch_size(requested, kind, device, prep=None, n=None) -> int:
    """Micro-batch size for inference: ``requested`` when given, else the device's rule.

    Parameters
    ----------
    requested : int or None
        The estimator's ``inference_batch_size`` (an embedder's ``batch_size``); ``None``
        is automatic.
    kind : {"image", "text", "vector"}
    device : torch.device or str
    prep : ImagePreprocessing, optional
        Its ``image_size`` sets the pixels per image (224 when unknown).
    n : int, optional
        The number of items to run: an automatic size is then balanced, the fewest
        batches of at most the rule's size, of equal sizes (256 images at 64 px: 6 of
        43, not 5 of 49 and a slow one of 11).
    """
    if requested is not None:
        return int(requested)
    dev = "cuda" if torch.device(device).type == "cuda" else "cpu"
    if kind == "text":
        size = TEXT_BATCH[dev]
    elif kind != "image":
        size = VECTOR_BATCH[dev]
    else:
        side = int(getattr(prep, "image_size", None) or 224)
        low, high = IMAGE_BOUNDS[dev]
        size = int(min(high, max(low, PIXEL_BUDGET[dev] // (side * side))))
    return balanced(size, n)


def balanced(size, n=None) -> int:
    """The smallest batch size that runs ``n`` items in as few batches as ``size`` does."""
    if not n or n <= size:
        return size
    batches = -(-int(n) // size)
    return -(-int(n) // batches)


def length_order(items, kind, prep=None):
    """Indices of ``items`` longest first, stable; ``None`` for images and vectors (nothing
    to pad). Texts are measured in tokens when ``prep`` holds the tokenizer (one batched,
    unpadded tokenisation), else in characters."""
    if kind != "text" or len(items) < 2:
        return None
    tok = getattr(prep, "tokenizer", None)
    if tok is not None:
        enc = tok(
            list(items),
            truncation=True,
            max_length=prep.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        lengths = np.fromiter(map(len, enc["input_ids"]), dtype=np.int64, count=len(items))
    else:
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    return np.argsort(-lengths, kind="stable")


def restore_order(rows, order):
    """``rows`` computed for ``items[order]`` back in input order (a list, or an array)."""
    if order is None:
        return rows
    if isinstance(rows, np.ndarray):
        out = np.empty_like(rows)
        out[order] = rows
        return out
    out = [None] * len(rows)
    for pos, i in enumerate(order):
        out[i] = rows[pos]
    return out
