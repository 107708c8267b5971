"""Frozen-feature transformers shared by ``ImageEmbedder`` and ``TextEmbedder``."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from sktransfer._estimator.outputs import BlockOutputsMixin
from sktransfer._estimator.ownership import OwnedModuleMixin, OwnedPreprocessingMixin
from sktransfer._estimator.pickling import PicklableModulesMixin
from sktransfer.backbones import resolve_backbone
from sktransfer.cache import check_cache_dir, get_config
from sktransfer.freezing import TransferNet
from sktransfer.runtime.batch_tuning import inference_loader
from sktransfer.runtime.batches import Collate
from sktransfer.runtime.device import resolve_device, runs_channels_last, set_layout


def _on(tensor, device) -> bool:
    """Whether ``tensor`` lies on ``device`` (``cuda`` without an index: any CUDA device)."""
    where = tensor.device
    return where.type == device.type and device.index in (None, where.index)


class EmbedderBase(
    OwnedModuleMixin,
    OwnedPreprocessingMixin,
    BlockOutputsMixin,
    PicklableModulesMixin,
    TransformerMixin,
    BaseEstimator,
):
    """Backbone features (all blocks frozen, pooled) as a ``(n, d)`` float32 array.

    ``fit`` only loads the backbone; nothing is learned from ``X``. ``transform`` reads the
    block outputs through the one cache path of every estimator
    (:class:`~sktransfer._estimator.outputs.BlockOutputsMixin`): the same namespace as a
    frozen classifier's features, so either one's pass serves the other.
    """

    _modality = None
    verbose = 0  # embedders take no verbose parameter: no progress bars

    def _weights_param(self):
        return "default"

    def _runtime(self, device, kind):
        """fp32 and the classifiers' layout: one cache entry for both."""
        return "fp32", runs_channels_last(kind, device)

    def _loader(self, dataset, kind, prep, device, collate=None):
        collate = Collate(self._collate(kind, prep)) if collate is None else collate
        return inference_loader(dataset, self.batch_size, kind, device, prep, collate)

    def fit(self, X, y=None):
        """Load the backbone (``X`` is validated, not learned from)."""
        for attr in [a for a in vars(self) if a.endswith("_") and not a.startswith("__")]:
            delattr(self, attr)  # a failed fit leaves an unfitted embedder
        self._validate_params()
        device = resolve_device(self.device)  # an unknown device fails before any work
        if get_config()["cache"]:
            check_cache_dir(self.cache_dir or get_config()["cache_dir"])
        items, kind = self._check_X(X, fitting=True)
        backbone = resolve_backbone(self.backbone, self._modality, weights=self._weights_param())
        prep = self._preprocessing(backbone)
        blocks = [m for _, m in backbone.blocks]
        net = TransferNet(
            blocks, [n for n, _ in backbone.blocks], backbone.pool, nn.Identity(), len(blocks)
        )
        net.eval()
        fitted = {
            "module_": net,
            "preprocessing_": prep,
            "backbone_name_": backbone.name,
            "backbone_source_": dict(backbone.source),
            "n_blocks_": backbone.n_blocks,
            "input_kind_": kind,
            "n_features_out_": backbone.feature_dim,
        }
        try:
            vars(self).update(fitted)
            if self.n_features_out_ is None:  # a user module: one uncached forward tells
                # (and materialises lazy modules before any digest of their weights)
                # lazy layers initialise from the global generator's current state, which
                # stays where it was (an embedder has no random_state: as scikit-learn's None)
                net = self._net_on(device, kind)
                with torch.random.fork_rng(devices=[]):
                    self.n_features_out_ = self._feature_dim(net, items, kind, prep, device)
        except BaseException:
            for attr in fitted:
                vars(self).pop(attr, None)
            raise
        return self

    def transform(self, X):
        """Pooled backbone features, float32 of shape ``(n_samples, n_features_out_)``.

        Features come from the shared content-addressed cache: a second
        ``transform`` of the same samples runs no backbone forward.
        """
        check_is_fitted(self)
        items, kind = self._check_X(X, fitting=False)
        device = resolve_device(self.device)
        net = self._net_on(device, kind)
        rows = self._outputs(net, items, kind, self._prep(), device, stop=len(net.blocks))
        return np.ascontiguousarray(np.stack(rows), dtype=np.float32)

    def _net_on(self, device, kind):
        """The network on ``device``, in the layout ``kind`` runs in."""
        net = self._net()
        if any(not _on(p, device) for p in net.parameters()):
            net = self.module_ = net.to(device)  # (else skip .to()'s walk of every submodule)
        set_layout(net, self._runtime(device, kind)[1])
        return net

    def get_feature_names_out(self, input_features=None):
        """``<prefix>0 .. <prefix>{d-1}``; the prefix names the modality."""
        check_is_fitted(self)
        prefix = f"{self._modality}_embedding"
        return np.asarray([f"{prefix}{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # a user nn.Module backbone of an image embedder takes numeric vectors (n, d) too
        tags.input_tags.two_d_array = self._modality == "image" and isinstance(
            self.backbone, nn.Module
        )
        tags.input_tags.three_d_array = self._modality == "image"
        tags.input_tags.string = self._modality == "text"
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = ["float32"]  # the network's dtype, always
        return tags
