"""torchvision classification models as :class:`Backbone` objects.

Supported families and their blocks (input -> output):

* ResNet / ResNeXt / Wide ResNet: ``stem`` (conv1, bn1, relu, maxpool),
  ``layer1`` .. ``layer4``; pool = average pool + flatten.
* MobileNetV3: ``stem``, ``block1`` .. ``blockK`` (the inverted residuals),
  ``head_conv``; pool = average pool + flatten.
* EfficientNet (v1 and v2): ``stem``, ``stage1`` .. ``stageK``, ``head_conv``;
  pool = average pool + flatten.
* ConvNeXt: ``stem``, ``stage1``, ``downsample1``, ..., ``stage4``;
  pool = average pool + the classifier's ``LayerNorm2d`` + flatten.
* Vision Transformer: ``embed`` (patch projection, class token, position
  embedding, dropout), ``encoder_layer_0`` ..; pool = final LayerNorm + class token.

The classification head is dropped: ``pool`` returns what the head would read.
torchvision is imported lazily (see :mod:`sktransfer.backbones.compat`). On import
this leaf registers every name in :data:`TORCHVISION_MODELS` and the ``"torchvision"``
source, which rebuilds a saved architecture for the safe format.
"""

from __future__ import annotations

import difflib
import math
import os
from collections import OrderedDict

import torch
from torch import nn

from sktransfer.backbones.base import Backbone
from sktransfer.backbones.compat import import_torchvision
from sktransfer.backbones.registry import (
    BackboneSource,
    is_registered,
    register_backbone,
    register_source,
)
from sktransfer.backbones.state_dicts import looks_like_path as _looks_like_path
from sktransfer.backbones.state_dicts import preview as _preview
from sktransfer.backbones.state_dicts import read_state_dict as _read_state_dict
from sktransfer.inputs.preprocessing import ImagePreprocessing

__all__ = ["TORCHVISION_MODELS", "backbone_from_torchvision_module", "load_torchvision"]

TORCHVISION_MODELS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_v2_s",
    "efficientnet_v2_m",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "vit_b_16",
    "vit_b_32",
    "vit_l_16",
)

# Parameter-name prefixes of the classification head, which the backbone drops.
_HEAD_PREFIXES = {
    "ResNet": ("fc.",),
    "MobileNetV3": ("classifier.",),
    "EfficientNet": ("classifier.",),
    "ConvNeXt": ("classifier.2.",),
    "VisionTransformer": ("heads.",),
}


