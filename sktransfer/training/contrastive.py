"""SetFit-style contrastive training of a text encoder: the pairs, their loss, their batches.

``PretrainedTextClassifier(objective="contrastive")``'s fit path
(:meth:`sktransfer._estimator.fit_paths.FitPathsMixin._fit_contrastive`) runs these steps;
the training itself is the one fine-tuning loop (:func:`sktransfer.training.loop.fine_tune`:
callbacks, schedule, the non-finite check, Ctrl-C, ``history_``, progress), over a dataset
of pairs (:func:`train_pairs`):

1. sentence pairs are drawn from the labelled set as SetFit does (``num_iterations``
   rounds; in each, every sample gets one partner of its own class, label 1, and one of
   another class, label 0), seeded by the fit's seed;
2. the unfrozen blocks (``freeze_depth``) are trained for ``max_epochs`` epochs with
   SetFit's ``CosineSimilarityLoss``: the mean squared error between ``cos(u, v)`` of the
   two pooled sentence embeddings and the pair label. The frozen prefix's activations come
   from the boundary cache (a grid search over ``lr`` reuses them); the optimizer, ``lr``,
   ``lr_schedule``, ``weight_decay``, ``layer_decay``, ``batch_size`` (pairs per step) and
   ``precision`` are the usual knobs. No validation split: SetFit trains on every pair;
3. the frozen-mode solver (``target.solve_head``: the multinomial logistic head, solved to
   convergence) is fitted on the new embeddings of all samples.

A multi-label indicator ``y`` draws its pairs as SetFit's multi-label mode does (a
partner sharing each label, one sharing none) and ends with the one-vs-rest head.

``adapter="lora"`` trains LoRA adapters on the unfrozen blocks instead of their weights
(:mod:`sktransfer.training.lora`); they are merged before the head is fitted.

``freeze_depth="all"`` leaves nothing to train and raises (the frozen probe is
``objective="cross_entropy"``'s frozen mode). Each step encodes every distinct sentence
of its pairs once (:class:`PairCollate`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from sktransfer.runtime.device import to_device
from sktransfer.training.loop import fine_tune


def sentence_pairs(labels, num_iterations, seed) -> tuple[np.ndarray, np.ndarray]:
    """SetFit's pair generation: ``(pairs (m, 2) int64, pair labels (m,) float32)``.

    For each of ``num_iterations`` rounds and each sample ``i`` (in order): a random other
    sample of ``i``'s class (label 1) and a random sample of another class (label 0).
    Every class needs at least 2 samples (the contrastive fit path checks).

    A 2-D ``labels`` (a multi-label indicator matrix) follows SetFit's multi-label
    generation: for each label ``j`` of sample ``i``, a random other sample that has ``j``
    (label 1) and a random sample sharing no label with ``i`` (label 0); a sample without
    labels, or sharing one with every sample, and a label no other sample has give none.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    if labels.ndim == 2:
        return _multilabel_pairs(labels, num_iterations, rng)
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    others = {c: np.flatnonzero(labels != c) for c in members}
    pairs, targets = [], []
    for _ in range(num_iterations):
        for i, c in enumerate(labels):
            same = members[c]
            j = same[rng.randint(len(same) - 1)]  # one of the others: skip i itself
            j = same[-1] if j == i else j
            k = others[c][rng.randint(len(others[c]))]
            pairs += [(i, j), (i, k)]
            targets += [1.0, 0.0]
    return np.asarray(pairs, dtype=np.int64), np.asarray(targets, dtype=np.float32)


def _multilabel_pairs(Y, num_iterations, rng):
    Y = (Y > 0.5).astype(np.int64)
    members = [np.flatnonzero(Y[:, j]) for j in range(Y.shape[1])]
    disjoint = [np.flatnonzero(Y @ Y[i] == 0) for i in range(len(Y))]
    pairs = []
    for _ in range(num_iterations):
        for i in range(len(Y)):
            negatives = disjoint[i]
            if not len(negatives):
                continue
            for j in np.flatnonzero(Y[i]):
                same = members[j]
                if len(same) < 2:
                    continue
                p = same[rng.randint(len(same) - 1)]
                p = same[-1] if p == i else p
                pairs += [(i, p), (i, negatives[rng.randint(len(negatives))])]
    targets = np.tile(np.asarray([1.0, 0.0], dtype=np.float32), len(pairs) // 2)
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2), targets


