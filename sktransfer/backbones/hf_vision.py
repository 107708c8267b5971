"""Hugging Face ``transformers`` vision encoders (ViT, DINOv2, CLIP, SigLIP, ConvNeXt, Swin).

``backbone=<dir>`` for an image estimator, where ``<dir>`` was written by
``save_pretrained`` (or is a hub id already in the local Hugging Face cache), is this
source's when its ``config.json`` names a vision ``model_type``. The split into blocks
is by family: ViT, DINOv2 and CLIP vision in :mod:`sktransfer.backbones.hf_vision_tokens`,
SigLIP vision, ConvNeXt (V1, V2) and Swin in :mod:`sktransfer.backbones.hf_vision_families`;
the chained blocks equal the model's own forward. ``pooling`` picks the CLS token, the
mean of the patch tokens or SigLIP's attention head, where the family has it.

Preprocessing comes from ``preprocessor_config.json`` (size, crop size,
``image_mean``/``image_std``, ``resample``), else the config's ``image_size`` and the
ImageNet mean/std. The saved ``source`` holds the model config as plain JSON, so
:func:`sktransfer.load` rebuilds the architecture without reading any file a model names.
"""

from __future__ import annotations

import json
import os

import torch

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

# (HFVision* lived here before hf_vision_tokens: joblib files pickled then name them here)
from sktransfer.backbones.hf_vision_tokens import (  # noqa: F401
    HFVisionEmbeddings,
    HFVisionLayer,
    HFVisionPool,
    check_token_pooling,
    split_tokens,
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


def _check_pooling(pooling, family=None, config=None):
    """Pooling names this family has (None: any family's); ValueError otherwise."""
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} or None, got {pooling!r}")
    if family in FAMILY_CLASSES:
        check_pooling(family, config, pooling)
    elif family is not None:
        check_token_pooling(pooling, family)


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
    return split_tokens(model, family, pooling, image_size)


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
        from sktransfer.backbones.huggingface import hub_snapshot

        return hub_snapshot(spec)
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
    from sktransfer.backbones.huggingface import no_progress_bar

    try:
        with no_progress_bar():
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
