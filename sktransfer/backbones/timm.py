"""timm image models as :class:`Backbone` objects (``backbone="timm:<model_name>"``).

Blocks follow timm's own stage structure (the ``feature_info`` of the model), so
``freeze_depth`` counts what timm calls stages; :mod:`sktransfer.backbones.timm_blocks`
lists the split of each family (ResNet, EfficientNet, MobileNetV3, VisionTransformer,
stem + stages models, and one block for everything else).

Every model is created with ``num_classes=0`` (timm drops its classifier), so ``pool``
returns exactly what timm's ``forward_head(x, pre_logits=True)`` returns.

Preprocessing comes from ``timm.data.resolve_data_config``: input size, mean/std,
interpolation and ``crop_pct`` (resize to ``image_size / crop_pct``, centre crop).
timm is imported lazily; ``pip install "sktransfer[timm]"``.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from sktransfer.backbones import timm_blocks
from sktransfer.backbones.base import Backbone
from sktransfer.backbones.compat import import_torchvision
from sktransfer.backbones.registry import BackboneSource, register_source

# (the block classes lived here before timm_blocks: joblib files pickled then name them here)
from sktransfer.backbones.timm_blocks import (  # noqa: F401
    HeadDropout,
    TimmHeadPool,
    TimmSequence,
    TimmViTEmbed,
    TimmViTPool,
    TimmWholeModel,
)
from sktransfer.inputs.preprocessing import ImagePreprocessing

__all__ = ["PREFIX", "backbone_from_timm_module", "is_timm_module", "load_timm", "rebuild_timm"]

PREFIX = "timm:"
_INTERPOLATIONS = {"bilinear", "bicubic", "nearest"}
# kwargs a saved file may pass back to timm.create_model (plain ints only)
_REBUILD_KWARGS = ("img_size",)
_SLACK_BYTES = 64 << 20


def import_timm():
    """Import timm (after making torchvision importable: timm imports it)."""
    try:
        import_torchvision()
    except (ImportError, RuntimeError):
        pass  # timm reports its own error below
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            'timm backbones need the timm package: pip install "sktransfer[timm]" '
            "(or pip install timm)"
        ) from exc
    return timm


def is_timm_module(module) -> bool:
    """True for a model built by timm (its class lives in ``timm.models``)."""
    return type(module).__module__.startswith("timm.models.")


def _preprocessing(model) -> ImagePreprocessing:
    timm = import_timm()
    cfg = timm.data.resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if fixed is not None and not getattr(model, "dynamic_img_size", True):
        size = int(fixed[-1])  # a ViT built for another size than its pretrained config
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    interpolation = str(cfg.get("interpolation") or "bicubic")
    return ImagePreprocessing(
        image_size=size,
        resize_size=int(math.floor(size / crop_pct)),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=interpolation if interpolation in _INTERPOLATIONS else "bicubic",
    )


def backbone_from_timm_module(model: nn.Module, name: str | None = None) -> Backbone:
    """Split a timm model into blocks (its classifier is reset to none).

    Parameters
    ----------
    model : torch.nn.Module
        A model built by ``timm.create_model``. Its submodules are reused, not copied;
        ``model.reset_classifier(0)`` is called on it.
    name : str, optional
        Name shown to users; default ``"timm:<architecture>"``.

    Returns
    -------
    Backbone
        ``modality="image"``. ``source`` is ``{"kind": "timm", "name": architecture,
        ...}`` when ``timm.create_model(architecture)`` rebuilds the same network (so
        :func:`sktransfer.save` can store it), else ``{"kind": "module", ...}``.
    """
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if getattr(model, "num_classes", 0):
        model.reset_classifier(0)
    family = timm_blocks.family(model)
    blocks, pool = timm_blocks.split(model, family)
    if family == "stages" and not timm_blocks.split_is_exact(model, blocks, pool):
        family = "whole"
        blocks, pool = timm_blocks.split(model, family)
    name = name or f"{PREFIX}{arch or type(model).__name__}"
    source = {"kind": "module", "name": name}
    kwargs = _rebuild_kwargs(model, arch, family)
    if kwargs is not None:
        source = {"kind": "timm", "name": arch, "weights": None, "kwargs": kwargs}
    return Backbone(
        name=name,
        modality="image",
        blocks=blocks,
        pool=pool,
        feature_dim=None if family == "whole" else _pooled_dim(model),
        preprocessing=_preprocessing(model),
        source=source,
    )


def _pooled_dim(model) -> int:
    """Width of the pre-logits features (a MobileNetV3 / MambaOut head widens them)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _rebuild_kwargs(model, arch, family):
    """kwargs with which ``create_model(arch, ...)`` gives this architecture, or None."""
    if not arch:
        return None
    timm = import_timm()
    if not timm.is_model(arch):
        return None
    kwargs = {}
    size = timm_blocks.vit_img_size(model) if family == "VisionTransformer" else None
    if size is not None:
        kwargs["img_size"] = int(size[0])
    try:
        with torch.device("meta"):
            probe = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    except Exception:
        return None
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    return kwargs if theirs == ours and repr(probe) == repr(model) else None