def pair_cosine(u, v):
    """``cos(u_i, v_i)`` of each pair's two embeddings, in float32."""
    return nn.functional.cosine_similarity(u.float(), v.float(), dim=1)


def cosine_similarity_loss(u, v, targets, weights):
    """SetFit's ``CosineSimilarityLoss``: weighted MSE of ``cos(u, v)`` to the pair label
    (what the training loop computes, as :class:`PairSimilarity` then :class:`PairObjective`)."""
    return PairObjective().loss(pair_cosine(u, v), targets, weights)


class PairSimilarity(nn.Module):
    """``cos(u, v)`` of each pair's two pooled embeddings, from a batch of distinct sentences.

    Wraps a :class:`~sktransfer.freezing.TransferNet` whose head is unused: the input is a
    :class:`PairBatch`, its sentences at block ``net.input_block``. The training
    loop sees ``net``'s blocks, pool and head as its own (parameter groups, freezing)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    @property
    def blocks(self):
        return self.net.blocks

    @property
    def pool(self):
        return self.net.pool

    @property
    def head(self):
        return self.net.head

    def forward(self, x):
        sentences, inverse = x.sentences, x.inverse
        emb = self.net.features(sentences, start=self.net.input_block)
        return pair_cosine(emb[inverse[:, 0]], emb[inverse[:, 1]])


class PairDataset(torch.utils.data.Dataset):
    """Pair ``k``: ``(its two sentence indices, (pair label, pair weight))``."""

    def __init__(self, pairs, targets, weights):
        self.pairs, self.targets, self.weights = pairs, targets, weights

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, k):
        return self.pairs[k], (self.targets[k], self.weights[k])


class PairBatch:
    """A batch of pairs: its distinct sentences (collated) and ``inverse`` ``(m, 2)``, the
    rows of each pair's two sentences. Its length is the number of pairs."""

    def __init__(self, sentences, inverse):
        self.sentences, self.inverse = sentences, inverse

    def __len__(self):
        return len(self.inverse)

    def to_device(self, device, channels_last=False):
        return PairBatch(
            to_device(self.sentences, device, channels_last), to_device(self.inverse, device)
        )


class PairCollate:
    """A batch of pairs -> ``((distinct sentences, inverse), (labels, weights))``: every
    distinct sentence of the batch is collated (``inner``) and encoded once."""

    def __init__(self, sentences, inner):
        self.sentences, self.inner = sentences, inner

    def __call__(self, batch):
        pairs = np.stack([p for p, _ in batch])
        uniq, inverse = np.unique(pairs, return_inverse=True)
        x = self.inner([self.sentences[int(i)] for i in uniq])[0]
        inverse = torch.from_numpy(inverse.reshape(-1, 2))
        targets = torch.tensor([t for _, (t, _) in batch], dtype=torch.float32)
        weights = torch.tensor([w for _, (_, w) in batch], dtype=torch.float32)
        return PairBatch(x, inverse), (targets, weights)


class PairObjective:
    """The loop's target piece for pairs: SetFit's ``CosineSimilarityLoss`` (no validation
    metric: SetFit trains on every pair)."""

    name = "pairs"
    metric = "valid_pair_loss"

    def loss(self, outputs, targets, weights):
        return ((outputs - targets) ** 2 * weights).sum() / weights.sum().clamp_min(1e-30)

    def score(self, outputs, targets):  # pragma: no cover - no validation set
        return float(-((outputs - targets) ** 2).mean())


def train_pairs(net, sentences, inner, pairs, targets, weights, cfg, *, start):
    """Train ``net``'s unfrozen blocks on the pairs with the one fine-tuning loop; returns
    its per-epoch history (``phase="contrastive"``, ``n_pairs``).

    ``sentences``: the samples (at block ``start``) the pairs index; ``inner`` collates a
    list of them. The pairs are shuffled each epoch by the fit's seeded generator; the
    loader's worker seed comes from a generator of its own, so the dropout masks (torch's
    global generator, seeded here) are those of the same fit without a DataLoader.
    """
    net.input_block = start
    torch.manual_seed(cfg.seed)  # dropout: the same whether the prefix was cached or not
    try:
        history = fine_tune(
            PairSimilarity(net), PairDataset(pairs, targets, weights), None,
            PairCollate(sentences, inner), dataclasses.replace(cfg, target=PairObjective()),
            phase="contrastive", own_worker_seed=True,
        )  # fmt: skip
    finally:
        net.input_block = 0
    for row in history:
        row["n_pairs"] = int(len(pairs))
    return history
