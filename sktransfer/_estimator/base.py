"""Shared estimator base: the fit/predict skeleton of every sktransfer estimator.

inputs -> backbone blocks -> cache -> head / training, for any target: what differs
between single-label, multi-label and regression fits (encoding ``y``, the frozen head
solver, the loss, the validation metric, the outputs) is asked of the fit's target piece
(:mod:`sktransfer._estimator.targets`). The modality classes (``image.py``, ``text.py``)
only say how raw input becomes a dataset and which preprocessing overrides apply; the
family bases (:mod:`.classifier`, :mod:`.regressor`) add ``predict``/``predict_proba``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn

from sktransfer._estimator.fit_paths import FitPathsMixin
from sktransfer._estimator.incremental import IncrementalMixin
from sktransfer._estimator.outputs import (
    BlockOutputsMixin,
    has_lazy,
    run_in_length_order,
)
from sktransfer._estimator.ownership import OwnedModuleMixin, OwnedPreprocessingMixin
from sktransfer._estimator.params import (
    COMMON_CONSTRAINTS,
    check_finite_rows,
    check_weights,
)
from sktransfer._estimator.pickling import PicklableModulesMixin
from sktransfer._estimator.state import FitState
from sktransfer.backbones import resolve_backbone, warn_if_unsplit
from sktransfer.cache import check_cache_dir, get_config
from sktransfer.freezing import effective_freeze_depth, resolve_freeze_depth
from sktransfer.runtime.batch_tuning import inference_loader
from sktransfer.runtime.batches import Collate
from sktransfer.runtime.device import (
    cudnn_autotune,
    resolve_device,
    resolve_precision,
    runs_channels_last,
)
from sktransfer.runtime.process_group import world_device
from sktransfer.runtime.rng import borrowed_generators
from sktransfer.runtime.runners import predict_logits


class PretrainedEstimatorBase(
    IncrementalMixin,
    FitPathsMixin,
    OwnedModuleMixin,
    OwnedPreprocessingMixin,
    BlockOutputsMixin,
    PicklableModulesMixin,
    BaseEstimator,
):
    """Fit/predict skeleton shared by every image and text estimator with a head."""

    _modality = None  # "image" | "text"
    _is_sktransfer_estimator = True
    _parameter_constraints: dict = dict(COMMON_CONSTRAINTS)
    _targets: tuple = ()  # Target classes of the family, tried in order on y

    # ------------------------------------------------------------------ modality hooks
    def _check_X(self, X, *, fitting):  # pragma: no cover - abstract
        """Return ``(items, kind)``; ``kind`` is the modality or ``"vector"``."""
        raise NotImplementedError

    def _make_dataset(
        self, items, kind, prep, *, training, view=None, index=None
    ):  # pragma: no cover - abstract
        """``index``: the caller's index of each item, for error messages."""
        raise NotImplementedError

    def _collate(self, kind, prep):  # pragma: no cover - abstract
        raise NotImplementedError

    def _preprocessing(self, backbone):  # pragma: no cover - abstract
        raise NotImplementedError

    def _tta_views(self, kind):
        """Deterministic extra test-time views (PIL -> PIL); images only."""
        return []

    # ------------------------------------------------------------------ helpers
    def _seed(self):
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _target_for(self, y):
        """The target piece that reads ``y`` (the first of ``_targets`` that accepts it)."""
        return next(t for t in self._targets if t.accepts(y))()

    @property
    def _target(self):
        """The fitted estimator's target piece (``target_type_``)."""
        name = getattr(self, "target_type_", self._targets[-1].name)
        for target in self._targets:
            if target.name == name:
                return target()
        known = ", ".join(repr(t.name) for t in self._targets)
        raise ValueError(f"target_type_ is {name!r}; a {type(self).__name__} knows {known}")

    def _reset(self):
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("__")]:
            delattr(self, attr)

    def _resolve_backbone(self, share=False):
        return resolve_backbone(
            self.backbone, self._modality, weights=self._weights_param(), share=share
        )

    def _shares_template(self, device):
        """Frozen on the CPU: the registry's loaded backbone is used as is (never trained or
        moved by the fit), not deep-copied for every fit."""
        return self._freeze_depth() == "all" and device.type == "cpu"

    def _freeze_depth(self):
        """``freeze_depth`` with ``"auto"`` resolved by ``objective``."""
        return effective_freeze_depth(self.freeze_depth, getattr(self, "objective", None))

    def _module_on(self, device):
        """``module_`` on ``device``; a frozen model sharing the registry's template is copied
        first, so that moving it never moves the template under other estimators."""
        net = self._net()
        if getattr(net, "shares_template", False):
            if all(p.device == device for p in net.parameters()):
                return net  # already there: skip .to()'s walk over every submodule
            net = copy.deepcopy(net)
            net.shares_template = False
            self.module_ = net
        return net.to(device)

    def _weights_param(self):
        return "default"

    def _export_backbone(self):
        """A fresh copy of the fitted backbone (blocks + pool) for source->target transfer."""
        from sktransfer.backbones import Backbone

        check_is_fitted(self)
        net = copy.deepcopy(self._net()).cpu()
        return Backbone(
            name=f"{self.backbone_name_} (fine-tuned)",
            modality=self.modality_,
            blocks=list(zip(net.block_names, net.blocks)),
            pool=net.pool,
            feature_dim=self.n_features_out_,
            preprocessing=copy.deepcopy(self._prep()),
            source={"kind": "estimator", "name": self.backbone_name_},
        )

    def _runtime(self, device, kind):
        """``(precision, channels_last)`` for this device and input kind."""
        return resolve_precision(self.precision, device), runs_channels_last(kind, device)

    def _loader(self, dataset, kind, prep, device, collate=None):
        """An inference loader: micro-batches of ``inference_batch_size`` (``None``: the
        device's size, :func:`~sktransfer.runtime.microbatch.inference_batch_size`,
        balanced over the dataset, calibrated per backbone for CPU images,
        :mod:`sktransfer.runtime.batch_tuning`), not the training ``batch_size``."""
        collate = Collate(self._collate(kind, prep)) if collate is None else collate
        return inference_loader(dataset, self.inference_batch_size, kind, device, prep, collate,
                                num_workers=self.num_workers)  # fmt: skip

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, sample_weight=None):
        """Fit the head (and the unfrozen blocks) on ``X, y``.

        Parameters
        ----------
        X : list, array, Series or single-column DataFrame
            Images — file paths, encoded images (bytes, bytearray, memoryview, binary
            file objects), PIL images, uint8 or [0, 1] float arrays of any size
            (:func:`sktransfer.data.check_images`) — or texts (``str``). With a
            ``torch.nn.Module`` image backbone, a 2-D numeric array is passed to it as
            vectors.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Classifiers: one label of any dtype per sample, or a 2-D 0/1 indicator
            matrix (multi-label; ``classes_`` is then ``arange(n_outputs)``).
            Regressors: real values, one column per output.
        sample_weight : array-like of shape (n_samples,), default=None
            Per-sample weights applied to the head's objective and the loss (a
            classifier multiplies them by ``class_weight``); non-negative.

        Returns
        -------
        self
        """
        warm = self._warm_start_from() if self.warm_start else None
        self._reset()  # a failed fit (or Ctrl-C) leaves an unfitted estimator
        self._validate_params()
        state = self._fit_state(X, y, sample_weight, previous=warm and warm[1])
        state.warm_net = warm and warm[0]
        try:
            with self._generators(state), cudnn_autotune(state.device):
                net, history, info = self._fit_net(state)
        except BaseException:  # KeyboardInterrupt too: it propagates, nothing half-fitted stays
            self._reset()
            raise
        self._set_fitted(state, net, history, info)
        return self

    def _warm_start_from(self):
        """``warm_start``: ``(the fitted network to train on, the fitted target attributes)``,
        or None when unfitted. The network is taken over (a copy when it is the registry's
        shared template, which is never trained)."""
        if not hasattr(self, "module_"):
            return None
        net = self._net()
        if getattr(net, "shares_template", False):
            net = copy.deepcopy(net)
            net.shares_template = False
        keys = ("classes_", "y_mean_", "y_scale_", "y_ndim_")
        return net, {k: getattr(self, k) for k in keys if hasattr(self, k)}

    def _generators(self, state):
        """The global RNGs seeded and restored around the fit (:mod:`sktransfer.runtime.rng`)."""
        modules = [m for _, m in state.backbone.blocks] + [state.backbone.pool]
        draws = not state.frozen or any(has_lazy(m) for m in modules)  # else: no lock
        return borrowed_generators(state.seed, state.device, draws=draws)

    def _fit_state(self, X, y, sample_weight, previous=None, target=None, stacklevel=4):
        """Validate the fit's inputs and resolve its backbone: the :class:`FitState`."""
        device = world_device(resolve_device(self.device))  # (torchrun: cuda:LOCAL_RANK)
        if get_config()["cache"]:
            check_cache_dir(self.cache_dir or get_config()["cache_dir"])
        items, kind = self._check_X(X, fitting=True)
        target = self._target_for(y) if target is None else target
        sw = check_weights(sample_weight, len(items))
        encoded = target.encode(self, y, len(items), sw, previous=previous)
        if encoded.weights is not None:
            with np.errstate(over="ignore"):  # (refused below, by name)
                sw = sw * encoded.weights
                total = sw.sum()
            if not total > 0:
                raise ValueError("sample_weight times class_weight is 0 for every sample")
            if not np.isfinite(total):
                raise ValueError(
                    "sample_weight times class_weight sums to inf in float64; divide the "
                    "weights by a common factor"
                )
        backbone = self._resolve_backbone(share=self._shares_template(device))
        warn_if_unsplit(backbone, self._freeze_depth(), stacklevel=stacklevel)  # (the caller's)
        return FitState(
            items=items, kind=kind, target=target, y=encoded, sample_weight=sw,
            backbone=backbone, prep=self._preprocessing(backbone), device=device,
            n_frozen=resolve_freeze_depth(self._freeze_depth(), backbone.n_blocks),
            seed=self._seed(),
        )  # fmt: skip

    def _set_fitted(self, state, net, history, info):
        """The fitted attributes of a fit (or a ``partial_fit`` call) that succeeded."""
        backbone = state.backbone
        self.module_ = net
        for key, value in state.y.attrs.items():
            setattr(self, key, value)
        self.target_type_ = state.target.name
        self.n_outputs_ = state.y.n_outputs
        self.n_blocks_ = backbone.n_blocks
        self.n_frozen_blocks_ = state.n_frozen
        self.block_names_ = [name for name, _ in backbone.blocks]
        self.backbone_name_ = backbone.name
        self.backbone_source_ = dict(backbone.source)
        self.preprocessing_ = state.prep
        self.modality_ = self._modality
        self.input_kind_ = state.kind
        self.n_features_out_ = net.head.in_features
        self.history_ = history
        for key, value in info.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ predict
    def _items(self, X):
        check_is_fitted(self)
        items, kind = self._check_X(X, fitting=False)
        if kind != self.input_kind_:
            raise ValueError(f"this model was fitted on {self.input_kind_} input, got {kind} input")
        return items, kind

    def _logits(self, items, kind, view=None):
        device = resolve_device(self.device)
        net, prep = self._module_on(device), self._prep()
        precision, channels_last = self._runtime(device, kind)
        k = net.n_frozen if view is None and self._use_boundary_cache(net.n_frozen) else 0
        if view is None and net.n_frozen == len(net.blocks):
            k = net.n_frozen  # (uncached too: the float64 head below, whatever the batch)
        if k == len(net.blocks):  # frozen: (cached) features -> head
            rows = self._outputs(net, items, kind, prep, device, stop=k, desc="prediction")
            with torch.inference_mode():
                feats = torch.from_numpy(np.stack(rows))
                head = net.head
                if isinstance(head, nn.Linear):
                    # float64 on the CPU: a row's logits do not depend on the batch it is in
                    # (float32 GEMM blocking moves them by ~1e-7), and n x d x k is cheap
                    w, b = head.weight.double().cpu(), head.bias.double().cpu()
                    return nn.functional.linear(feats.double(), w, b).numpy()
                return head(feats.to(device)).float().cpu().numpy()
        collate = Collate(self._suffix_collate(kind, prep, k, len(net.blocks)))

        def run(order):  # texts longest first, logits back in input order
            if view is None:
                dataset = self._suffix_dataset(
                    net, items, order, kind, prep, device, k, desc="prediction: activations"
                )
            else:  # an augmented view (images): never from the cache
                dataset = self._make_dataset(items, kind, prep, training=False, view=view)
            loader = self._loader(dataset, kind, prep, device, collate)
            return predict_logits(
                net, loader, device, start=k, precision=precision, channels_last=channels_last,
                verbose=self.verbose,
            )  # fmt: skip

        return run_in_length_order(items, kind, prep, run)

    def _predict_outputs(self, X):
        """``output_module(logits)`` of the fitted target (probabilities, values), float64;
        with ``tta=n`` (images) averaged over the image and ``n`` deterministic views."""
        items, kind = self._items(X)
        views = [None] + self._tta_views(kind)
        module = self._target.output_module(self)
        total = 0.0
        for view in views:
            logits = self._logits(items, kind, view)
            check_finite_rows(logits, "the network's output")
            with torch.inference_mode():
                total = total + module(torch.from_numpy(logits).double()).numpy()
        return total / len(views)

    def export_onnx(self, path, *, opset=17):
        """Write the fitted network (preprocessed input -> class probabilities) as ONNX.

        See :func:`sktransfer.deploy.export_onnx`.
        """
        from sktransfer.deploy import export_onnx

        return export_onnx(self, path, opset=opset)

    def quantize(self, method="dynamic"):
        """An int8 dynamically quantised copy for CPU scoring.

        See :func:`sktransfer.deploy.quantize_dynamic`.
        """
        if method != "dynamic":
            raise ValueError(f"method must be 'dynamic', got {method!r}")
        from sktransfer.deploy import quantize_dynamic

        return quantize_dynamic(self)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        vector = isinstance(self.backbone, nn.Module) and self._modality == "image"
        tags.input_tags.two_d_array = vector
        tags.input_tags.three_d_array = self._modality == "image"
        tags.input_tags.string = self._modality == "text"
        tags.non_deterministic = self.random_state is None
        return tags
