"""Image modality: ``PretrainedImageClassifier``, ``PretrainedImageRegressor`` and
``ImageEmbedder``."""

from __future__ import annotations

import copy
import numbers
import os

import numpy as np
from scipy import sparse
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from sktransfer._estimator.classifier import CLASSIFIER_CONSTRAINTS, PretrainedClassifierBase
from sktransfer._estimator.docs import documented
from sktransfer._estimator.embedder import EmbedderBase
from sktransfer._estimator.regressor import REGRESSOR_CONSTRAINTS, PretrainedRegressorBase
from sktransfer.inputs.augment import PRESETS, make_augment, tta_views
from sktransfer.inputs.images import ImageDataset, check_images, is_encoded
from sktransfer.inputs.pixels import StackPixels
from sktransfer.runtime.batches import RowsDataset

_EMBEDDER_CONSTRAINTS = {
    "backbone": "no_validation",
    "weights": [None, str, os.PathLike],
    "image_size": [None, Interval(numbers.Integral, 8, None, closed="left")],
    "batch_size": [None, Interval(numbers.Integral, 1, None, closed="left")],
    "device": [str],
    "cache_dir": [None, str, os.PathLike],
}
_IMAGE_CONSTRAINTS = {  # the estimators with a head: also augmentation and BatchNorm
    **_EMBEDDER_CONSTRAINTS,
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],  # training
    "inference_batch_size": [None, Interval(numbers.Integral, 1, None, closed="left")],
    "augment": [None, StrOptions(set(PRESETS)), callable],
    "tta": [None, Interval(numbers.Integral, 0, None, closed="left")],
    "train_bn": ["boolean"],
}


class _ImageInput:
    """Image input handling shared by the classifier, the regressor and the embedder."""

    # the embedder takes neither (it never trains, and has no test-time views)
    augment = None
    tta = None
    _modality = "image"

    def _weights_param(self):
        return self.weights

    def _is_vector_input(self, X):
        if not isinstance(self.backbone, nn.Module):
            return False
        if sparse.issparse(X) or hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:
            return True
        if isinstance(X, (list, tuple)) and X and (
            isinstance(X[0], (str, os.PathLike)) or is_encoded(X[0])
        ):
            return False  # paths or encoded images
        try:
            arr = np.asarray(X)
        except (TypeError, ValueError):
            return False
        if arr.ndim == 2:  # (n_samples, n_features): never a batch of images
            return True
        return arr.ndim == 1 and len(arr) > 0 and arr.dtype.kind not in "OSU"

    def _check_X(self, X, *, fitting):
        fitted_kind = None if fitting else getattr(self, "input_kind_", None)
        if fitted_kind == "vector" or (fitted_kind is None and self._is_vector_input(X)):
            from sklearn.utils.validation import validate_data

            arr = validate_data(self, X, reset=fitting, dtype=np.float32)
            return list(arr), "vector"
        return check_images(X), "image"

    def _make_dataset(self, items, kind, prep, *, training, view=None, index=None):
        if kind == "vector":
            return RowsDataset(items)
        transform = view
        if training:
            transform = make_augment(self.augment, prep)
        return ImageDataset(items, prep, transform=transform, normalize=False, index=index)

    def _tta_views(self, kind):
        return tta_views(self.tta) if kind == "image" and self.tta else []

    def _collate(self, kind, prep):
        # uint8 pixels through workers, pinned memory and the copy; normalised on the device
        return StackPixels(prep.mean, prep.std) if kind == "image" else None

    def _preprocessing(self, backbone):
        prep = copy.deepcopy(backbone.preprocessing)
        if self.image_size is not None:
            if prep.resize_size is not None:
                prep.resize_size = int(round(self.image_size * prep.resize_size / prep.image_size))
            prep.image_size = int(self.image_size)
        return prep


