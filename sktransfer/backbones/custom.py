"""User-supplied ``torch.nn.Module`` backbones.

Blocks: a recognised torchvision architecture gets its usual blocks; an
``nn.Sequential`` its children; any other module is a single block. The output of
the last block is pooled to ``(n, d)``: global average over spatial dimensions
for 4-D maps, mean over tokens for 3-D, unchanged for 2-D.
"""

from __future__ import annotations

import copy
import sys

from torch import nn

from sktransfer.backbones.base import Backbone
from sktransfer.inputs.preprocessing import ImagePreprocessing


class AutoPool(nn.Module):
    """``(n, c, h, w) -> (n, c)``, ``(n, t, d) -> (n, d)``, ``(n, d)`` unchanged."""

    def forward(self, x):
        if x.ndim == 4:
            return x.mean(dim=(2, 3))
        if x.ndim == 3:
            return x.mean(dim=1)
        if x.ndim == 2:
            return x
        return x.flatten(1)


def backbone_from_module(module: nn.Module, modality: str) -> Backbone:
    """Wrap a deep copy of ``module`` as a :class:`Backbone` of ``modality``."""
    if modality == "text":
        raise TypeError(
            "a text backbone needs its tokenizer: pass a Hugging Face model directory "
            "(model.save_pretrained(dir); tokenizer.save_pretrained(dir)) or a registry name, "
            f"not a bare {type(module).__name__}"
        )
    module = copy.deepcopy(module)
    name = type(module).__name__
    if "torchvision" in sys.modules:
        from sktransfer.backbones.torchvision import backbone_from_torchvision_module

        recognised = backbone_from_torchvision_module(module, name)
        if recognised is not None:
            recognised.source = {"kind": "module", "name": name}
            return recognised
    reason = None
    if isinstance(module, nn.Sequential) and len(module) > 0:
        blocks = [(str(i), child) for i, child in module.named_children()]
    else:
        blocks = [("module", module)]
        reason = (
            f"a {name} that is neither an nn.Sequential nor a recognised torchvision "
            "architecture is not split; pass an nn.Sequential of the blocks to freeze part of it"
        )
    return Backbone(
        name=name,
        modality=modality,
        blocks=blocks,
        pool=AutoPool(),
        feature_dim=None,  # found by a forward pass at fit time
        preprocessing=ImagePreprocessing(),
        source={"kind": "module", "name": name},
        unsplit_reason=reason,
    )
