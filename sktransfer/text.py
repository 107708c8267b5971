"""Text modality: ``PretrainedTextClassifier``, ``PretrainedTextRegressor`` and
``TextEmbedder``."""

from __future__ import annotations

import copy
import numbers
import os

from sklearn.utils._param_validation import Interval, StrOptions

from sktransfer._estimator.classifier import CLASSIFIER_CONSTRAINTS, PretrainedClassifierBase
from sktransfer._estimator.docs import documented
from sktransfer._estimator.embedder import EmbedderBase
from sktransfer._estimator.regressor import REGRESSOR_CONSTRAINTS, PretrainedRegressorBase
from sktransfer.inputs.texts import TextDataset, check_texts, make_text_collate

_TEXT_CONSTRAINTS = {
    "backbone": "no_validation",
    "max_length": [None, Interval(numbers.Integral, 2, None, closed="left")],
    "pooling": [None, StrOptions({"mean", "cls"})],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],  # training
    "inference_batch_size": [None, Interval(numbers.Integral, 1, None, closed="left")],
    "device": [str],
    "cache_dir": [None, str, os.PathLike],
}


class _TextInput:
    """Text input handling shared by the classifier, the regressor and the embedder."""

    _modality = "text"

    def _check_X(self, X, *, fitting):
        return check_texts(X), "text"

    def _make_dataset(self, items, kind, prep, *, training, view=None, index=None):
        return TextDataset(items)

    def _collate(self, kind, prep):
        return make_text_collate(prep)

    def _preprocessing(self, backbone):
        prep = copy.copy(backbone.preprocessing)
        if self.max_length is not None:
            limit = prep.max_positions
            if limit is not None and self.max_length > limit:
                raise ValueError(
                    f"max_length={self.max_length} exceeds the {limit} token positions of "
                    f"backbone {backbone.name!r}; pass max_length <= {limit} (or None: "
                    f"the backbone's own, {prep.max_length})"
                )
            prep.max_length = int(self.max_length)
        if self.pooling is not None and self.pooling != prep.pooling:
            from sktransfer.backbones.huggingface import TextPool

            prep.pooling = self.pooling
            backbone.pool = TextPool(self.pooling, normalize=prep.normalize)
        return prep


