"""Single-label classification: softmax outputs, cross-entropy, a multinomial logistic head."""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from sktransfer._estimator.params import check_class_weight, check_labels
from sktransfer._estimator.targets import Encoded, Target, weighted_mean
from sktransfer.training.heads import fit_linear_head


class SingleLabel(Target):
    """``y``: one label of any dtype per sample; ``classes_`` holds them, sorted."""

    name = "single_label"
    metric = "valid_acc"

    def encode(self, est, y, n_samples, sample_weight=None, previous=None):
        y = check_labels(y, n_samples)
        if previous is None:
            encoder = LabelEncoder().fit(y)
        else:  # partial_fit / warm_start: the classes an earlier call fixed
            encoder = LabelEncoder().fit(previous["classes_"])
            unseen = ~np.isin(y, encoder.classes_)
            if unseen.any():
                i = int(np.flatnonzero(unseen)[0])
                raise ValueError(
                    f"y[{i}] is {y[i]!r}, not one of the classes of the first call "
                    f"{list(encoder.classes_)!r} (pass every class in classes= on the first "
                    "partial_fit call; warm_start needs the same classes)"
                )
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(
                f"y contains only one class ({classes[0]!r}); a classifier needs at least 2 classes"
            )
        idx = encoder.transform(y).astype(np.int64)
        weights = None
        if est.class_weight is not None:
            check_class_weight(est.class_weight)
            if previous is not None and est.class_weight == "balanced":
                raise ValueError(
                    "class_weight='balanced' is not supported for partial_fit: the class "
                    "frequencies of later calls are unknown; pass a dict of class weights"
                )
            weights = compute_class_weight(est.class_weight, classes=classes, y=y)[idx]
        return Encoded(idx, len(classes), {"classes_": classes}, stratify=idx, weights=weights)

    def solve_head(self, est, features, values, sample_weight, n_outputs):
        return fit_linear_head(features, values, n_outputs, sample_weight, C=est.C)

    def loss(self, outputs, targets, weights):
        losses = nn.functional.cross_entropy(outputs.float(), targets, reduction="none")
        return weighted_mean(losses, weights)

    def score(self, outputs, targets):
        return float((outputs.argmax(1) == targets).float().mean())

    def output_module(self, est):
        return nn.Softmax(dim=1)

    def decode(self, est, outputs):
        return est.classes_[np.argmax(outputs, axis=1)]
