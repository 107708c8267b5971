"""Training: the linear-probe head solver and the skorch fine-tuning loop.

* Frozen mode (and the head warm start before fine-tuning): the head is a
  multinomial logistic regression fitted to convergence with L-BFGS on the
  extracted features, with the same objective as scikit-learn's
  ``LogisticRegression(C=C)`` (L2 on the weights, not the intercept; a single
  weight vector for two classes).
* Fine-tuning: a :class:`skorch.NeuralNet` drives the epochs. It is wrapped, not
  inherited by the estimators: it only sees the trainable parameters, keeps the
  frozen blocks in eval mode (``TransferNet.train``), weighs the loss by
  ``sample_weight`` and records validation accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping
from skorch.helper import predefined_split
from skorch.utils import to_tensor
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from sktransfer.backbones._base import TextState

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


# --------------------------------------------------------------------------- data plumbing
class LabeledDataset(Dataset):
    """``base[i] = (x, _)`` -> ``(x, (label, weight))`` for the training loop."""

    def __init__(self, base, labels, weights):
        self.base, self.labels, self.weights = base, labels, weights

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, _ = self.base[i]
        return x, (int(self.labels[i]), float(self.weights[i]))


class Collate:
    """Collate ``(x, target)`` pairs with ``inner`` for x; targets stay (labels, weights)."""

    def __init__(self, inner=None):
        self.inner = inner

    def __call__(self, batch):
        xs = [(x, 0) for x, _ in batch]
        x = self.inner(xs)[0] if self.inner is not None else default_collate(xs)[0]
        targets = [t for _, t in batch]
        if targets and isinstance(targets[0], tuple):
            labels = torch.tensor([t[0] for t in targets], dtype=torch.int64)
            weights = torch.tensor([t[1] for t in targets], dtype=torch.float32)
            return x, (labels, weights)
        return x, torch.as_tensor(targets)


def to_device(x, device):
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    if isinstance(x, TextState):
        return TextState(*(to_device(v, device) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x.to(device, non_blocking=True)


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


def make_loader(dataset, batch_size, collate, device, shuffle=False, generator=None):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        generator=generator,
        pin_memory=str(device).startswith("cuda"),
    )


@torch.no_grad()  # not inference_mode: lazy modules may materialise here
def run_blocks(net, loader, device, start=0, stop=None, out_dtype=np.float32) -> list:
    """Run ``net`` blocks ``start:stop`` (pooled at the end) in eval mode over ``loader``.

    Returns one array per sample (see :func:`split_output`).
    """
    was_training = net.training
    net.eval()
    rows = []
    try:
        for x, _ in loader:
            out = net.features(to_device(x, device), start=start, stop=stop)
            rows.extend(split_output(out, out_dtype))
    finally:
        net.train(was_training)
    return rows


@torch.no_grad()
def predict_logits(net, loader, device, start=0):
    net.eval()
    return np.concatenate(
        [net(to_device(x, device), start=start).float().cpu().numpy() for x, _ in loader]
    )


# --------------------------------------------------------------------------- frozen head
def fit_linear_head(features, labels, n_classes, sample_weight=None, C=1.0, max_iter=1000):
    """Multinomial logistic regression by L-BFGS; returns ``(nn.Linear, info)``.

    Minimises ``sum_i w_i CE_i / sum(w) + ||W||^2 / (2 C sum(w))`` (scikit-learn's
    ``LogisticRegression`` objective, rescaled) in float64 with SciPy's L-BFGS-B,
    the solver scikit-learn uses. Two classes use one weight vector, as there.
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n, d = X.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w_sum = w.sum()
    k = 1 if n_classes == 2 else n_classes
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def loss_grad(theta):
        W = theta[: k * d].reshape(k, d)
        b = theta[k * d :]
        z = X @ W.T + b
        if k == 1:  # binary: logistic loss on z, labels in {0, 1}
            z = z[:, 0]
            losses = np.logaddexp(0.0, z) - y * z
            resid = (1.0 / (1.0 + np.exp(-z)) - y)[:, None]
        else:
            logp = log_softmax(z, axis=1)
            losses = -(onehot * logp).sum(axis=1)
            resid = np.exp(logp) - onehot
        resid = resid * (w / w_sum)[:, None]
        loss = (w * losses).sum() / w_sum + (W**2).sum() / (2.0 * C * w_sum)
        grad_W = resid.T @ X + W / (C * w_sum)
        return loss, np.concatenate([grad_W.ravel(), resid.sum(axis=0)])

    res = minimize(
        loss_grad,
        np.zeros(k * d + k),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": 1e-6, "ftol": 1e-12},
    )
    W, b = res.x[: k * d].reshape(k, d), res.x[k * d :]
    if k == 1:  # softmax over [-z/2, z/2] == sigmoid(z)
        W, b = np.concatenate([-W / 2, W / 2]), np.concatenate([-b / 2, b / 2])
    head = nn.Linear(d, n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(W).float())
        head.bias.copy_(torch.from_numpy(b).float())
    info = {"train_loss": float(res.fun), "n_iter": int(res.nit), "converged": bool(res.success)}
    return head, info


