"""Per-sample block outputs through the content-addressed cache, for the estimators.

Frozen features (the whole backbone, pooled) and the activations at a frozen boundary
(partial fine-tuning) are both "the outputs of blocks ``[:stop]``": looked up per sample in
:mod:`sktransfer.cache`, and only the misses run the backbone.
"""

from __future__ import annotations

from sktransfer.cache import count_forwards, get_config, lookup
from sktransfer.cache.keys import block_namespace, sample_keys
from sktransfer.training.batches import PadTokens, RowsDataset, run_blocks


class BlockOutputsMixin:
    """Needs the estimator's ``_runtime``, ``_make_dataset``, ``_collate`` and ``_loader``."""

    def _use_boundary_cache(self, n_frozen):
        return n_frozen > 0 and get_config()["cache"] and getattr(self, "augment", None) is None

    def _outputs(
        self, net, items, kind, prep, device, *, stop, use_cache=True, index=None, desc="features"
    ):
        """Per-sample outputs of blocks ``[:stop]`` (pooled when ``stop`` is the end).

        Looked up in the content-addressed cache; only misses run the backbone.
        ``index``: the caller's index of each item (``items`` may be a training split),
        so that an error names the sample as the caller counts it.
        """
        precision, channels_last = self._runtime(device, kind)
        where = list(range(len(items))) if index is None else list(index)

        def compute(idx):
            subset = [items[i] for i in idx]
            dataset = self._make_dataset(
                subset, kind, prep, training=False, index=[where[i] for i in idx]
            )
            if use_cache:  # (uncached: a one-sample shape probe, not feature extraction)
                count_forwards(len(idx))
            loader = self._loader(dataset, kind, prep, device)
            return run_blocks(
                net, loader, device, stop=stop, precision=precision,
                channels_last=channels_last, verbose=self.verbose and use_cache, desc=desc,
            )  # fmt: skip

        if not use_cache or not get_config()["cache"]:  # (no weight hashing either)
            return compute(list(range(len(items))))
        namespace = block_namespace(net, stop, prep, kind, precision, channels_last)
        keys = sample_keys(items, "text" if kind == "text" else "image", index=where)
        return lookup(namespace, keys, compute, cache_dir=self.cache_dir)

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
