"""Multi-label classification: a 0/1 indicator matrix ``y``, one sigmoid output per label.

As scikit-learn's ``MLPClassifier`` does it: ``y`` of shape ``(n_samples, n_labels)``
holding 0/1 (ints, floats or bools; a scipy sparse matrix too), ``classes_`` is
``np.arange(n_labels)``, ``predict_proba`` returns ``(n_samples, n_labels)`` independent
probabilities and ``predict`` the indicator matrix ``proba >= 0.5``.

Frozen mode solves, exactly, the objective of
``OneVsRestClassifier(LogisticRegression(C=C))``: one binary logistic regression per label
(:func:`sktransfer.training.heads.fit_linear_head`, memoised by content, so a grid over
``C`` reuses each fold's row-space basis across labels), each turned into one sigmoid
logit (for two classes ``softmax(z0, z1)[1] == sigmoid(z1 - z0)``) and assembled into one
``nn.Linear(d, n_labels)``. A label that is constant over the samples that carry weight
(all 0 or all 1) has no logistic solution (its intercept runs off to infinity; scikit-learn's
one-vs-rest substitutes a constant predictor): its row of the head is zero weights and a
bias of ``-CONSTANT_LOGIT`` or ``+CONSTANT_LOGIT``, a finite logit whose sigmoid is within
2.1e-9 of the constant 0 or 1, so fine-tuning and the BCE loss stay finite.

Fine-tuning minimises binary cross-entropy with logits, averaged over the labels and then
weighted-averaged over the samples. The validation metric in ``history_`` is ``valid_f1``,
the micro-averaged F1 at threshold 0.5 (all label decisions pooled: it rewards the rare
positives that subset accuracy, all labels of a sample right, mostly hides), with 1.0 when
there is nothing to find and nothing is predicted (scikit-learn's ``zero_division=1.0``).
``score`` stays :class:`~sklearn.base.ClassifierMixin`'s subset accuracy, as in scikit-learn.

``class_weight`` is refused for multi-label ``y``: per-class weights of single-label
classification do not say how to weigh the positives and negatives of each label; pass
``sample_weight`` instead.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sktransfer._estimator.targets import Encoded, Target, weighted_mean
from sktransfer.training.heads import fit_linear_head, linear_head

CONSTANT_LOGIT = 20.0  # sigmoid(20) = 1 - 2.1e-9: a constant label's head, finite for training


def _as_matrix(y):
    """``y`` as a 2-D ndarray, or None when it is not a 2-D array-like."""
    if hasattr(y, "toarray") and getattr(y, "ndim", None) == 2:  # scipy sparse
        return y.toarray()
    try:
        arr = np.asarray(y)
    except (ValueError, TypeError):  # ragged lists: not a matrix
        return None
    return arr if arr.ndim == 2 else None


class MultiLabel(Target):
    """``y``: an ``(n_samples, n_labels)`` 0/1 indicator matrix, ``n_labels >= 2``."""

    name = "multi_label"
    metric = "valid_f1"

    @staticmethod
    def accepts(y):
        """Any 2-D ``y`` with at least 2 columns; :meth:`encode` checks that it is 0/1, so
        that a bad entry is named by its index rather than refused as "not 1-D"."""
        arr = _as_matrix(y)
        return arr is not None and arr.shape[1] >= 2

    def encode(self, est, y, n_samples, sample_weight=None, previous=None):
        arr = _as_matrix(y)
        if previous is not None and arr.ndim == 2 and arr.shape[1] != len(previous["classes_"]):
            raise ValueError(
                f"y has {arr.shape[1]} label columns; the first call had "
                f"{len(previous['classes_'])}"
            )
        if len(arr) != n_samples:
            raise ValueError(f"X has {n_samples} samples but y has {len(arr)} rows")
        ok = np.zeros(arr.shape, dtype=bool)
        if arr.dtype.kind in "biuf":
            ok = (arr == 0) | (arr == 1)
        elif arr.dtype.kind == "O":  # e.g. from a list of lists mixing types
            ok = np.vectorize(
                lambda v: isinstance(v, (bool, int, float, np.number)) and v in (0, 1),
                otypes=[bool],
            )(arr)
        if not ok.all():
            i, j = (int(v) for v in np.argwhere(~ok)[0])
            value = arr[i, j].item() if isinstance(arr[i, j], np.generic) else arr[i, j]
            raise ValueError(
                f"y[{i}, {j}] is {value!r}; a 2-D y is a multi-label indicator matrix and "
                "must hold only 0 and 1 (one column per label)"
            )
        if est.class_weight is not None:
            raise ValueError(
                "class_weight is not supported for multi-label y (an indicator matrix); "
                "use sample_weight to weigh samples"
            )
        values = arr.astype(np.float32)
        k = values.shape[1]
        return Encoded(values, k, {"classes_": np.arange(k)}, stratify=None, weights=None)

    def solve_head(self, est, features, values, sample_weight, n_outputs):
        """One exact binary logistic regression per label, as one-vs-rest does."""
        d = features.shape[1]
        W, b = np.zeros((n_outputs, d)), np.zeros(n_outputs)
        losses, n_iter, converged = [], 0, True
        weighted = np.asarray(sample_weight) > 0
        for j in range(n_outputs):
            labels = values[:, j].astype(np.int64)
            seen = np.unique(labels[weighted])
            if len(seen) == 1:  # constant label: no finite optimum; a constant predictor
                b[j] = CONSTANT_LOGIT if seen[0] == 1 else -CONSTANT_LOGIT
                losses.append(float(np.log1p(np.exp(-CONSTANT_LOGIT))))
                continue
            head, info = fit_linear_head(features, labels, 2, sample_weight, C=est.C)
            with torch.no_grad():  # softmax over (z0, z1): class 1 is sigmoid(z1 - z0)
                weight, bias = head.weight.double().numpy(), head.bias.double().numpy()
            W[j], b[j] = weight[1] - weight[0], bias[1] - bias[0]
            losses.append(info["train_loss"])
            n_iter = max(n_iter, info["n_iter"])
            converged = converged and info["converged"]
        head = linear_head(W, b)
        # train_loss: the mean of the labels' objectives (the loss is a mean over labels);
        # n_iter: the slowest label's L-BFGS iterations
        info = {"train_loss": float(np.mean(losses)), "n_iter": n_iter, "converged": converged}
        return head, info

    def loss(self, outputs, targets, weights):
        losses = nn.functional.binary_cross_entropy_with_logits(
            outputs.float(), targets.float(), reduction="none"
        ).mean(dim=1)
        return weighted_mean(losses, weights)

    def score(self, outputs, targets):
        pred, true = outputs >= 0, targets >= 0.5  # sigmoid(z) >= 0.5  <=>  z >= 0
        tp = int((pred & true).sum())
        wrong = int((pred ^ true).sum())  # false positives + false negatives
        return 1.0 if tp + wrong == 0 else 2.0 * tp / (2.0 * tp + wrong)

    def output_module(self, est):
        return nn.Sigmoid()

    def decode(self, est, outputs):
        return (np.asarray(outputs) >= 0.5).astype(np.int64)
