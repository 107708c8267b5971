"""Hugging Face ``transformers`` vision encoders (ViT, DINOv2, CLIP, SigLIP, ConvNeXt, Swin).

``backbone=<dir>`` for an image estimator, where ``<dir>`` was written by
``save_pretrained`` (or is a hub id already in the local Hugging Face cache), is this
source's when its ``config.json`` names a vision ``model_type``:

* ``vit`` (``ViTModel``), ``dinov2`` (``Dinov2Model``): blocks ``embeddings``,
  ``layer.0`` .. ``layer.N-1``; pool = the final ``layernorm``, then the CLS token
  (the model's own ``pooler_output`` for DINOv2; ViT's extra dense+tanh pooler is
  dropped, as ``last_hidden_state[:, 0]`` is what a linear probe reads).
* ``clip_vision_model`` / ``clip`` (``CLIPVisionModel``, the image tower of a CLIP
  directory): blocks ``embeddings`` (patch embedding + ``pre_layrnorm``), ``layer.0``
  ..; pool = ``post_layernorm`` of the CLS token (the model's ``pooler_output``).

SigLIP vision, ConvNeXt (V1, V2) and Swin are split by
:mod:`sktransfer.backbones.hf_vision_families`, chosen by ``model_type``.

``pooling="mean"`` instead averages the patch tokens (the CLS token left out). Every
layer is called as the model's own ``forward`` calls it in transformers 5
(``layer(hidden_states, attention_mask=None)``), so the chained blocks equal
``model(pixel_values)``. Preprocessing comes from ``preprocessor_config.json`` (size,
crop size, ``image_mean``/``image_std``, ``resample``), else the config's
``image_size`` and the ImageNet mean/std. The saved ``source`` holds the model config
as plain JSON, so :func:`sktransfer.load` rebuilds the architecture without reading
any file a model names.
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from sktransfer.backbones.base import Backbone
from sktransfer.backbones.compat import ensure_transformers_importable
from sktransfer.backbones.hf_vision_families import (
    FAMILY_CLASSES,
    MODEL_TYPES,
    check_pooling,
    default_pooling,
    feature_dim,
    split_family,
)
from sktransfer.backbones.hf_vision_prep import (
    config_image_size,
    default_preprocessing,
    preprocessing_from_config,
)
from sktransfer.backbones.registry import BackboneSource, looks_like_hub_id, register_source

__all__ = [
    "backbone_from_hf_vision_model",
    "load_hf_vision",
    "preprocessing_from_config",
    "rebuild_hf_vision",
]

KIND = "hf_vision"
POOLINGS = ("cls", "mean", "head")  # "head": SigLIP's attention pooling
_TOKEN_POOLINGS = ("cls", "mean")  # ViT, DINOv2, CLIP
# config model_type -> family; "clip" is a whole CLIP directory (its vision tower is used);
# SigLIP, ConvNeXt and Swin are split in hf_vision_families
_FAMILIES = {"vit": "vit", "dinov2": "dinov2", "clip_vision_model": "clip", "clip": "clip"}
_FAMILIES.update(MODEL_TYPES)
_CLASS_NAMES = {
    "vit": ("ViTConfig", "ViTModel"),
    "dinov2": ("Dinov2Config", "Dinov2Model"),
    "clip": ("CLIPVisionConfig", "CLIPVisionModel"),
    **FAMILY_CLASSES,
}
_MODEL_CLASSES = {model: family for family, (_, model) in _CLASS_NAMES.items()}
_SLACK_BYTES = 64 << 20


def _classes(family):
    ensure_transformers_importable()
    import transformers

    config_name, model_name = _CLASS_NAMES[family]
    return getattr(transformers, config_name), getattr(transformers, model_name)


class HFVisionEmbeddings(nn.Module):
    """Block 0: ``(n, 3, H, W)`` pixels -> ``(n, 1 + patches, d)`` tokens.

    Parameters
    ----------
    embeddings : torch.nn.Module
        The model's ``embeddings`` (shared, not copied).
    pre_norm : torch.nn.Module, optional
        CLIP's ``pre_layrnorm``.
    image_size : int
        The size the position embeddings were trained for; other sizes interpolate them
        (DINOv2 always does so itself).
    interpolate : bool
        Whether ``embeddings`` takes ``interpolate_pos_encoding`` (ViT, CLIP).
    """

    def __init__(self, embeddings, pre_norm=None, image_size=224, interpolate=True):
        super().__init__()
        self.embeddings = embeddings
        self.pre_norm = pre_norm
        self.image_size = int(image_size)
        self.interpolate = bool(interpolate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = next(self.embeddings.parameters())
        if x.dtype != first.dtype:
            x = x.to(first.dtype)
        kwargs = {}
        if self.interpolate and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            kwargs["interpolate_pos_encoding"] = True
        x = self.embeddings(x, **kwargs)  # any layout: the patch conv follows it
        return self.pre_norm(x) if self.pre_norm is not None else x


class HFVisionLayer(nn.Module):
    """One encoder layer, ``(n, t, d) -> (n, t, d)``, called as the model calls it."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.layer(hidden, None)  # image models build no mask (create_bidirectional_mask)
        return out[0] if isinstance(out, tuple) else out


