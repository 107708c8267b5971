"""Training batches that BatchNorm can always normalise: never one sample alone.

A BatchNorm layer in training mode (``train_bn=True``, or a fully fine-tuned block)
cannot normalise a batch of one sample whose feature map is 1x1 (torch: "Expected more
than 1 value per channel when training"), and on larger maps one sample's statistics
are noise. When the training set leaves one sample for the last batch, it joins the
batch before it (one batch of ``batch_size + 1``). Every other batch, and the order of
samples (the seeded generator's permutation, as ``DataLoader(shuffle=True)`` draws it),
is unchanged.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler


class NoSingletonBatches(Sampler):
    """``BatchSampler(sampler, batch_size, drop_last=False)``, with a trailing batch of one
    merged into the batch before it."""

    def __init__(self, sampler, batch_size):
        self.sampler, self.batch_size = sampler, int(batch_size)

    def __iter__(self):
        batch, previous = [], None
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                if previous is not None:
                    yield previous
                previous, batch = batch, []
        if len(batch) == 1 and previous is not None:
            previous, batch = previous + batch, []
        if previous is not None:
            yield previous
        if batch:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


class ShardedBatches(Sampler):
    """Rank ``rank``'s share of each global batch of ``batches``: its samples ``rank,
    rank + size, ...``. A trailing global batch of fewer than ``size`` samples joins the
    one before, so that every rank gets a sample in every step (DDP's collectives need
    every rank in every step)."""

    def __init__(self, batches, rank, size):
        self.batches, self.rank, self.size = batches, int(rank), int(size)

    def __iter__(self):
        previous = None
        for batch in self.batches:
            if previous is not None and len(batch) < self.size:
                previous, batch = previous + batch, None
            if previous is not None:
                yield previous[self.rank :: self.size]
            previous = batch
        if previous is not None:
            yield previous[self.rank :: self.size]

    def __len__(self):
        n = len(self.batches)
        sizes = len(self.batches.sampler) - self.batches.batch_size * (n - 1)
        return n - 1 if n > 1 and sizes < self.size else n


def training_loader(dataset, batch_size=1, shuffle=True, generator=None, worker_seeds=None,
                    world=None, **kwargs):  # fmt: skip
    """A ``DataLoader`` over :class:`NoSingletonBatches` (skorch's ``iterator_train``).

    ``generator`` shuffles; ``worker_seeds`` (default: ``generator``) gives each pass its
    worker seed, drawn before the pass's permutation. ``world``
    (:class:`~sktransfer.runtime.process_group.World`): this rank's share of each global
    batch of ``batch_size`` (:class:`ShardedBatches`), from the same permutation."""
    if shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    batches = NoSingletonBatches(sampler, batch_size)
    if world is not None:
        if len(dataset) < world.size or batch_size < world.size:
            raise ValueError(
                f"{len(dataset)} training samples in batches of {batch_size} cannot be shared "
                f"by {world.size} processes: batch_size and the training set need at least "
                "one sample per process"
            )
        batches = ShardedBatches(batches, world.rank, world.size)
    seeds = generator if worker_seeds is None else worker_seeds
    return DataLoader(dataset, batch_sampler=batches, generator=seeds, **kwargs)