class ViTEmbedding(nn.Module):
    """Patch projection, class token, position embedding and dropout of a ViT.

    Parameters
    ----------
    vit : torchvision.models.VisionTransformer
        The model whose ``conv_proj``, ``class_token`` and encoder
        ``pos_embedding`` / ``dropout`` are shared (not copied).
    """

    def __init__(self, vit):
        super().__init__()
        self.image_size = vit.image_size
        self.patch_size = vit.patch_size
        self.hidden_dim = vit.hidden_dim
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(
                f"this Vision Transformer takes {self.image_size}x{self.image_size} images, "
                f"got {h}x{w}; set image_size={self.image_size}"
            )
        p = self.patch_size
        x = self.conv_proj(x).reshape(n, self.hidden_dim, (h // p) * (w // p)).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ViTPool(nn.Module):
    """Final LayerNorm of a ViT encoder, then the class token: ``(n, t, d) -> (n, d)``."""

    def __init__(self, ln: nn.Module):
        super().__init__()
        self.ln = ln

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)[:, 0]


def _flatten_pool(*modules: nn.Module) -> nn.Sequential:
    return nn.Sequential(*modules, nn.Flatten(1))


def _family(module: nn.Module, tv) -> str | None:
    m = tv.models
    for cls_name in _HEAD_PREFIXES:
        if isinstance(module, getattr(m, cls_name)):
            return cls_name
    return None


def _split(model: nn.Module, family: str):
    """Return ``(blocks, pool, feature_dim)`` for a recognised torchvision model."""
    if family == "ResNet":
        stem = nn.Sequential(
            OrderedDict(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool)
        )
        blocks = [("stem", stem)] + [
            (f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)
        ]
        return blocks, _flatten_pool(model.avgpool), model.fc.in_features
    if family in ("MobileNetV3", "EfficientNet"):
        feats = list(model.features)
        inner = "block" if family == "MobileNetV3" else "stage"
        blocks = [("stem", feats[0])]
        blocks += [(f"{inner}{i}", f) for i, f in enumerate(feats[1:-1], start=1)]
        blocks.append(("head_conv", feats[-1]))
        return blocks, _flatten_pool(model.avgpool), _out_channels(feats[-1])
    if family == "ConvNeXt":
        blocks, n_stage, n_down = [("stem", model.features[0])], 0, 0
        for child in list(model.features)[1:]:
            if type(child[0]).__name__ == "CNBlock":
                n_stage += 1
                blocks.append((f"stage{n_stage}", child))
            else:
                n_down += 1
                blocks.append((f"downsample{n_down}", child))
        pool = _flatten_pool(model.avgpool, model.classifier[0])
        return blocks, pool, model.classifier[0].normalized_shape[0]
    if family == "VisionTransformer":
        blocks = [("embed", ViTEmbedding(model))]
        blocks += [(name, layer) for name, layer in model.encoder.layers.named_children()]
        return blocks, ViTPool(model.encoder.ln), model.hidden_dim
    raise ValueError(f"unsupported torchvision family {family!r}")


def _out_channels(module: nn.Module) -> int:
    out = getattr(module, "out_channels", None)
    if out is not None:
        return int(out)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def backbone_from_torchvision_module(module: nn.Module, name: str | None = None) -> Backbone | None:
    """Split an already-built torchvision classifier into blocks.

    Parameters
    ----------
    module : torch.nn.Module
        A torchvision ``ResNet``, ``MobileNetV3``, ``EfficientNet``, ``ConvNeXt``
        or ``VisionTransformer`` instance. Its submodules are reused, not copied.
    name : str, optional
        Name shown to users; defaults to the class name.

    Returns
    -------
    Backbone or None
        The backbone, or None when ``module`` is not a recognised class (or
        torchvision cannot be imported).
    """
    try:
        tv = import_torchvision()
    except (ImportError, RuntimeError):
        return None
    family = _family(module, tv)
    if family is None:
        return None
    name = name or type(module).__name__
    blocks, pool, dim = _split(module, family)
    return Backbone(
        name=name,
        modality="image",
        blocks=blocks,
        pool=pool,
        feature_dim=dim,
        preprocessing=_default_preprocessing(module, family),
        source={"kind": "module", "name": name},
    )


def _default_preprocessing(model: nn.Module, family: str) -> ImagePreprocessing:
    if family == "VisionTransformer":
        size = int(model.image_size)
        return ImagePreprocessing(image_size=size, resize_size=math.floor(size * 256 / 224))
    return ImagePreprocessing(image_size=224, resize_size=256)


def _weights_preprocessing(weights) -> ImagePreprocessing:
    t = weights.transforms()
    return ImagePreprocessing(
        image_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        interpolation=str(getattr(t.interpolation, "value", t.interpolation)),
    )


def _resolve_weights_enum(tv, name: str, weights):
    enum = tv.models.get_model_weights(name)
    if isinstance(weights, enum):
        return weights
    key = str(weights)
    if key.startswith(enum.__name__ + "."):
        key = key[len(enum.__name__) + 1 :]
    key = key.upper()
    if key == "DEFAULT":
        return enum.DEFAULT
    if key in enum.__members__:
        return enum[key]
    choices = ["DEFAULT"] + list(enum.__members__)
    raise ValueError(
        f"unknown weights {weights!r} for torchvision model {name!r}; choose one of "
        f"{', '.join(choices)}, None (random init) or a local state-dict file path"
    )


def _load_state_dict(model: nn.Module, family: str, state: dict, path: str) -> None:
    head = _HEAD_PREFIXES[family]
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        result = model.load_state_dict(body, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"the weights in {path!r} do not fit this architecture: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(
            f"the weights in {path!r} do not match the architecture: "
            f"missing keys {_preview(missing)}; unexpected keys {_preview(unexpected)}"
        )


def _vit_kwargs(name: str, state: dict) -> dict:
    """ViT image size implied by a state dict's position embedding."""
    pos = state.get("encoder.pos_embedding")
    if not name.startswith("vit_") or pos is None:
        return {}
    patch = int(name.rsplit("_", 1)[-1])
    side = math.isqrt(int(pos.shape[1]) - 1)
    return {"image_size": side * patch}


def load_torchvision(name: str, weights=None) -> Backbone:
    """Load a torchvision classification model as an image :class:`Backbone`.

    Parameters
    ----------
    name : str
        One of :data:`TORCHVISION_MODELS`.
    weights : None, str or path-like, default=None
        ``None``: random initialisation and ImageNet default preprocessing.
        A torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``,
        ``"ResNet50_Weights.IMAGENET1K_V2"``): downloaded by torchvision unless
        already in the cache at ``torch.hub.get_dir()``; preprocessing follows the
        weights' transforms. A local file: a state dict saved with
        ``torch.save(model.state_dict(), path)`` or a ``.safetensors`` file; the
        classification head's keys may differ and are ignored.

    Returns
    -------
    Backbone
        ``modality="image"``; ``source={"kind": "torchvision", "name": name,
        "weights": weights}``.

    Raises
    ------
    ValueError
        Unknown model name, unknown weights name, missing file, or a state dict
        whose keys do not match the architecture.
    RuntimeError
        Named weights that are not cached and cannot be downloaded.
    """
    if name not in TORCHVISION_MODELS:
        close = difflib.get_close_matches(str(name), TORCHVISION_MODELS, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown torchvision model {name!r}.{hint} Supported: {', '.join(TORCHVISION_MODELS)}."
        )
    tv = import_torchvision()
    source = {"kind": "torchvision", "name": name, "weights": weights}
    if isinstance(weights, os.PathLike):
        source["weights"] = os.fspath(weights)
    preprocessing = None
    if weights is None:
        model = tv.models.get_model(name, weights=None)
    elif _looks_like_path(weights):
        path = os.path.expanduser(os.fspath(weights))
        state = _read_state_dict(path)
        model = tv.models.get_model(name, weights=None, **_vit_kwargs(name, state))
        _load_state_dict(model, _family(model, tv), state, path)
    else:
        enum_value = _resolve_weights_enum(tv, name, weights)
        try:
            model = tv.models.get_model(name, weights=enum_value, progress=False)
        except (OSError, RuntimeError) as exc:
            file_name = os.path.basename(enum_value.url)
            cache = os.path.join(torch.hub.get_dir(), "checkpoints")
            raise RuntimeError(
                f"could not load torchvision weights {enum_value} for {name!r} "
                f"({type(exc).__name__}: {exc}). Named torchvision weights need network access "
                f"to {enum_value.url}, or a pre-filled cache: put {file_name} in {cache} "
                f"(torch.hub.get_dir() is {torch.hub.get_dir()!r}). Offline, pass a local "
                f"state-dict path instead: weights='/path/to/{name}.pth'."
            ) from exc
        preprocessing = _weights_preprocessing(enum_value)
    family = _family(model, tv)
    blocks, pool, dim = _split(model, family)
    return Backbone(
        name=name,
        modality="image",
        blocks=blocks,
        pool=pool,
        feature_dim=dim,
        preprocessing=preprocessing or _default_preprocessing(model, family),
        source=source,
    )


def _rebuild(source, arch):
    name = source.get("name")
    if name not in TORCHVISION_MODELS:
        raise ValueError(f"{source!r} names no supported torchvision model")
    kwargs = {"image_size": int(arch["image_size"])} if "image_size" in arch else {}
    model = import_torchvision().models.get_model(name, weights=None, **kwargs)
    return backbone_from_torchvision_module(model, name)


def _register():
    for tv_name in TORCHVISION_MODELS:
        if is_registered(tv_name):  # a packaged backbone of the same name comes first
            continue

        def _load(weights="default", _name=tv_name):
            return load_torchvision(_name, weights="DEFAULT" if weights == "default" else weights)

        register_backbone(
            tv_name,
            modality="image",
            source="torchvision",
            description=f"torchvision {tv_name} (weights: cache/download, state-dict path, None)",
        )(_load)
    register_source(
        BackboneSource(
            kind="torchvision",
            modality="image",
            install='pip install "sktransfer[torchvision]"',
            weights="torchvision weight names (torch.hub cache or download), a local "
            "state-dict file, or None",
            spec="a torchvision model name (resnet18, vit_b_16, ...) or model object",
            rebuild=_rebuild,
        )
    )


_register()