@documented
class PretrainedImageClassifier(_ImageInput, PretrainedClassifierBase):
    """Image classifier on a pretrained backbone.

    {parameters}

    Attributes
    ----------
    classes_ : ndarray
        Labels seen in ``fit`` (``predict`` returns these).
    n_blocks_ : int
        Number of freezable backbone blocks.
    n_frozen_blocks_ : int
    block_names_ : list of str
    history_ : list of dict
        Per-epoch ``train_loss``, ``valid_loss``, ``valid_acc``, ``lr``, ``dur``;
        ``best`` marks the epoch whose weights were kept; ``phase`` ("head" or
        "all") with ``unfreeze_schedule``.
    lr_ : float or None
        The learning rate used (``lr``, or the LR range test's pick).
    lr_find_ : dict
        With ``lr="auto"``: the range test's ``lrs`` and raw ``losses``.
    n_trainable_params_ : int
        Parameters the fit trained: the head's when frozen; with fine-tuning also
        the unfrozen blocks' (and the pool's); with ``adapter="lora"`` the
        adapters' (not the frozen base weights).
    lora_adapters_ : dict
        With ``adapter="lora"`` only: ``r``, ``lora_alpha``, ``lora_dropout``, the
        adapted layers (``target_modules``, names in ``module_``), ``peft_version``
        and ``tensors`` (each layer's ``lora_A``/``lora_B`` weights, CPU), already
        merged into ``module_``.
    module_ : sktransfer.freezing.TransferNet

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sktransfer import PretrainedImageClassifier
    >>> cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> X = np.random.RandomState(0).randint(0, 255, (20, 16, 16, 3), dtype=np.uint8)
    >>> y = ["cat", "dog"] * 10
    >>> clf = PretrainedImageClassifier(cnn, image_size=16, random_state=0).fit(X, y)
    >>> clf.predict(X[:2]).shape
    (2,)
    """

    _parameter_constraints = {**CLASSIFIER_CONSTRAINTS, **_IMAGE_CONSTRAINTS}

    def __init__(
        self,
        backbone=None,
        *,
        freeze_depth="all",
        adapter=None,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.0,
        lr=1e-4,
        lr_schedule="warmup_cosine",
        max_epochs=10,
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
        weights="default",
        image_size=None,
        augment=None,
        tta=0,
        train_bn=False,
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
        self.weights = weights
        self.image_size = image_size
        self.augment = augment
        self.tta = tta
        self.train_bn = train_bn


@documented
class PretrainedImageRegressor(_ImageInput, PretrainedRegressorBase):
    """Image regressor on a pretrained backbone: ``y`` of shape ``(n,)`` or ``(n, k)``.

    Frozen mode (the default) is ridge regression on the backbone's pooled features,
    solved exactly (``sklearn.linear_model.Ridge(alpha)``'s objective, with
    ``sample_weight``; ``alpha="auto"``, the default, picks the strength by
    leave-one-out as ``RidgeCV`` does); fine-tuning minimises the weighted mean squared error on
    targets standardised per output (``y_mean_``, ``y_scale_``), from that ridge
    head (``head_init="probe"``). ``predict`` returns values in the units of ``y``;
    ``score`` is R².

    {parameters}

    Attributes
    ----------
    n_outputs_ : int
        Number of targets (columns of ``y``; 1 for a 1-D ``y``).
    y_mean_ : ndarray of shape (n_outputs_,)
        Per-output mean of ``y`` over the training set.
    y_scale_ : ndarray of shape (n_outputs_,)
        Per-output standard deviation of ``y`` (1 for a constant output); the
        network predicts ``(y - y_mean_) / y_scale_``.
    y_ndim_ : int
        1 when ``fit`` saw a 1-D ``y`` (``predict`` then returns shape ``(n,)``).
    n_blocks_ : int
        Number of freezable backbone blocks.
    n_frozen_blocks_ : int
    block_names_ : list of str
    history_ : list of dict
        Per-epoch ``train_loss`` (weighted MSE on standardised targets),
        ``valid_loss``, ``valid_r2``, ``lr``, ``dur``; ``best`` marks the epoch
        whose weights were kept; ``phase`` ("head" or "all") with
        ``unfreeze_schedule``.
    lr_ : float or None
        The learning rate used (``lr``, or the LR range test's pick).
    lr_find_ : dict
        With ``lr="auto"``: the range test's ``lrs`` and raw ``losses``.
    alpha_ : float
        The ridge strength of the head (``alpha``, or ``"auto"``'s leave-one-out
        pick), when the head is a ridge solution: frozen mode and the contrastive
        objective. (A fine-tuned head is trained, not solved.)
    n_trainable_params_ : int
        Parameters the fit trained: the head's when frozen; with fine-tuning also
        the unfrozen blocks' (and the pool's); with ``adapter="lora"`` the
        adapters' (not the frozen base weights).
    lora_adapters_ : dict
        With ``adapter="lora"`` only: ``r``, ``lora_alpha``, ``lora_dropout``, the
        adapted layers (``target_modules``, names in ``module_``), ``peft_version``
        and ``tensors`` (each layer's ``lora_A``/``lora_B`` weights, CPU), already
        merged into ``module_``.
    module_ : sktransfer.freezing.TransferNet

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sktransfer import PretrainedImageRegressor
    >>> _ = torch.manual_seed(0)
    >>> cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> rng = np.random.RandomState(0)
    >>> y = rng.uniform(0, 10, 20)  # image brightness
    >>> X = (rng.uniform(0, 25.5, (20, 16, 16, 3)) * y[:, None, None, None]).astype(np.uint8)
    >>> reg = PretrainedImageRegressor(cnn, image_size=16, alpha=0.1, random_state=0).fit(X, y)
    >>> reg.predict(X[:2]).shape
    (2,)
    >>> reg.score(X, y) > 0.9
    True
    """

    _parameter_constraints = {**REGRESSOR_CONSTRAINTS, **_IMAGE_CONSTRAINTS}

    def __init__(
        self,
        backbone=None,
        *,
        freeze_depth="all",
        adapter=None,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.0,
        lr=1e-4,
        lr_schedule="warmup_cosine",
        max_epochs=10,
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
        weights="default",
        image_size=None,
        augment=None,
        tta=0,
        train_bn=False,
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
        self.weights = weights
        self.image_size = image_size
        self.augment = augment
        self.tta = tta
        self.train_bn = train_bn


@documented
class ImageEmbedder(_ImageInput, EmbedderBase):
    """Frozen, pooled backbone features of images: ``transform(X) -> (n, d) float32``.

    {parameters}

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sktransfer import ImageEmbedder
    >>> cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> X = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    >>> ImageEmbedder(cnn, image_size=16).fit_transform(X).shape
    (4, 8)
    """

    _parameter_constraints = dict(_EMBEDDER_CONSTRAINTS)

    def __init__(
        self,
        backbone=None,
        *,
        batch_size=None,
        device="auto",
        cache_dir=None,
        weights="default",
        image_size=None,
    ):
        self.backbone = backbone
        self.batch_size = batch_size
        self.device = device
        self.cache_dir = cache_dir
        self.weights = weights
        self.image_size = image_size
