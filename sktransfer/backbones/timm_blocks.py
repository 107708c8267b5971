"""timm models split into blocks: the module classes and the split of each family.

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

Every model split here has no classifier (created with ``num_classes=0``, or reset to it),
so ``pool`` returns exactly what timm's ``forward_head(x, pre_logits=True)`` returns. A
split shares the model's own modules (none is copied). :mod:`sktransfer.backbones.timm`
is the source that creates, loads and rebuilds the models.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "HeadDropout",
    "TimmHeadPool",
    "TimmSequence",
    "TimmViTEmbed",
    "TimmViTPool",
    "TimmWholeModel",
    "family",
    "split",
    "split_is_exact",
    "vit_img_size",
]


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
        self.image_size = vit_img_size(vit)

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


def vit_img_size(vit):
    size = getattr(vit.patch_embed, "img_size", None)
    return None if size is None else tuple(int(s) for s in size)


def family(model: nn.Module) -> str:
    name = type(model).__name__
    if name in ("ResNet", "EfficientNet", "MobileNetV3", "VisionTransformer"):
        return name
    if all(hasattr(model, a) for a in ("stem", "stages", "head", "forward_features")):
        return "stages"
    return "whole"


def split(model: nn.Module, family: str):
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


def split_is_exact(model, blocks, pool) -> bool:
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
