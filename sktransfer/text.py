"""Text modality: ``PretrainedTextClassifier``, ``PretrainedTextRegressor`` and
``TextEmbedder``."""

from __future__ import annotations

import copy
import numbers
import os

from sklearn.utils._param_validation import Interval, StrOptions

from sktransfer._estimator.classifier import CLASSIFIER_CONSTRAINTS, PretrainedClassifierBase
from sktransfer._estimator.embedder import EmbedderBase
from sktransfer._estimator.regressor import REGRESSOR_CONSTRAINTS, PretrainedRegressorBase
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
    lr : float or "auto", default=5e-5
        Peak fine-tuning rate; "auto" runs an LR range test in ``fit`` (see
        :class:`~sktransfer.PretrainedImageClassifier`).
    lr_schedule : {"warmup_cosine", "onecycle", "constant"}, default="warmup_cosine"
    max_epochs : int, default=4
    batch_size : int, default=32
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
    weight_decay : float, default=0.01
    layer_decay : float in (0, 1] or None, default=None
        The head gets ``lr``, layer ``i`` from the top ``lr * layer_decay**i``.
    unfreeze_schedule : int or None, default=None
        Head-only epochs before the configured layers are trained.
    l2sp_alpha : float, default=0.0
        L2-SP pull of the fine-tuned weights toward the pretrained ones.
    l2sp_beta : float, default=0.01
        With L2-SP, L2 strength on the head's weights.
    C : float, default=1.0
    head_init : {"probe", "random"}, default="probe"
    class_weight : "balanced", dict or None, default=None
    early_stopping : bool, default=True
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=3
    precision : {"auto", "fp32", "bf16"}, default="auto"
    num_workers : int, default=0
    compile : bool, default=False
    device : str, default="auto"
    cache_dir : str, path or None, default=None
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
        0 silent; 1 progress bars (stderr) and an epoch table (stdout).
        All as for :class:`~sktransfer.PretrainedImageClassifier`.
    max_length : int or None, default=None
        Truncation length in tokens (None: the backbone's own, at most 512).
    pooling : {"mean", "cls"} or None, default=None
        Token pooling (None: the backbone's own; mean for sentence-transformers).

    Attributes
    ----------
    classes_, n_blocks_, n_frozen_blocks_, block_names_, history_, lr_, module_
        As for :class:`~sktransfer.PretrainedImageClassifier`.
    """

    _parameter_constraints = {**CLASSIFIER_CONSTRAINTS, **_TEXT_CONSTRAINTS}

    def __init__(
        self,
        backbone=None,
        *,
        freeze_depth="all",
        lr=5e-5,
        lr_schedule="warmup_cosine",
        max_epochs=4,
        batch_size=32,
        optimizer="adamw",
        weight_decay=0.01,
        layer_decay=None,
        unfreeze_schedule=None,
        l2sp_alpha=0.0,
        l2sp_beta=0.01,
        C=1.0,
        head_init="probe",
        class_weight=None,
        early_stopping=True,
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
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.layer_decay = layer_decay
        self.unfreeze_schedule = unfreeze_schedule
        self.l2sp_alpha = l2sp_alpha
        self.l2sp_beta = l2sp_beta
        self.C = C
        self.head_init = head_init
        self.class_weight = class_weight
        self.early_stopping = early_stopping
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


class PretrainedTextRegressor(_TextInput, PretrainedRegressorBase):
    """Text regressor on a pretrained transformer encoder: ``y`` of shape ``(n,)`` or
    ``(n, k)``.

    Frozen mode (the default) is ridge regression on the sentence embeddings,
    solved exactly; fine-tuning minimises the weighted mean squared error on
    standardised targets. See :class:`~sktransfer.PretrainedImageRegressor`.

    Parameters
    ----------
    backbone : str, path, fitted sktransfer text estimator or None
        ``None`` is the packaged offline ``"all-MiniLM-L6-v2"``. A local Hugging
        Face model directory, a hub id already in the local cache, or a fitted
        text estimator whose fine-tuned encoder is reused with a new head.
    freeze_depth : "all" or int, default="all"
        ``"all"``: frozen sentence embeddings + a ridge head. ``k >= 0``:
        embeddings and the first ``k - 1`` layers frozen; 0 = full fine-tuning;
        ``-k``: all but the last ``k`` blocks frozen.
    lr : float or "auto", default=5e-5
        Peak fine-tuning rate; "auto" runs an LR range test in ``fit`` (see
        :class:`~sktransfer.PretrainedImageClassifier`).
    lr_schedule : {"warmup_cosine", "onecycle", "constant"}, default="warmup_cosine"
        Per-batch learning-rate schedule.
    max_epochs : int, default=4
        Fine-tuning epochs.
    batch_size : int, default=32
        Training and inference batch size.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
        The fine-tuning optimizer.
    weight_decay : float, default=0.01
        Ignored when ``l2sp_alpha > 0``.
    layer_decay : float in (0, 1] or None, default=None
        The head gets ``lr``, layer ``i`` from the top ``lr * layer_decay**i``.
    unfreeze_schedule : int or None, default=None
        Head-only epochs before the configured layers are trained.
    l2sp_alpha : float, default=0.0
        L2-SP pull of the fine-tuned weights toward the pretrained ones.
    l2sp_beta : float, default=0.01
        With L2-SP, L2 strength on the head's weights.
    alpha : float >= 0, default=1.0
        L2 strength of the ridge head (as in ``Ridge``).
    head_init : {"probe", "random"}, default="probe"
        Start fine-tuning from the ridge head on frozen features, or a random one.
    early_stopping : bool, default=True
        Hold out ``validation_fraction``, stop on the validation loss, keep the best epoch.
    validation_fraction : float, default=0.1
        Share of the samples held out for early stopping and ``valid_r2``.
    n_iter_no_change : int, default=3
        Epochs without a better validation loss before early stopping.
    precision : {"auto", "fp32", "bf16"}, default="auto"
        "auto": bf16 autocast on CUDA, fp32 on the CPU.
    num_workers : int, default=0
        ``DataLoader`` worker processes.
    compile : bool, default=False
        ``torch.compile`` the trained part of the network.
    device : str, default="auto"
        "auto" (cuda when available), "cpu", "cuda", "cuda:N"; resolved at fit/predict time.
    cache_dir : str, path or None, default=None
        Directory for the on-disk tier of the feature cache (None: the global setting).
    random_state : int, RandomState or None, default=None
        One seed for torch, numpy, data order and the validation split.
    verbose : int, default=0
        0 silent; 1 progress bars (stderr) and an epoch table (stdout).
        All as for :class:`~sktransfer.PretrainedImageRegressor`.
    max_length : int or None, default=None
        Truncation length in tokens (None: the backbone's own, at most 512).
    pooling : {"mean", "cls"} or None, default=None
        Token pooling (None: the backbone's own; mean for sentence-transformers).

    Attributes
    ----------
    n_outputs_, y_mean_, y_scale_, y_ndim_, n_blocks_, n_frozen_blocks_, block_names_
        As for :class:`~sktransfer.PretrainedImageRegressor`.
    history_, lr_, module_
        As for :class:`~sktransfer.PretrainedImageRegressor` (``valid_r2`` per epoch).

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
        lr=5e-5,
        lr_schedule="warmup_cosine",
        max_epochs=4,
        batch_size=32,
        optimizer="adamw",
        weight_decay=0.01,
        layer_decay=None,
        unfreeze_schedule=None,
        l2sp_alpha=0.0,
        l2sp_beta=0.01,
        alpha=1.0,
        head_init="probe",
        early_stopping=True,
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
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.layer_decay = layer_decay
        self.unfreeze_schedule = unfreeze_schedule
        self.l2sp_alpha = l2sp_alpha
        self.l2sp_beta = l2sp_beta
        self.alpha = alpha
        self.head_init = head_init
        self.early_stopping = early_stopping
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