# --------------------------------------------------------------------------- loading
def _model_name(spec: str) -> str:
    return spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec


def _check_name(timm, name: str) -> None:
    if not name.startswith("hf-hub:") and timm.is_model(name):  # "name" or "name.tag"
        return
    import difflib

    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
    raise ValueError(f"unknown timm model {name!r}.{hint} See timm.list_models().")


def load_timm(spec: str, weights="default") -> Backbone:
    """Create ``timm:<model_name>`` as an image :class:`Backbone`.

    Parameters
    ----------
    spec : str
        ``"timm:<model_name>"`` (or the bare model name), any name in
        ``timm.list_models()``; a pretrained tag (``"vit_small_patch14_dinov2.lvd142m"``)
        selects those weights.
    weights : "default", None or path-like, default="default"
        ``"default"``: timm's pretrained weights, read from the Hugging Face cache
        (``HF_HOME``) or downloaded by timm when the machine can. ``None``: random
        initialisation. A local file: a state dict (``.pth``/``.bin``/``.safetensors``)
        of this architecture; classifier keys are ignored.

    Returns
    -------
    Backbone
        ``source={"kind": "timm", "name": model_name, "weights": weights, "kwargs": {}}``.
    """
    timm = import_timm()
    name = _model_name(os.fspath(spec))
    _check_name(timm, name)
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if weights is None:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    elif weights == "default":
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as exc:
            raise RuntimeError(
                f"could not load timm's pretrained weights for {name!r} ({type(exc).__name__}: "
                f"{str(exc)[:300]}). They come from the Hugging Face hub: fill the local cache "
                "(HF_HOME) on a machine with network access, or pass a local file "
                f"(weights='/path/to/{name}.safetensors'), or weights=None for random init."
            ) from exc
    else:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        _load_file(model, os.path.expanduser(str(weights)))
    model.eval()
    backbone = backbone_from_timm_module(model, PREFIX + name)
    backbone.source = {"kind": "timm", "name": name, "weights": weights, "kwargs": {}}
    return backbone


def _load_file(model, path: str) -> None:
    from sktransfer.backbones.state_dicts import preview as _preview
    from sktransfer.backbones.state_dicts import read_state_dict as _read_state_dict

    state = _read_state_dict(path)
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (head,) if isinstance(head, str) else tuple(head)
    body = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
    try:
        result = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"the weights in {path!r} do not fit this architecture: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"the weights in {path!r} do not match the architecture: missing keys "
            f"{_preview(list(result.missing_keys))}; unexpected keys "
            f"{_preview(list(result.unexpected_keys))}"
        )


def rebuild_timm(source: dict, arch: dict) -> Backbone:
    """The architecture a saved ``{"kind": "timm"}`` source names, randomly initialised.

    Only names in ``timm.list_models()`` and whitelisted integer kwargs are accepted,
    nothing is read from disk or the network, and the size is checked on the meta device
    first against ``arch["weight_bytes"]`` when given.
    """
    timm = import_timm()
    name = source.get("name")
    if not isinstance(name, str):
        raise ValueError(f"the saved timm source {source!r} has no model name")
    _check_name(timm, name)
    raw = source.get("kwargs") or {}
    kwargs = {k: raw[k] for k in _REBUILD_KWARGS if k in raw}
    if set(raw) - set(kwargs) or not all(type(v) is int and 0 < v <= 4096 for v in kwargs.values()):
        raise ValueError(f"refusing timm kwargs {raw!r} (only {_REBUILD_KWARGS}, positive ints)")
    have = arch.get("weight_bytes")
    if have is not None:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        need = sum(p.numel() * p.element_size() for p in probe.parameters())
        if need > 2 * int(have) + _SLACK_BYTES:
            raise ValueError(
                f"timm model {name!r} needs {need} bytes, the file holds {have}; refusing"
            )
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    backbone = backbone_from_timm_module(model, PREFIX + name)
    backbone.source = dict(source)
    return backbone


register_source(
    BackboneSource(
        kind="timm",
        modality="image",
        install='pip install "sktransfer[timm]"',
        weights="timm's pretrained tags via the Hugging Face cache (HF_HOME) or download, "
        "a local state-dict file, or None",
        spec="timm:<model_name> or a timm model object",
        claims=lambda spec, modality: modality == "image" and spec.startswith(PREFIX),
        load=load_timm,
        claims_module=is_timm_module,
        from_module=backbone_from_timm_module,
        rebuild=rebuild_timm,
    )
)