class HFVisionPool(nn.Module):
    """``(n, t, d) -> (n, d)``: the final norm and the CLS token (or the patch-token mean).

    Parameters
    ----------
    norm : torch.nn.Module
        ViT/DINOv2's ``layernorm`` (applied to every token first) or CLIP's
        ``post_layernorm`` (applied to the pooled vector).
    pooling : {"cls", "mean"}
    norm_first : bool
        True: normalise the tokens, then pool (ViT, DINOv2); False: pool, then normalise (CLIP).
    """

    def __init__(self, norm: nn.Module, pooling: str = "cls", norm_first: bool = True):
        super().__init__()
        _check_pooling(pooling, "vit")
        self.norm = norm
        self.pooling = pooling
        self.norm_first = bool(norm_first)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            hidden = self.norm(hidden)
        pooled = hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(1)
        return pooled if self.norm_first else self.norm(pooled)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, norm_first={self.norm_first}"


def _check_pooling(pooling, family=None, config=None):
    """Pooling names this family has (None: any family's); ValueError otherwise."""
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} or None, got {pooling!r}")
    if family in FAMILY_CLASSES:
        check_pooling(family, config, pooling)
    elif family is not None and pooling not in _TOKEN_POOLINGS:
        raise ValueError(
            f"pooling={pooling!r} is not available for a {family} vision encoder: "
            f"use one of {_TOKEN_POOLINGS}"
        )


def _pooling_for(family, config, pooling):
    """``pooling``, or the model's own when None (checked against the family)."""
    if pooling is None:
        pooling = default_pooling(family, config) if family in FAMILY_CLASSES else "cls"
    _check_pooling(pooling, family, config)
    return pooling


def _split(model, family, pooling):
    image_size = config_image_size(model.config)
    if family in FAMILY_CLASSES:
        return split_family(model, family, pooling, image_size)
    if family == "vit":
        layers = model.layers if hasattr(model, "layers") else model.encoder.layer
        embed = HFVisionEmbeddings(model.embeddings, None, image_size, interpolate=True)
        pool = HFVisionPool(model.layernorm, pooling, norm_first=True)
    elif family == "dinov2":
        layers = model.encoder.layer
        embed = HFVisionEmbeddings(model.embeddings, None, image_size, interpolate=False)
        pool = HFVisionPool(model.layernorm, pooling, norm_first=True)
    else:
        layers = model.encoder.layers
        embed = HFVisionEmbeddings(model.embeddings, model.pre_layrnorm, image_size, True)
        pool = HFVisionPool(model.post_layernorm, pooling, norm_first=False)
    blocks = [("embeddings", embed)]
    blocks += [(f"layer.{i}", HFVisionLayer(layer)) for i, layer in enumerate(layers)]
    return blocks, pool


def _family_of(model) -> str | None:
    return _MODEL_CLASSES.get(type(model).__name__)


def _config_json(config) -> dict:
    data = json.loads(config.to_json_string(use_diff=False))
    data.pop("auto_map", None)
    return data


def backbone_from_hf_vision_model(
    model, name: str | None = None, pooling: str | None = None, preprocessing=None
) -> Backbone:
    """Split a built vision encoder (``ViTModel``, ``Dinov2Model``, ``CLIPVisionModel``,
    ``SiglipVisionModel``, ``ConvNextModel``, ``ConvNextV2Model``, ``SwinModel``) into blocks.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        Its submodules are reused, not copied.
    name : str, optional
        Name shown to users; default the class name.
    pooling : {"cls", "mean", "head"} or None, default=None
        None: the model's own pooling (the CLS token for ViT / DINOv2 / CLIP, the
        attention head for SigLIP, the average for ConvNeXt / Swin); ``"mean"``: the mean
        of the patch tokens; ``"cls"`` / ``"head"`` only where the model has one.
    preprocessing : ImagePreprocessing, optional
        Default: the config's ``image_size`` with the ImageNet mean/std.

    Returns
    -------
    Backbone
        ``modality="image"``, ``source={"kind": "hf_vision", "model_type", "config",
        "pooling", ...}`` (the config as plain JSON, enough to rebuild the network).
    """
    family = _family_of(model)
    if family is None:
        raise ValueError(
            f"{type(model).__name__} is not a supported vision encoder ({sorted(_MODEL_CLASSES)})"
        )
    config = model.config
    pooling = _pooling_for(family, config, pooling)
    model.eval()
    blocks, pool = _split(model, family, pooling)
    name = name or type(model).__name__
    return Backbone(
        name=name,
        modality="image",
        blocks=blocks,
        pool=pool,
        feature_dim=feature_dim(family, config),
        preprocessing=preprocessing or default_preprocessing(config),
        source={
            "kind": KIND,
            "name": name,
            "model_type": config.model_type,
            "config": _config_json(config),
            "pooling": pooling,
        },
    )


def _read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _directory(spec: str) -> str | None:
    if os.path.isdir(spec):
        return spec
    if looks_like_hub_id(spec):
        from sktransfer.backbones.huggingface import _hub_snapshot

        return _hub_snapshot(spec)
    return None


