"""Backbone registry and resolution (one leaf module per source)."""

from sktransfer.backbones._base import (
    Backbone,
    ImagePreprocessing,
    TextPreprocessing,
    TextState,
    warn_if_unsplit,
)
from sktransfer.backbones.registry import (
    BackboneInfo,
    list_backbones,
    list_sources,
    register_backbone,
    resolve_backbone,
)

__all__ = [
    "Backbone",
    "BackboneInfo",
    "ImagePreprocessing",
    "TextPreprocessing",
    "TextState",
    "list_backbones",
    "list_sources",
    "register_backbone",
    "resolve_backbone",
    "warn_if_unsplit",
]
