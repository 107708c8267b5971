"""Datasets and collation for the torch loops: labelled rows, cached block outputs, vectors.

Shared by the fine-tuning loop (:mod:`sktransfer.training.loop`), the estimators' feature
extraction and prediction, and the embedders. Device moves are in :mod:`.device`, the block
runners in :mod:`.runners`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from sktransfer.backbones.base import TextState


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


class RowsDataset(Dataset):
    """Per-sample rows as a dataset of float32 tensors, ``(tensor, 0)``: cached block outputs
    (shared with the cache, so each tensor is a copy) or a user's numeric vectors."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return torch.tensor(np.asarray(self.rows[i]), dtype=torch.float32), 0


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
