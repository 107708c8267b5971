"""Per-sample block outputs through the content-addressed cache, for the estimators.

Frozen features (the whole backbone, pooled) and the activations at a frozen boundary
(partial fine-tuning) are both "the outputs of blocks ``[:stop]``": looked up per sample in
:mod:`sktransfer.cache`, and only the misses run the backbone, in inference micro-batches
(:mod:`sktransfer.runtime.microbatch`; texts longest first, outputs in input order).

The feature size of a user module (unknown until it runs) is found by a one-sample probe
forward, remembered per module digest: a search over one module pays it once.
"""

from __future__ import annotations

import threading

from torch.nn.parameter import is_lazy

from sktransfer.cache import count_forwards, get_config, lookup
from sktransfer.cache.keys import block_namespace, digest, sample_keys
from sktransfer.cache.lru import LRU
from sktransfer.runtime.batches import PadTokens, RowsDataset
from sktransfer.runtime.microbatch import length_order, restore_order
from sktransfer.runtime.runners import run_blocks

_PROBED = LRU(1024)  # digest of (blocks + pool, preprocessing, input kind and width) -> dim
_PROBED_LOCK = threading.Lock()


def has_lazy(net) -> bool:
    """Whether ``net`` holds uninitialised lazy parameters (materialised by a forward)."""
    return any(is_lazy(p) for p in net.parameters())


def remembered_dim(net, prep, kind, items):
    """The probed feature size of ``net`` on this input, or ``None`` (never probed, or
    lazy parameters still to materialise: their digest does not exist yet)."""
    if has_lazy(net):
        return None
    with _PROBED_LOCK:
        return _PROBED.get(_probe_key(net, prep, kind, items))


def remember_dim(net, prep, kind, items, dim) -> None:
    key = _probe_key(net, prep, kind, items)
    with _PROBED_LOCK:
        _PROBED.put(key, int(dim))


def _probe_key(net, prep, kind, items):
    width = len(items[0]) if kind == "vector" else None  # a vector module's input width
    return digest(block_namespace(net, len(net.blocks), prep, kind), width)


def run_in_length_order(items, kind, prep, run):
    """``run(order)`` -> one row per ``items[i]`` for ``i in order``; returned in input
    order. Texts run longest first (dynamic padding pads each batch to lengths its texts
    nearly share); other kinds in input order."""
    order = length_order(items, kind, prep)
    rows = run(range(len(items)) if order is None else order)
    return restore_order(rows, order)


class BlockOutputsMixin:
    """Needs the estimator's ``_runtime``, ``_make_dataset``, ``_collate`` and ``_loader``."""

    augment = None  # image estimators take it as a parameter (texts are never augmented)

    def _use_boundary_cache(self, n_frozen):
        return n_frozen > 0 and get_config()["cache"] and self.augment is None

    def _outputs(
        self, net, items, kind, prep, device, *, stop, use_cache=True, index=None, desc="features"
    ):
        """Per-sample outputs of blocks ``[:stop]`` (pooled when ``stop`` is the end).

        Looked up in the content-addressed cache; only misses run the backbone.
        ``index``: the caller's index of each item (``items`` may be a training split),
        so that an error names the sample as the caller counts it. ``use_cache=False``:
        no lookup (a shape probe or a lazy module's materialisation).
        """
        precision, channels_last = self._runtime(device, kind)
        where = list(range(len(items))) if index is None else list(index)

        def compute(idx):
            def run(order):
                sub = [idx[p] for p in order]
                subset, at = [items[i] for i in sub], [where[i] for i in sub]
                dataset = self._make_dataset(subset, kind, prep, training=False, index=at)
                loader = self._loader(dataset, kind, prep, device)
                return run_blocks(
                    net, loader, device, stop=stop, precision=precision,
                    channels_last=channels_last, verbose=self.verbose and use_cache, desc=desc,
                )  # fmt: skip

            if use_cache:  # (uncached: a one-sample shape probe, not feature extraction)
                count_forwards(len(idx))
            return run_in_length_order([items[i] for i in idx], kind, prep, run)

        if not use_cache or not get_config()["cache"]:  # (no weight hashing either)
            return compute(list(range(len(items))))
        namespace = block_namespace(net, stop, prep, kind, precision, channels_last)
        keys = sample_keys(items, "text" if kind == "text" else "image", index=where)
        return lookup(namespace, keys, compute, cache_dir=self.cache_dir)

    def _feature_dim(self, net, items, kind, prep, device):
        """Feature size of a backbone of unknown size: remembered per module digest, else
        one uncached one-sample forward (which also materialises lazy modules)."""
        dim = remembered_dim(net, prep, kind, items)
        if dim is None:
            rows = self._outputs(
                net, items[:1], kind, prep, device, stop=len(net.blocks), use_cache=False
            )
            dim = rows[0].shape[-1]
            remember_dim(net, prep, kind, items, dim)
        return dim

    def _suffix_dataset(
        self, net, items, idx, kind, prep, device, start, training=False, desc="features"
    ):
        idx = list(idx)
        subset = [items[i] for i in idx]
        if start == 0:
            return self._make_dataset(subset, kind, prep, training=training, index=idx)
        rows = self._outputs(net, subset, kind, prep, device, stop=start, index=idx, desc=desc)
        return RowsDataset(rows)

    def _suffix_collate(self, kind, prep, start, n_blocks):
        if start == 0:
            return self._collate(kind, prep)
        return PadTokens() if kind == "text" and start < n_blocks else None