def _claims(spec: str, modality: str) -> bool:
    if modality != "image":
        return False
    if os.path.isdir(spec):
        return os.path.isfile(os.path.join(spec, "config.json"))
    if not looks_like_hub_id(spec):
        return False
    directory = _directory(spec)
    return directory is not None and os.path.isfile(os.path.join(directory, "config.json"))


def load_hf_vision(name_or_path, weights="default", pooling: str | None = None) -> Backbone:
    """Load a local Hugging Face vision encoder as an image :class:`Backbone`.

    Parameters
    ----------
    name_or_path : str or path-like
        A ``save_pretrained`` directory of a ViT, DINOv2, CLIP vision (or whole CLIP),
        SigLIP vision (or whole SigLIP), ConvNeXt (V1, V2) or Swin model, or a hub id
        already in the local cache. Nothing is downloaded.
    weights : "default" or None, default="default"
        ``"default"``: the directory's weights; None: its architecture, randomly initialised.
    pooling : {"cls", "mean", "head"} or None, default=None
        None: the model's own pooling (see :func:`backbone_from_hf_vision_model`).

    Returns
    -------
    Backbone

    Raises
    ------
    ValueError
        Not a directory with a ``config.json`` of a supported vision ``model_type``.
    """
    _check_pooling(pooling)
    spec = os.fspath(name_or_path)
    directory = _directory(spec)
    config_file = os.path.join(directory, "config.json") if directory else None
    if config_file is None or not os.path.isfile(config_file):
        raise ValueError(f"{spec!r} is not a local Hugging Face model directory or cached hub id")
    model_type = _read_json(config_file).get("model_type")
    family = _FAMILIES.get(model_type)
    if family is None:
        raise ValueError(
            f"{spec!r} holds a {model_type!r} model; image backbones from Hugging Face "
            f"directories are the vision encoders {sorted(_FAMILIES)} (a text model "
            "directory goes to a text estimator)"
        )
    if weights not in ("default", None):
        raise ValueError(f"weights must be 'default' or None for {spec!r}, got {weights!r}")
    config_cls, model_cls = _classes(family)
    from sktransfer.backbones.huggingface import _no_progress_bar

    try:
        with _no_progress_bar():
            if weights is None:
                model = model_cls(config_cls.from_pretrained(directory))
            else:
                model = model_cls.from_pretrained(directory)
    except Exception as exc:
        raise ValueError(
            f"{spec!r} is not a loadable {model_type} model directory: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    processor_file = os.path.join(directory, "preprocessor_config.json")
    processor = _read_json(processor_file) if os.path.isfile(processor_file) else None
    prep = preprocessing_from_config(processor, model.config)
    backbone = backbone_from_hf_vision_model(model, spec, pooling, prep)
    backbone.source["path"] = spec
    backbone.source["weights"] = weights
    return backbone


def rebuild_hf_vision(source: dict, arch: dict) -> Backbone:
    """The architecture a saved ``{"kind": "hf_vision"}`` source describes, random weights.

    Only the supported config classes are built (from the JSON in ``source``, never from
    a file it names), and the size is checked on the meta device against
    ``arch["weight_bytes"]`` when given.
    """
    family = _FAMILIES.get(source.get("model_type"))
    raw = source.get("config")
    if family is None or not isinstance(raw, dict):
        raise ValueError(f"the saved source {source!r:.200} names no supported vision encoder")
    config_cls, model_cls = _classes(family)
    raw = {k: v for k, v in raw.items() if k not in ("auto_map", "architectures")}
    config = config_cls.from_dict(raw)
    have = arch.get("weight_bytes")
    if have is not None:
        with torch.device("meta"):
            probe = model_cls(config)
        need = sum(p.numel() * p.element_size() for p in probe.parameters())
        del probe
        if need > 2 * int(have) + _SLACK_BYTES:
            raise ValueError(
                f"the saved config describes a {need}-byte network, but the file holds only "
                f"{have} bytes of weights; refusing to allocate it"
            )
    model = model_cls(config).eval()
    prep_name = source.get("name") or type(model).__name__
    backbone = backbone_from_hf_vision_model(model, prep_name, source.get("pooling"))
    backbone.source = dict(source)
    return backbone


register_source(
    BackboneSource(
        kind=KIND,
        modality="image",
        install="included (transformers is a dependency)",
        weights="a local save_pretrained directory (ViT, DINOv2, CLIP / SigLIP vision, "
        "ConvNeXt, Swin), or a hub id already in the Hugging Face cache (HF_HOME); "
        "never downloaded",
        spec="a vision model directory or cached hub id, or a ViTModel / Dinov2Model / "
        "CLIPVisionModel / SiglipVisionModel / ConvNextModel / ConvNextV2Model / SwinModel "
        "object",
        claims=_claims,
        load=lambda spec, weights="default": load_hf_vision(spec, weights),
        claims_module=lambda module: _family_of(module) is not None,
        from_module=backbone_from_hf_vision_model,
        rebuild=rebuild_hf_vision,
    )
)
