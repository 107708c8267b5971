"""Shared estimator base: parameters, validation, labels, the fit/predict skeleton.

The modality classes (``image.py``, ``text.py``) only say how raw input becomes a
dataset and which preprocessing overrides apply; everything else lives here.
"""

from __future__ import annotations

import copy
import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    column_or_1d,
    validate_data,
)
from torch import nn

from sktransfer.backbones import resolve_backbone
from sktransfer.cache import count_forwards, get_config, lookup
from sktransfer.data import sample_keys
from sktransfer.freezing import TransferNet, block_namespace, resolve_freeze_depth
from sktransfer.persistence import PicklableModulesMixin
from sktransfer.training import (
    Collate,
    LabeledDataset,
    PadTokens,
    RowsDataset,
    fine_tune,
    fit_linear_head,
    make_loader,
    predict_logits,
    run_blocks,
)

COMMON_CONSTRAINTS = {
    "freeze_depth": [StrOptions({"all"}), Interval(numbers.Integral, None, None, closed="neither")],
    "lr": [Interval(numbers.Real, 0, None, closed="neither")],
    "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "optimizer": [StrOptions({"adamw", "adam", "sgd"}), type],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    "C": [Interval(numbers.Real, 0, None, closed="neither")],
    "head_init": [StrOptions({"probe", "random"})],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
    "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
    "device": [str],
    "cache_dir": [None, str, os.PathLike],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available else cpu; explicit devices are checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    return dev


def check_labels(y, n_samples):
    """Validate ``y`` for classification; returns it as a 1-D ndarray."""
    if y is None:
        raise ValueError(
            "this classifier requires y to be passed, but the target y is None: "
            "pass one label per sample"
        )
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)  # DataConversionWarning, as scikit-learn does
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per sample), got shape {y.shape}")
    if len(y) != n_samples:
        raise ValueError(f"X has {n_samples} samples but y has {len(y)} labels")
    for i, label in enumerate(y):
        if label is None or (isinstance(label, (float, np.floating)) and np.isnan(label)):
            raise ValueError(f"y[{i}] is missing ({label!r}); labels must not be None or NaN")
    check_classification_targets(y)
    return y


