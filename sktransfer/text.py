"""Text modality: ``PretrainedTextClassifier`` and ``TextEmbedder``."""

from __future__ import annotations

import copy
import numbers
import os

from sklearn.utils._param_validation import Interval, StrOptions

from sktransfer._base import COMMON_CONSTRAINTS, PretrainedClassifierBase
from sktransfer._embedder import EmbedderBase
from sktransfer.data import TextDataset, check_texts, make_text_collate

_TEXT_CONSTRAINTS = {
    "backbone": "no_validation",
    "max_length": [None, Interval(numbers.Integral, 2, None, closed="left")],
    "pooling": [None, StrOptions({"mean", "cls"})],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "device": [str],
    "cache_dir": [None, str, os.PathLike],
}


class _TextInput:
    """Text input handling shared by the classifier and the embedder."""

    _modality = "text"

    def _check_X(self, X, *, fitting):
        return check_texts(X), "text"

    def _make_dataset(self, items, kind, prep, *, training):
        return TextDataset(items)

    def _collate(self, kind, prep):
        return make_text_collate(prep)

    def _preprocessing(self, backbone):
        prep = copy.copy(backbone.preprocessing)
        if self.max_length is not None:
            prep.max_length = int(self.max_length)
        if self.pooling is not None and self.pooling != prep.pooling:
            from sktransfer.backbones.huggingface import TextPool

            prep.pooling = self.pooling
            backbone.pool = TextPool(self.pooling, normalize=prep.normalize)
        return prep


class PretrainedTextClassifier(_TextInput, PretrainedClassifierBase):
    """Text classifier on a pretrained transformer encoder.

    Parameters
    ----------
    backbone : str, path, fitted PretrainedTextClassifier or None
        ``None`` is the packaged offline ``"all-MiniLM-L6-v2"``. A local Hugging
        Face model directory, a hub id already in the local cache, or a fitted
        text classifier whose fine-tuned encoder is reused with a new head.
    freeze_depth : "all" or int, default="all"
        ``"all"``: frozen sentence embeddings + a logistic-regression head.
        ``k >= 0``: embeddings and the first ``k - 1`` layers frozen; 0 = full
        fine-tuning; ``-k``: all but the last ``k`` blocks frozen.
    lr : float, default=5e-5
    max_epochs : int, default=4
    batch_size : int, default=32
    optimizer, weight_decay, C, head_init, early_stopping, validation_fraction,
    n_iter_no_change, device, cache_dir, random_state, verbose
        As for :class:`~sktransfer.PretrainedImageClassifier`.
    max_length : int or None, default=None
        Truncation length in tokens (None: the backbone's own, at most 512).
    pooling : {"mean", "cls"} or None, default=None
        Token pooling (None: the backbone's own; mean for sentence-transformers).

    Attributes
    ----------
    classes_, n_blocks_, n_frozen_blocks_, block_names_, history_, module_
        As for :class:`~sktransfer.PretrainedImageClassifier`.
    """

    _parameter_constraints = {**COMMON_CONSTRAINTS, **_TEXT_CONSTRAINTS}

    def __init__(
        self,
        backbone=None,
        *,
        freeze_depth="all",
        lr=5e-5,
        max_epochs=4,
        batch_size=32,
        optimizer="adamw",
        weight_decay=0.01,
        C=1.0,
        head_init="probe",
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=3,
        device="auto",
        cache_dir=None,
        random_state=None,
        verbose=0,
        max_length=None,
        pooling=None,
    ):
        self.backbone = backbone
        self.freeze_depth = freeze_depth
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.C = C
        self.head_init = head_init
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.cache_dir = cache_dir
        self.random_state = random_state
        self.verbose = verbose
        self.max_length = max_length
        self.pooling = pooling


class TextEmbedder(_TextInput, EmbedderBase):
    """Frozen sentence embeddings: ``transform(texts) -> (n, d) float32``.

    Parameters
    ----------
    backbone : str, path, fitted estimator or None
        As for :class:`PretrainedTextClassifier`.
    max_length : int or None, default=None
    pooling : {"mean", "cls"} or None, default=None
    batch_size : int, default=32
    device : str, default="auto"
    cache_dir : str, path or None, default=None
    """

    _parameter_constraints = dict(_TEXT_CONSTRAINTS)

    def __init__(
        self,
        backbone=None,
        *,
        max_length=None,
        pooling=None,
        batch_size=32,
        device="auto",
        cache_dir=None,
    ):
        self.backbone = backbone
        self.max_length = max_length
        self.pooling = pooling
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = cache_dir
