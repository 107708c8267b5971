"""Backbone registry and resolution (one leaf module per source)."""

from sktransfer.backbones.base import Backbone, TextState, warn_if_unsplit
from sktransfer.backbones.registry import (
    BackboneInfo,
    list_backbones,
    list_sources,
    register_backbone,
    resolve_backbone,
)
from sktransfer.inputs.preprocessing import ImagePreprocessing, TextPreprocessing

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