class PretrainedClassifierBase(PicklableModulesMixin, ClassifierMixin, BaseEstimator):
    """Fit/predict skeleton shared by the image and text classifiers."""

    _modality = None  # "image" | "text"
    _is_sktransfer_estimator = True
    _parameter_constraints: dict = dict(COMMON_CONSTRAINTS)

    # ------------------------------------------------------------------ modality hooks
    def _check_X(self, X, *, fitting):  # pragma: no cover - abstract
        """Return ``(items, kind)``; ``kind`` is the modality or ``"vector"``."""
        raise NotImplementedError

    def _make_dataset(self, items, kind, prep, *, training):  # pragma: no cover - abstract
        raise NotImplementedError

    def _collate(self, kind, prep):  # pragma: no cover - abstract
        raise NotImplementedError

    def _preprocessing(self, backbone):  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _seed(self):
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _reset(self):
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("__")]:
            delattr(self, attr)

    def _check_vector_X(self, X, *, fitting):
        return validate_data(self, X, reset=fitting, dtype=np.float32)

    def _resolve_backbone(self):
        return resolve_backbone(self.backbone, self._modality, weights=self._weights_param())

    def _weights_param(self):
        return "default"

    def _export_backbone(self):
        """A fresh copy of the fitted backbone (blocks + pool) for source->target transfer."""
        from sktransfer.backbones import Backbone

        check_is_fitted(self)
        net = copy.deepcopy(self.module_).cpu()
        return Backbone(
            name=f"{self.backbone_name_} (fine-tuned)",
            modality=self.modality_,
            blocks=list(zip(net.block_names, net.blocks)),
            pool=net.pool,
            feature_dim=self.n_features_out_,
            preprocessing=copy.deepcopy(self.preprocessing_),
            source={"kind": "estimator", "name": self.backbone_name_},
        )

    def _loader(self, dataset, kind, prep, device, *, labels=None, weights=None, shuffle=False):
        collate = Collate(self._collate(kind, prep))
        if labels is not None:
            dataset = LabeledDataset(dataset, labels, weights)
        return make_loader(dataset, self.batch_size, collate, device, shuffle=shuffle)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, sample_weight=None):
        """Fit the head (and the unfrozen blocks) on ``X, y``.

        Parameters
        ----------
        X : images or texts (see the class docstring)
        y : array-like of shape (n_samples,)
            Class labels of any dtype (strings, ints, bools).
        sample_weight : array-like of shape (n_samples,), default=None
            Per-sample weights applied to the loss.

        Returns
        -------
        self
        """
        self._reset()  # a failed fit leaves an unfitted estimator
        self._validate_params()
        items, kind = self._check_X(X, fitting=True)
        y = check_labels(y, len(items))
        encoder = LabelEncoder().fit(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(
                f"y contains only one class ({classes[0]!r}); a classifier needs at least 2 classes"
            )
        y_idx = encoder.transform(y)
        sw = _check_sample_weight(sample_weight, np.empty((len(items), 0)), dtype=np.float64)
        device = resolve_device(self.device)
        seed = self._seed()
        backbone = self._resolve_backbone()
        prep = self._preprocessing(backbone)
        n_frozen = resolve_freeze_depth(self.freeze_depth, backbone.n_blocks)
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                result = self._fit_net(
                    backbone, prep, items, kind, y_idx, sw, classes, n_frozen, device, seed
                )
        except BaseException:
            self._reset()
            raise
        net, history, n_features_out = result
        self.module_ = net
        self.classes_ = classes
        self.n_blocks_ = backbone.n_blocks
        self.n_frozen_blocks_ = n_frozen
        self.block_names_ = [name for name, _ in backbone.blocks]
        self.backbone_name_ = backbone.name
        self.backbone_source_ = dict(backbone.source)
        self.preprocessing_ = prep
        self.modality_ = self._modality
        self.input_kind_ = kind
        self.n_features_out_ = n_features_out
        self.history_ = history
        return self

    def _fit_net(self, backbone, prep, items, kind, y_idx, sw, classes, n_frozen, device, seed):
        n_classes = len(classes)
        blocks = [m for _, m in backbone.blocks]
        names = [n for n, _ in backbone.blocks]
        n_blocks = len(blocks)
        net = TransferNet(blocks, names, backbone.pool, nn.Identity(), n_frozen=n_blocks)
        net.to(device)
        if backbone.feature_dim is None:  # a user module: materialise lazies, then refreeze
            self._outputs(net, items[:1], kind, prep, device, stop=n_blocks, use_cache=False)
            net.set_frozen(n_blocks)
        frozen = n_frozen == n_blocks
        if frozen or self.head_init == "probe":
            feats = np.stack(self._outputs(net, items, kind, prep, device, stop=n_blocks))
            head, info = fit_linear_head(feats, y_idx, n_classes, sw, C=self.C)
        else:
            dim = self._outputs(net, items[:1], kind, prep, device, stop=n_blocks)[0].shape[-1]
            torch.manual_seed(seed)
            head, info = nn.Linear(dim, n_classes), None
        net.head = head.to(device)
        n_features_out = head.in_features
        if frozen:
            history = [{"epoch": 1, "train_loss": info["train_loss"], "n_iter": info["n_iter"]}]
            return net, history, n_features_out
        net.set_frozen(n_frozen)
        # train only the suffix on cached frozen-prefix activations, unless the
        # input is augmented (then the prefix must see every augmented sample)
        start = n_frozen if self._use_boundary_cache(n_frozen) else 0
        train_idx, valid_idx = self._split(y_idx, seed)
        train_ds = LabeledDataset(
            self._suffix_dataset(net, items, train_idx, kind, prep, device, start, training=True),
            y_idx[train_idx],
            sw[train_idx],
        )
        valid_ds = None
        if valid_idx is not None:
            valid_ds = LabeledDataset(
                self._suffix_dataset(net, items, valid_idx, kind, prep, device, start),
                y_idx[valid_idx],
                sw[valid_idx],
            )
        net.input_block = start
        # cache hits skip DataLoader iterations that draw from the global RNG:
        # re-seed so training is identical whether the activations were cached
        torch.manual_seed(seed)
        try:
            history = fine_tune(
                net,
                train_ds,
                valid_ds,
                Collate(self._suffix_collate(kind, prep, start)),
                lr=self.lr,
                max_epochs=self.max_epochs,
                batch_size=self.batch_size,
                optimizer=self.optimizer,
                weight_decay=self.weight_decay,
                device=device,
                seed=seed,
                early_stopping=self.early_stopping,
                n_iter_no_change=self.n_iter_no_change,
                verbose=self.verbose,
            )
        finally:
            net.input_block = 0
        net.eval()
        return net, history, n_features_out

    # ------------------------------------------------------------------ cached block outputs
    def _use_boundary_cache(self, n_frozen):
        return n_frozen > 0 and get_config()["cache"] and getattr(self, "augment", None) is None

    def _outputs(self, net, items, kind, prep, device, *, stop, use_cache=True):
        """Per-sample outputs of blocks ``[:stop]`` (pooled when ``stop`` is the end).

        Looked up in the content-addressed cache; only misses run the backbone.
        """

        def compute(idx):
            dataset = self._make_dataset([items[i] for i in idx], kind, prep, training=False)
            if use_cache:  # (uncached: a one-sample shape probe, not feature extraction)
                count_forwards(len(idx))
            return run_blocks(net, self._loader(dataset, kind, prep, device), device, stop=stop)

        if not use_cache:
            return compute(list(range(len(items))))
        namespace = block_namespace(net, stop, prep, kind)
        keys = sample_keys(items, "text" if kind == "text" else "image")
        return lookup(namespace, keys, compute, cache_dir=self.cache_dir)

    def _suffix_dataset(self, net, items, idx, kind, prep, device, start, training=False):
        subset = [items[i] for i in idx]
        if start == 0:
            return self._make_dataset(subset, kind, prep, training=training)
        return RowsDataset(self._outputs(net, subset, kind, prep, device, stop=start))

    def _suffix_collate(self, kind, prep, start):
        if start == 0:
            return self._collate(kind, prep)
        return PadTokens() if kind == "text" else None

    def _split(self, y_idx, seed):
        """Stratified train/validation split, or no split when it cannot be stratified."""
        if not self.early_stopping:
            return np.arange(len(y_idx)), None
        n_valid = int(round(self.validation_fraction * len(y_idx)))
        counts = np.bincount(y_idx)
        if n_valid < len(counts) or counts.min() < 2 or len(y_idx) - n_valid < len(counts):
            warnings.warn(
                "too few samples for a stratified validation split; training without "
                "early stopping",
                stacklevel=4,
            )
            return np.arange(len(y_idx)), None
        train_idx, valid_idx = train_test_split(
            np.arange(len(y_idx)), test_size=n_valid, stratify=y_idx, random_state=seed
        )
        return np.sort(train_idx), np.sort(valid_idx)

    # ------------------------------------------------------------------ predict
    def _logits(self, X):
        check_is_fitted(self)
        items, kind = self._check_X(X, fitting=False)
        if kind != self.input_kind_:
            raise ValueError(f"this model was fitted on {self.input_kind_} input, got {kind} input")
        device = resolve_device(self.device)
        net, prep = self.module_.to(device), self.preprocessing_
        k = net.n_frozen if self._use_boundary_cache(net.n_frozen) else 0
        if k == len(net.blocks):  # frozen: cached features -> head
            rows = self._outputs(net, items, kind, prep, device, stop=k)
            with torch.no_grad():
                feats = torch.from_numpy(np.stack(rows)).to(device)
                return net.head(feats).float().cpu().numpy()
        dataset = self._suffix_dataset(net, items, range(len(items)), kind, prep, device, k)
        loader = make_loader(
            dataset, self.batch_size, Collate(self._suffix_collate(kind, prep, k)), device
        )
        return predict_logits(net, loader, device, start=k)

    def predict_proba(self, X):
        """Class probabilities, columns in ``classes_`` order; rows sum to 1."""
        logits = torch.from_numpy(self._logits(X)).double()
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X):
        """Predicted labels (same dtype as the labels given to ``fit``)."""
        logits = self._logits(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        vector = isinstance(self.backbone, nn.Module) and self._modality == "image"
        tags.input_tags.two_d_array = vector
        tags.input_tags.three_d_array = self._modality == "image"
        tags.input_tags.string = self._modality == "text"
        tags.non_deterministic = self.random_state is None
        return tags
