"""Backbone registry: names -> loaders, sources -> leaves, and every ``backbone=`` form.

Two tables live here:

* named backbones (:func:`register_backbone`): ``"efficientnet_lite0"``, ``"resnet18"``...
* backbone *sources* (:func:`register_source`): one :class:`BackboneSource` per leaf
  module (torchvision, timm, Hugging Face text, Hugging Face vision, ...). A source says
  which ``backbone=`` strings and module objects it loads, and rebuilds its architecture
  from a recorded ``Backbone.source`` for :func:`sktransfer.load`. Adding a source is one
  leaf file that calls :func:`register_source` (and :func:`register_backbone` for its
  names) on import, and one line in ``_LEAVES``; this module imports nothing else.

``backbone`` may be a registry name, a string a source claims (``"timm:<name>"``, a local
Hugging Face model directory or hub id), a ``torch.nn.Module`` or a fitted sktransfer
estimator. Resolution happens at ``fit`` time; the estimator only stores what was passed.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sktransfer.backbones.base import Backbone
from sktransfer.cache.lru import LRU

DEFAULTS = {"image": "efficientnet_lite0", "text": "all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class BackboneInfo:
    """One registry entry as :func:`list_backbones` shows it."""

    name: str
    modality: str
    source: str  # "packaged" (offline weights) | "torchvision"
    description: str
    default: bool


@dataclass(frozen=True)
class _Entry:
    info: BackboneInfo
    loader: Callable[..., Backbone]


_REGISTRY: dict[str, _Entry] = {}
_POPULATED = False


@dataclass(frozen=True)
class BackboneSource:
    """One source of backbones (a leaf module), as :func:`register_source` records it.

    Parameters
    ----------
    kind : str
        The ``"kind"`` its backbones record in ``Backbone.source``.
    modality : {"image", "text"}
    install : str
        How to install what it needs.
    weights : str
        Where its weights come from (shown by ``sktransfer backbones``).
    spec : str
        The ``backbone=`` forms it accepts, in words.
    claims : callable ``(spec: str, modality) -> bool``, optional
        Whether a ``backbone=`` string is this source's to load.
    load : callable ``(spec: str, weights) -> Backbone``, optional
    claims_module : callable ``(module) -> bool``, optional
        Whether a ``torch.nn.Module`` passed as ``backbone`` is this source's.
    from_module : callable ``(module) -> Backbone``, optional
        Split such a module (already deep-copied) into blocks.
    rebuild : callable ``(source: dict, arch: dict) -> Backbone``, optional
        The randomly initialised architecture a saved ``source`` names, for the safe
        format (which then loads the saved weights into it with ``strict=True``). ``arch``
        is what the safe file recorded beside ``source``, plus ``arch["members"]``: a
        read-only mapping of the file's plain data members (name -> bytes, e.g. a Hugging
        Face ``config.json`` and tokenizer files; never the weights), ``arch["weight_bytes"]``
        (the size of the stored weights, to refuse a far larger architecture before
        allocating it) and ``arch["preprocessing"]`` (the saved preprocessing fields).
        Must read nothing a file names from disk or the network, and run no remote code.
    """

    kind: str
    modality: str
    install: str
    weights: str
    spec: str
    claims: Callable[[str, str], bool] | None = None
    load: Callable[..., Backbone] | None = None
    claims_module: Callable[[nn.Module], bool] | None = None
    from_module: Callable[[nn.Module], Backbone] | None = None
    rebuild: Callable[[dict, dict], Backbone] | None = None


_SOURCES: dict[str, BackboneSource] = {}
# leaf modules that register a source on import (each imports its library lazily)
_LEAVES = (
    "sktransfer.backbones.packaged",  # first: its names are registered before torchvision's
    "sktransfer.backbones.torchvision",
    "sktransfer.backbones.huggingface",
    "sktransfer.backbones.hf_vision",
    "sktransfer.backbones.timm",
)


def register_source(source: BackboneSource) -> BackboneSource:
    """Record a backbone source; a second source of the same ``kind`` is refused."""
    if source.kind in _SOURCES:
        raise ValueError(f"backbone source {source.kind!r} is already registered")
    _SOURCES[source.kind] = source
    return source


def list_sources() -> list[BackboneSource]:
    """Every registered backbone source (how to install it, where weights come from)."""
    _populate()
    return sorted(_SOURCES.values(), key=lambda s: (s.modality, s.kind))


def rebuild_backbone(source: dict, arch: dict | None = None, members=None) -> Backbone:
    """The architecture recorded in ``source`` (``Backbone.source``), randomly initialised.

    Parameters
    ----------
    source : dict
        The saved ``Backbone.source``; its ``"kind"`` picks the source's ``rebuild``.
    arch : dict, optional
        What the safe file recorded to rebuild it (see :class:`BackboneSource`).
    members : mapping of str to bytes, optional
        The file's plain data members, handed over as ``arch["members"]`` (read-only; this
        replaces any ``"members"`` entry ``arch`` had).

    Raises
    ------
    ValueError
        No registered source of that kind can rebuild (``"module"``: a user's own class).
    """
    _populate()
    leaf = _SOURCES.get(source.get("kind")) if isinstance(source, dict) else None
    if leaf is None or leaf.rebuild is None:
        raise ValueError(f"no backbone source can rebuild {source!r}")
    from types import MappingProxyType

    arch = dict(arch or {})
    arch["members"] = MappingProxyType(dict(members or {}))
    return leaf.rebuild(source, arch)


def rebuildable_kinds() -> set[str]:
    """The ``source["kind"]`` values :func:`rebuild_backbone` handles."""
    _populate()
    return {k for k, s in _SOURCES.items() if s.rebuild is not None}


def register_backbone(name, *, modality, source, description=""):
    """Decorator adding ``loader(weights=...) -> Backbone`` under ``name``.

    Duplicate names are refused so two sources can never shadow each other.
    """

    def decorate(loader):
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        info = BackboneInfo(name, modality, source, description, DEFAULTS.get(modality) == name)
        _REGISTRY[name] = _Entry(info, loader)
        return loader

    return decorate


def is_registered(name: str) -> bool:
    """Whether a backbone name is taken (without importing the leaves)."""
    return name in _REGISTRY


def _populate():
    """Import every leaf module once; each registers its source and names on import."""
    global _POPULATED
    if _POPULATED:
        return
    _POPULATED = True
    import importlib

    for leaf in _LEAVES:
        importlib.import_module(leaf)


def list_backbones(modality=None) -> list[BackboneInfo]:
    """The registered backbones, packaged offline defaults first.

    Parameters
    ----------
    modality : {"image", "text"} or None
        Only entries of this modality.

    Returns
    -------
    list of BackboneInfo
    """
    _populate()
    if modality not in (None, "image", "text"):
        raise ValueError(f"modality must be 'image', 'text' or None, got {modality!r}")
    rows = [e.info for e in _REGISTRY.values() if modality in (None, e.info.modality)]
    return sorted(rows, key=lambda r: (r.source != "packaged", r.modality, r.name))


def _unknown_name(name, modality):
    names = [n for n, e in _REGISTRY.items() if e.info.modality == modality]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(
        f"unknown {modality} backbone {name!r}: not a registered name"
        + (" nor a local model directory" if modality == "text" else "")
        + f".{hint} Known {modality} backbones: {', '.join(sorted(names))}."
    )


def resolve_backbone(spec, modality, *, weights="default", share=False) -> Backbone:
    """Turn any accepted ``backbone=`` value into a fresh :class:`Backbone`.

    The returned modules are new objects (a user-supplied module is deep-copied),
    so fitting never mutates what the user passed. ``share=True`` (frozen models on
    the CPU) hands out a registry backbone's loaded template itself instead of a copy:
    the caller promises never to change its tensors (see ``_cached_load``).
    """
    _populate()
    if spec is None:
        spec = DEFAULTS[modality]
    if getattr(spec, "_is_sktransfer_estimator", False):
        backbone = spec._export_backbone()
    elif isinstance(spec, nn.Module):
        leaf = next(
            (s for s in _SOURCES.values() if s.claims_module and s.claims_module(spec)), None
        )
        if leaf is not None:
            backbone = leaf.from_module(copy.deepcopy(spec))
        else:
            from sktransfer.backbones.custom import backbone_from_module

            backbone = backbone_from_module(spec, modality)
    elif isinstance(spec, (str, os.PathLike)):
        name = os.fspath(spec)
        if name in _REGISTRY:
            entry = _REGISTRY[name]
            if entry.info.modality != modality:
                raise ValueError(
                    f"backbone {name!r} is a {entry.info.modality} backbone, "
                    f"but this estimator takes {modality} input"
                )
            return _load_registered(entry, weights, share)
        for leaf in _SOURCES.values():
            if leaf.claims is not None and leaf.load is not None and leaf.claims(name, modality):
                key = (leaf.kind, _dir_key(name) if os.path.isdir(name) else name)
                return _cached_load(
                    key + (_weights_key(weights),),
                    lambda load=leaf.load: load(name, weights),
                    share,
                )
        if os.path.exists(name):
            raise ValueError(
                f"backbone path {name!r} is not a Hugging Face model directory; for image "
                "weights pass the architecture name and the file: "
                "backbone='resnet18', weights='/path/to/state_dict.pth'"
            )
        raise _unknown_name(name, modality)
    else:
        raise TypeError(
            "backbone must be None, a registered name, a local model path, a torch.nn.Module "
            f"or a fitted sktransfer estimator; got {type(spec).__name__}"
        )
    if backbone.modality != modality:
        raise ValueError(
            f"backbone {backbone.name!r} is a {backbone.modality} backbone, "
            f"but this estimator takes {modality} input"
        )
    return backbone


_TEMPLATES = LRU(3)  # the last loaded backbones


def _stat_key(st):
    """What tells a rewritten file from the one loaded before: ``cp -p``, ``tar x`` and
    ``rsync -t`` restore the mtime, but no copy tool can set the ctime (nor the inode)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _weights_key(weights):
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(weights):
        return (os.path.abspath(weights), _stat_key(os.stat(weights)))
    return weights


def _load_registered(entry, weights, share=False) -> Backbone:
    key = (entry.info.name, _weights_key(weights))
    return _cached_load(key, lambda: entry.loader(weights=weights), share)


def _dir_key(path):
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        return ("hub", path)
    stats = []
    for where, dirs, files in os.walk(path):  # every file, subfolders' too
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(where, name)
            stats.append((os.path.relpath(full, path), _stat_key(os.stat(full))))
    return ("dir", path, tuple(stats))


def _cached_load(key, load, share=False) -> Backbone:
    """A fresh copy of a registry backbone; the loaded template is kept (LRU of 3).

    Grid searches refit many times: reading weights from disk once and copying
    them after is much cheaper, and the copies inherit the template's content
    digests so the feature cache needs no re-hashing. ``share=True`` skips the copy
    (a deep copy of EfficientNet-Lite0 is ~25 ms, a frozen grid search makes one per
    fit): the template's modules themselves, for a frozen model that never trains them.
    """
    from sktransfer.cache.keys import module_digest, stamp_digest

    template = _TEMPLATES.get(key)
    if template is None:
        template = load()
        modules = [m for _, m in template.blocks] + [template.pool]
        if template.modality == "image":  # the layout the estimators run images in
            for m in modules:
                m.to(memory_format=torch.channels_last)
        # as loaded: a frozen model using the template itself (share=True) flips its
        # requires_grad and train/eval flags; every copy gets these back
        template.loaded_flags = (
            [p.requires_grad for m in modules for p in m.parameters()],
            [sub.training for m in modules for sub in m.modules()],
        )
        _TEMPLATES.put(key, template)
    modules = [m for _, m in template.blocks] + [template.pool]
    if share:
        copies = modules
    else:
        copies = copy.deepcopy(modules)  # one deepcopy: modules shared between blocks stay so
        for original, clone in zip(modules, copies):
            stamp_digest(clone, module_digest(original))
        grads, modes = template.loaded_flags
        for p, flag in zip((p for m in copies for p in m.parameters()), grads):
            p.requires_grad_(flag)
        for sub, flag in zip((sub for m in copies for sub in m.modules()), modes):
            sub.training = flag
    return Backbone(
        name=template.name,
        modality=template.modality,
        blocks=[(name, m) for (name, _), m in zip(template.blocks, copies[:-1])],
        pool=copies[-1],
        feature_dim=template.feature_dim,
        preprocessing=copy.copy(template.preprocessing),
        source=dict(template.source),
        shared=share,
        unsplit_reason=template.unsplit_reason,
    )


def looks_like_hub_id(name):
    """``"owner/name"`` that is not a local path: a Hugging Face hub id."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and " " not in name and not os.path.exists(name)