@documented
class PretrainedTextClassifier(_TextInput, PretrainedClassifierBase):
    """Text classifier on a pretrained transformer encoder.

    {parameters}

    Attributes
    ----------
    classes_, n_blocks_, n_frozen_blocks_, block_names_, history_, lr_, module_
        As for :class:`~sktransfer.PretrainedImageClassifier`.
    n_trainable_params_, lora_adapters_
        As for :class:`~sktransfer.PretrainedImageClassifier` (``lora_adapters_``:
        with ``adapter="lora"`` only).

    Examples
    --------
    >>> from sktransfer import PretrainedTextClassifier
    >>> texts = ["a gripping, beautiful film", "dull and far too long",
    ...          "I loved every minute", "a waste of two hours"]
    >>> clf = PretrainedTextClassifier(random_state=0).fit(texts, ["pos", "neg"] * 2)
    >>> clf.predict(["what a wonderful story"]).shape  # packaged all-MiniLM-L6-v2
    (1,)
    """

    _parameter_constraints = {
        **CLASSIFIER_CONSTRAINTS,
        **_TEXT_CONSTRAINTS,
        "objective": [StrOptions({"cross_entropy", "contrastive"})],
        "num_iterations": [Interval(numbers.Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        backbone=None,
        *,
        freeze_depth="auto",
        adapter=None,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.0,
        objective="cross_entropy",
        num_iterations=20,
        lr=5e-5,
        lr_schedule="warmup_cosine",
        max_epochs=4,
        batch_size=32,
        inference_batch_size=None,
        optimizer="adamw",
        weight_decay=0.01,
        layer_decay=None,
        unfreeze_schedule=None,
        l2sp_alpha=0.0,
        l2sp_beta=0.01,
        regularizer=None,
        regularizer_strength=None,
        C=1.0,
        head_init="probe",
        class_weight=None,
        early_stopping="auto",
        warm_start=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        precision="auto",
        num_workers=0,
        compile=False,
        device="auto",
        cache_dir=None,
        random_state=None,
        verbose=0,
        max_length=None,
        pooling=None,
    ):
        self.backbone = backbone
        self.freeze_depth = freeze_depth
        self.adapter = adapter
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.objective = objective
        self.num_iterations = num_iterations
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.inference_batch_size = inference_batch_size
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.layer_decay = layer_decay
        self.unfreeze_schedule = unfreeze_schedule
        self.l2sp_alpha = l2sp_alpha
        self.l2sp_beta = l2sp_beta
        self.regularizer = regularizer
        self.regularizer_strength = regularizer_strength
        self.C = C
        self.head_init = head_init
        self.class_weight = class_weight
        self.early_stopping = early_stopping
        self.warm_start = warm_start
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.precision = precision
        self.num_workers = num_workers
        self.compile = compile
        self.device = device
        self.cache_dir = cache_dir
        self.random_state = random_state
        self.verbose = verbose
        self.max_length = max_length
        self.pooling = pooling


@documented
class PretrainedTextRegressor(_TextInput, PretrainedRegressorBase):
    """Text regressor on a pretrained transformer encoder: ``y`` of shape ``(n,)`` or
    ``(n, k)``.

    Frozen mode (the default) is ridge regression on the sentence embeddings,
    solved exactly; fine-tuning minimises the weighted mean squared error on
    standardised targets. See :class:`~sktransfer.PretrainedImageRegressor`.

    {parameters}

    Attributes
    ----------
    n_outputs_, y_mean_, y_scale_, y_ndim_, n_blocks_, n_frozen_blocks_, block_names_
        As for :class:`~sktransfer.PretrainedImageRegressor`.
    history_, lr_, alpha_, module_
        As for :class:`~sktransfer.PretrainedImageRegressor` (``valid_r2`` per epoch).
    n_trainable_params_, lora_adapters_
        As for :class:`~sktransfer.PretrainedImageClassifier` (``lora_adapters_``:
        with ``adapter="lora"`` only).

    Examples
    --------
    >>> import torch
    >>> from sktransfer import PretrainedTextRegressor
    >>> texts = ["good fun", "bad dull", "great film", "awful plot"] * 5
    >>> y = [1.0, -1.0, 1.0, -1.0] * 5
    >>> reg = PretrainedTextRegressor(random_state=0).fit(texts, y)  # doctest: +SKIP
    >>> reg.predict(["a great film"]).shape  # doctest: +SKIP
    (1,)
    """

    _parameter_constraints = {**REGRESSOR_CONSTRAINTS, **_TEXT_CONSTRAINTS}

    def __init__(
        self,
        backbone=None,
        *,
        freeze_depth="all",
        adapter=None,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.0,
        lr=5e-5,
        lr_schedule="warmup_cosine",
        max_epochs=4,
        batch_size=32,
        inference_batch_size=None,
        optimizer="adamw",
        weight_decay=0.01,
        layer_decay=None,
        unfreeze_schedule=None,
        l2sp_alpha=0.0,
        l2sp_beta=0.01,
        regularizer=None,
        regularizer_strength=None,
        alpha="auto",
        head_init="probe",
        early_stopping="auto",
        warm_start=False,
        validation_fraction=0.1,
        n_iter_no_change=3,
        precision="auto",
        num_workers=0,
        compile=False,
        device="auto",
        cache_dir=None,
        random_state=None,
        verbose=0,
        max_length=None,
        pooling=None,
    ):
        self.backbone = backbone
        self.freeze_depth = freeze_depth
        self.adapter = adapter
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.inference_batch_size = inference_batch_size
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.layer_decay = layer_decay
        self.unfreeze_schedule = unfreeze_schedule
        self.l2sp_alpha = l2sp_alpha
        self.l2sp_beta = l2sp_beta
        self.regularizer = regularizer
        self.regularizer_strength = regularizer_strength
        self.alpha = alpha
        self.head_init = head_init
        self.early_stopping = early_stopping
        self.warm_start = warm_start
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.precision = precision
        self.num_workers = num_workers
        self.compile = compile
        self.device = device
        self.cache_dir = cache_dir
        self.random_state = random_state
        self.verbose = verbose
        self.max_length = max_length
        self.pooling = pooling


@documented
class TextEmbedder(_TextInput, EmbedderBase):
    """Frozen sentence embeddings: ``transform(texts) -> (n, d) float32``.

    {parameters}

    Examples
    --------
    >>> from sktransfer import TextEmbedder
    >>> TextEmbedder().fit_transform(["a first text", "and a second"]).shape  # MiniLM
    (2, 384)
    """

    _parameter_constraints = {
        **{k: v for k, v in _TEXT_CONSTRAINTS.items() if k != "inference_batch_size"},
        "batch_size": [None, Interval(numbers.Integral, 1, None, closed="left")],  # inference
    }

    def __init__(
        self,
        backbone=None,
        *,
        batch_size=None,
        device="auto",
        cache_dir=None,
        max_length=None,
        pooling=None,
    ):
        self.backbone = backbone
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = cache_dir
        self.max_length = max_length
        self.pooling = pooling