# --------------------------------------------------------------------------- fine-tuning
class ValidAccuracy(Callback):
    """Per-epoch validation accuracy from the validation batches' predictions."""

    def on_epoch_begin(self, net, **kwargs):
        self.correct_, self.count_ = 0, 0

    def on_batch_end(self, net, batch=None, training=None, y_pred=None, **kwargs):
        if training or y_pred is None:
            return
        labels = batch[1][0]
        self.correct_ += int((y_pred.argmax(1).cpu() == labels.cpu()).sum())
        self.count_ += len(labels)

    def on_epoch_end(self, net, **kwargs):
        if self.count_:
            net.history.record("valid_acc", self.correct_ / self.count_)


class TransferNeuralNet(NeuralNet):
    """skorch net over a :class:`~sktransfer.freezing.TransferNet`.

    Batches are ``(x, (labels, weights))``; ``x`` may be a dict (text) and is
    passed to the module whole.
    """

    def infer(self, x, **fit_params):
        return self.module_(to_device(x, self.device), **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        labels, weights = (to_tensor(t, device=self.device) for t in y_true)
        losses = self.criterion_(y_pred, labels)
        return (losses * weights).sum() / weights.sum()

    def get_all_learnable_params(self):
        for name, param in self.module_.named_parameters():
            if param.requires_grad:
                yield name, param


def history_records(history) -> list[dict]:
    keep = ("epoch", "train_loss", "valid_loss", "valid_acc", "dur")
    return [{k: row[k] for k in keep if k in row} for row in history]


def fine_tune(
    net,
    train_ds,
    valid_ds,
    collate,
    *,
    lr,
    max_epochs,
    batch_size,
    optimizer,
    weight_decay,
    device,
    seed,
    early_stopping,
    n_iter_no_change,
    verbose,
):
    """Train ``net``'s unfrozen part with skorch; returns the per-epoch history."""
    opt_cls = OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer
    callbacks = [("valid_acc", ValidAccuracy())]
    if early_stopping and valid_ds is not None:
        callbacks.append(
            (
                "early_stopping",
                EarlyStopping(
                    monitor="valid_loss", patience=n_iter_no_change, load_best=True, sink=_null
                ),
            )
        )
    gen = torch.Generator()
    gen.manual_seed(seed)
    skorch_net = TransferNeuralNet(
        module=net,
        criterion=nn.CrossEntropyLoss,
        criterion__reduction="none",
        optimizer=opt_cls,
        optimizer__weight_decay=weight_decay,
        lr=lr,
        max_epochs=max_epochs,
        batch_size=batch_size,
        iterator_train__shuffle=True,
        iterator_train__generator=gen,
        iterator_train__collate_fn=collate,
        iterator_valid__collate_fn=collate,
        iterator_train__pin_memory=str(device).startswith("cuda"),
        train_split=predefined_split(valid_ds) if valid_ds is not None else None,
        callbacks=callbacks,
        device=device,
        verbose=int(verbose),
    )
    skorch_net.fit(train_ds, y=None)
    return history_records(skorch_net.history)


def _null(*args, **kwargs):
    return None


class ArrayDataset(Dataset):
    """Rows of a 2-D float array (the numeric-vector input of a user module)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return torch.as_tensor(np.asarray(self.rows[i], dtype=np.float32)), 0
