"""timm image models as :class:`Backbone` objects (``backbone="timm:<model_name>"``).

Blocks follow timm's own stage structure (the ``feature_info`` of the model), so
``freeze_depth`` counts what timm calls stages:

* ``ResNet`` (resnet*, resnext*, seresnet*, ...): ``stem`` (conv1, bn1, act1,
  maxpool), ``layer1`` .. ``layer4``; pool = ``global_pool`` (+ the model's dropout).
* ``EfficientNet`` (efficientnet*, tf_efficientnet*, mnasnet*, ...): ``stem``
  (conv_stem, bn1), ``blocks.0`` .. ``blocks.K``, ``head_conv`` (conv_head, bn2);
  pool = ``global_pool``.
* ``MobileNetV3`` (mobilenetv3*, ...): ``stem``, ``blocks.0`` .. ``blocks.K``; pool =
  ``global_pool``, ``conv_head``, ``norm_head``, ``act2``, flatten (timm's pre-logits).
* ``VisionTransformer`` (vit*, deit*, eva-style ViTs on this class): ``embed`` (patch
  embedding, class/register tokens, position embedding, ``norm_pre``), ``blocks.0`` ..
  ``blocks.N-1``; pool = final ``norm``, timm's token/avg/attention pooling, ``fc_norm``.
* any other model with ``stem`` + ``stages`` (ConvNeXt, ByobNet, RegNet-style, MaxViT,
  ...): ``stem``, ``stages.0`` .. ``stages.K``, then a ``final`` block for whatever
  ``forward_features`` runs after the stages; pool = the model's ``head`` (pre-logits).
  The split is checked against the model's own forward once, on a random image; a model
  whose split does not reproduce it becomes one block.
* everything else: one block (``forward_features`` + ``forward_head(pre_logits=True)``).

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

from sktransfer.backbones.base import Backbone
from sktransfer.backbones.compat import import_torchvision
from sktransfer.backbones.registry import BackboneSource, register_source
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


# --------------------------------------------------------------------------- blocks
class TimmSequence(nn.Module):
    """Named submodules run in order (a stem or head conv taken from a timm model)."""

    def __init__(self, **modules: nn.Module):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class HeadDropout(nn.Module):
    """timm's ``F.dropout(x, p=drop_rate, training=...)`` of ``forward_head``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p > 0:
            x = nn.functional.dropout(x, p=self.p, training=self.training)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TimmViTEmbed(nn.Module):
    """Block 0 of a timm ``VisionTransformer``: patches, prefix tokens, position embedding.

    Shares (does not copy) the model's ``patch_embed``, ``cls_token``, ``reg_token``,
    ``pos_embed``, ``pos_drop``, ``patch_drop`` and ``norm_pre``, and runs timm's own
    ``_pos_embed`` on them, so it follows the installed timm version exactly.
    """

    _ATTRS = ("dynamic_img_size", "no_embed_class", "num_prefix_tokens")

    def __init__(self, vit: nn.Module):
        super().__init__()
        self._impl = type(vit)
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.pos_embed = vit.pos_embed
        self.pos_drop = vit.pos_drop
        self.patch_drop = vit.patch_drop
        self.norm_pre = vit.norm_pre
        for attr in self._ATTRS:
            setattr(self, attr, getattr(vit, attr))
        self.image_size = _vit_img_size(vit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if size is not None and not self.dynamic_img_size and tuple(x.shape[-2:]) != size:
            raise ValueError(
                f"this timm Vision Transformer takes {size[0]}x{size[1]} images, got "
                f"{x.shape[-2]}x{x.shape[-1]}; set image_size={size[0]}"
            )
        x = self.patch_embed(x)
        x = self._impl._pos_embed(self, x)
        return self.norm_pre(self.patch_drop(x))


class TimmViTPool(nn.Module):
    """The end of a timm ``VisionTransformer``: final norm, pooling, ``fc_norm``, dropout."""

    _ATTRS = ("global_pool", "num_prefix_tokens", "pool_include_prefix")

    def __init__(self, vit: nn.Module):
        super().__init__()
        self._impl = type(vit)
        self.norm = vit.norm
        self.attn_pool = vit.attn_pool
        self.fc_norm = vit.fc_norm
        self.head_drop = vit.head_drop
        for attr in self._ATTRS:
            setattr(self, attr, getattr(vit, attr, False))

    def pool(self, x: torch.Tensor, pool_type=None) -> torch.Tensor:
        return self._impl.pool(self, x, pool_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.norm(x))
        return self.head_drop(self.fc_norm(x))


class TimmHeadPool(nn.Module):
    """A timm ``head`` module (ClassifierHead / NormMlpClassifierHead) in pre-logits mode."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x, pre_logits=True)


class TimmWholeModel(nn.Module):
    """A timm model as one block: ``forward_features`` then ``forward_head(pre_logits)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _vit_img_size(vit):
    size = getattr(vit.patch_embed, "img_size", None)
    return None if size is None else tuple(int(s) for s in size)


def _family(model: nn.Module) -> str:
    name = type(model).__name__
    if name in ("ResNet", "EfficientNet", "MobileNetV3", "VisionTransformer"):
        return name
    if all(hasattr(model, a) for a in ("stem", "stages", "head", "forward_features")):
        return "stages"
    return "whole"


def _split(model: nn.Module, family: str):
    """``(blocks, pool)`` of a timm model created with ``num_classes=0``."""
    if family == "ResNet":
        stem = TimmSequence(
            conv1=model.conv1, bn1=model.bn1, act1=model.act1, maxpool=model.maxpool
        )
        blocks = [("stem", stem)] + [
            (f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)
        ]
        return blocks, TimmSequence(
            global_pool=model.global_pool, drop=HeadDropout(model.drop_rate)
        )
    if family in ("EfficientNet", "MobileNetV3"):
        blocks = [("stem", TimmSequence(conv_stem=model.conv_stem, bn1=model.bn1))]
        blocks += [(f"blocks.{i}", stage) for i, stage in enumerate(model.blocks)]
        drop = HeadDropout(model.drop_rate)
        if family == "EfficientNet":
            blocks.append(("head_conv", TimmSequence(conv_head=model.conv_head, bn2=model.bn2)))
            return blocks, TimmSequence(global_pool=model.global_pool, drop=drop)
        pool = TimmSequence(
            global_pool=model.global_pool,
            conv_head=model.conv_head,
            norm_head=model.norm_head,
            act2=model.act2,
            flatten=model.flatten,
            drop=drop,
        )
        return blocks, pool
    if family == "VisionTransformer":
        blocks = [("embed", TimmViTEmbed(model))]
        blocks += [(f"blocks.{i}", blk) for i, blk in enumerate(model.blocks)]
        return blocks, TimmViTPool(model)
    if family == "stages":
        blocks = [("stem", model.stem)]
        blocks += [(f"stages.{i}", stage) for i, stage in enumerate(model.stages)]
        after = {
            name: getattr(model, name)
            for name in ("norm_pre", "final_conv", "norm")
            if isinstance(getattr(model, name, None), nn.Module)
            and not isinstance(getattr(model, name), nn.Identity)
        }
        if after:
            blocks.append(("final", TimmSequence(**after)))
        return blocks, TimmHeadPool(model.head)
    return [("model", TimmWholeModel(model))], nn.Identity()


def _test_size(model):
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224)
    return tuple(int(s) for s in size)


def _split_is_exact(model, blocks, pool) -> bool:
    """One random image through the blocks and through the model's own forward."""
    was_training = model.training
    model.eval()
    try:
        x = torch.randn((1, *_test_size(model)), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model.forward_head(model.forward_features(x), pre_logits=True)
            got = x
            for _, block in blocks:
                got = block(got)
            got = pool(got)
        return got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    except Exception:  # a forward that the split cannot run: fall back to one block
        return False
    finally:
        model.train(was_training)


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
    family = _family(model)
    blocks, pool = _split(model, family)
    if family == "stages" and not _split_is_exact(model, blocks, pool):
        family = "whole"
        blocks, pool = _split(model, family)
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
    if family == "VisionTransformer" and _vit_img_size(model) is not None:
        kwargs["img_size"] = int(_vit_img_size(model)[0])
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
    from sktransfer.backbones.torchvision import _preview, _read_state_dict

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
