"""SetFit-style contrastive fine-tuning of a text encoder, then the exact logistic head.

``PretrainedTextClassifier(objective="contrastive")`` routes its fit here
(:func:`fit_contrastive`, called from the skeleton's ``_fit_net``):

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
of its pairs once.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from sktransfer._estimator.outputs import run_in_length_order
from sktransfer._estimator.params import check_finite_rows, check_finite_weights
from sktransfer.runtime.batches import Collate
from sktransfer.runtime.device import autocast, to_device
from sktransfer.runtime.runners import run_blocks
from sktransfer.training.loop import NonFiniteLossError, TrainConfig, param_groups
from sktransfer.training.lora import add_lora, count_trainable, merge_lora
from sktransfer.training.schedules import make_scheduler

_UNSUPPORTED = (  # (parameter, its neutral value): knobs of the cross-entropy loop only
    ("unfreeze_schedule", None),
    ("l2sp_alpha", 0.0),
)


def check_contrastive(est, state) -> None:
    """The inputs ``objective="contrastive"`` cannot use: ValueError, before any forward."""
    if state.target.name not in ("single_label", "multi_label"):
        raise ValueError(
            "objective='contrastive' needs single-label y or a multi-label indicator "
            f"matrix; got a {state.target.name.replace('_', '-')} target"
        )
    if state.frozen:
        raise ValueError(
            "objective='contrastive' trains encoder blocks, but freeze_depth='all' freezes "
            "them all: pass an int freeze_depth (e.g. -1, 0), or objective='cross_entropy' "
            "for the frozen probe"
        )
    if est.lr == "auto":
        raise ValueError("lr='auto' is not supported with objective='contrastive'; pass a float")
    for name, neutral in _UNSUPPORTED:
        if getattr(est, name, neutral) != neutral:
            raise ValueError(f"{name} is not supported with objective='contrastive'")
    labels = state.y.values
    if labels.ndim == 2:  # multi-label: checked by the pairs it yields (fit_contrastive)
        return
    counts = np.bincount(labels, minlength=state.y.n_outputs)
    single = np.flatnonzero(counts < 2)
    if len(single):
        c = int(single[0])
        i = int(np.flatnonzero(labels == c)[0])
        raise ValueError(
            f"class {_label(state, c)!r} has one example (sample {i}): "
            "objective='contrastive' needs at least 2 per class for a positive pair"
        )


def _label(state, c):
    classes = state.y.attrs.get("classes_")
    return classes[c] if classes is not None else c


def sentence_pairs(labels, num_iterations, seed) -> tuple[np.ndarray, np.ndarray]:
    """SetFit's pair generation: ``(pairs (m, 2) int64, pair labels (m,) float32)``.

    For each of ``num_iterations`` rounds and each sample ``i`` (in order): a random other
    sample of ``i``'s class (label 1) and a random sample of another class (label 0).
    Every class needs at least 2 samples (:func:`check_contrastive`).

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


def cosine_similarity_loss(u, v, targets, weights):
    """SetFit's ``CosineSimilarityLoss``: weighted MSE of ``cos(u, v)`` to the pair label."""
    cos = nn.functional.cosine_similarity(u.float(), v.float(), dim=1)
    return ((cos - targets) ** 2 * weights).sum() / weights.sum().clamp_min(1e-30)  # all 0: 0


def fit_contrastive(est, state):
    """``(net, history, info)`` for ``objective="contrastive"`` (see the module docstring)."""
    check_contrastive(est, state)
    net = est._new_net(state)
    items, kind, prep, device = state.items, state.kind, state.prep, state.device
    n_blocks, n_frozen = state.n_blocks, state.n_frozen
    labels, sw = state.y.values, state.sample_weight
    state.split = None  # SetFit trains on every pair: no validation split
    net.set_frozen(n_frozen)
    start = n_frozen if est._use_boundary_cache(n_frozen) else 0
    n = len(items)
    data = est._suffix_dataset(
        net, items, range(n), kind, prep, device, start, training=True,
        desc=f"fit: train activations (block {start})",
    )  # fmt: skip
    inner = est._suffix_collate(kind, prep, start, n_blocks)
    precision, channels_last = est._runtime(device, kind)
    lora = None  # adapter="lora": the adapters train, merged before the head is fitted
    if getattr(est, "adapter", None) == "lora":
        lora = add_lora(net, est, n_frozen, channels_last=channels_last)
    pairs, targets = sentence_pairs(labels, int(est.num_iterations), state.seed)
    pair_w = (sw[pairs[:, 0]] * sw[pairs[:, 1]]).astype(np.float32)
    keep = pair_w > 0  # pairs with a zero-weight sentence teach nothing
    pairs, targets, pair_w = pairs[keep], targets[keep], pair_w[keep]
    if not len(pairs):
        why = (
            "y gives none (a positive pair needs two samples sharing a label, a negative "
            "one a sample sharing none)"
            if len(keep) == 0
            else "each has a sample of sample_weight 0"
        )
        raise ValueError(f"objective='contrastive' found no sentence pairs: {why}")

    cfg = TrainConfig(
        lr=est.lr, max_epochs=est.max_epochs, batch_size=est.batch_size,
        optimizer=est.optimizer, weight_decay=est.weight_decay, device=device,
        seed=state.seed, target=state.target, layer_decay=est.layer_decay,
    )  # fmt: skip
    net.head = nn.Identity()  # training sees the pooled embeddings
    optimizer = cfg.optimizer_class(param_groups(net, cfg.lr, cfg), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    scheduler = make_scheduler(optimizer, est.lr_schedule, steps_per_epoch * cfg.max_epochs)
    gen = torch.Generator()
    gen.manual_seed(state.seed)
    torch.manual_seed(state.seed)  # dropout: the same whether the prefix was cached or not
    history = []
    net.train()
    try:
        for epoch in range(1, cfg.max_epochs + 1):
            t0 = time.perf_counter()
            order = torch.randperm(len(pairs), generator=gen).numpy()
            losses, sizes = [], []
            for b in range(0, len(order), cfg.batch_size):
                batch = order[b : b + cfg.batch_size]
                uniq, inverse = np.unique(pairs[batch], return_inverse=True)
                inverse = torch.from_numpy(inverse.reshape(-1, 2))
                x = inner([data[int(i)] for i in uniq])[0]  # (start < n_blocks: never None)
                with autocast(device, precision):
                    emb = net.features(to_device(x, device, channels_last), start=start)
                inv = inverse.to(device)
                loss = cosine_similarity_loss(
                    emb[inv[:, 0]], emb[inv[:, 1]],
                    torch.from_numpy(targets[batch]).to(device),
                    torch.from_numpy(pair_w[batch]).to(device),
                )  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                lr = float(optimizer.param_groups[0]["lr"])  # (this step's rate)
                if scheduler is not None:
                    scheduler.step()
                losses.append(loss.detach())
                sizes.append(len(batch))
            values = torch.stack(losses).float().cpu().numpy()
            train_loss = float(np.average(values, weights=sizes))
            if not np.all(np.isfinite(values)):
                raise NonFiniteLossError(
                    f"contrastive fine-tuning diverged: the train loss of epoch {epoch} is "
                    f"{train_loss}; the estimator is left unfitted. Try a lower lr "
                    f"(this run used lr={cfg.lr:g})."
                )
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "lr": lr,
                    "dur": time.perf_counter() - t0,
                    "phase": "contrastive",
                    "n_pairs": int(len(pairs)),
                }
            )
            if est.verbose:
                print(f"contrastive epoch {epoch}: train_loss={train_loss:.4g}")
    finally:
        net.eval()
    fitted = {"lr_": float(cfg.lr), "n_trainable_params_": count_trainable(net)}  # (+ head)
    if lora is not None:
        fitted["lora_adapters_"] = merge_lora(net, lora, n_frozen)

    # the exact head on the new embeddings of every sample (uncached: new weights)
    def run(order):
        subset = est._suffix_dataset(net, items, order, kind, prep, device, start)
        loader = est._loader(subset, kind, prep, device, collate=Collate(inner))
        return run_blocks(
            net, loader, device, start=start, precision=precision, channels_last=channels_last
        )

    feats = np.stack(run_in_length_order(items, kind, prep, run))
    check_finite_rows(feats, "the fine-tuned encoder's output")
    head, info = state.target.solve_head(est, feats, labels, sw, state.y.n_outputs)
    net.head = head.to(device)
    fitted["n_trainable_params_"] += sum(p.numel() for p in head.parameters())
    history.append(
        {
            "epoch": cfg.max_epochs + 1,
            "train_loss": float(info["train_loss"]),
            "n_iter": info["n_iter"],
            "phase": "head",
        }
    )
    net.set_frozen(n_frozen)
    check_finite_weights(net)
    net.eval()
    return net, history, fitted
