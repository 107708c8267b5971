"""Persistence: device-safe pickling (joblib) and the version stamp.

A pickled estimator carries CPU tensors only (no optimizer state, no cache, no
training data) and records the sktransfer version that wrote it, so it loads on
a machine without a GPU and then resolves ``device="auto"`` there. Unpickling
first makes torchvision/transformers importable (see :func:`_rebuild`).

The safe, pickle-free file format behind :func:`sktransfer.save` /
:func:`sktransfer.load` lives in :mod:`sktransfer.io.safe_format` (estimator <->
file) and :mod:`sktransfer.io.archive` (the checksummed zip).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

_VERSION_KEY = "_sktransfer_version"


def sktransfer_version() -> str:
    """The installed sktransfer's version (what a file written now records)."""
    from sktransfer import __version__

    return __version__


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0", "0"])[:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (0, 0)


def _on_cpu(module: nn.Module) -> nn.Module:
    """``module`` itself when all its tensors are on the CPU, else a CPU copy."""
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return module
    return copy.deepcopy(module).to("cpu")


def _rebuild(cls):
    """Unpickling entry point: make torchvision/transformers importable, then an empty ``cls``.

    Pickle calls this before it unpickles the estimator's state, which may hold
    transformers tokenizers or torchvision modules; in a fresh process (a joblib
    file, a Dask worker) their imports would otherwise hit the CPU-torch /
    CUDA-torchvision mismatch that :mod:`sktransfer.backbones.compat` works around.
    """
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    _name_moved_classes()
    return cls.__new__(cls)


#: classes a pickled estimator may hold, by the module that defined them before they moved
MOVED = {
    "sktransfer.backbones._base": {
        "ImagePreprocessing": "sktransfer.inputs.preprocessing",
        "TextPreprocessing": "sktransfer.inputs.preprocessing",
        "TextState": "sktransfer.backbones.base",
        "Backbone": "sktransfer.backbones.base",
    },
}


def _name_moved_classes():
    """Let pickles written before a class moved find it under its old module path."""
    import importlib
    import sys
    import types

    for old, names in MOVED.items():
        if old in sys.modules:
            continue
        module = types.ModuleType(old, f"old path of {sorted(names)} (unpickling only)")
        for name, home in names.items():
            setattr(module, name, getattr(importlib.import_module(home), name))
        sys.modules[old] = module


class PicklableModulesMixin:
    """``__getstate__`` moves fitted modules to the CPU and stamps the version."""

    def __reduce_ex__(self, protocol):
        return (_rebuild, (type(self),), self.__getstate__())

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        for key in ("_incremental_", "_incremental_state_"):  # partial_fit's optimizer etc.
            state.pop(key, None)
        for key, value in list(state.items()):
            if isinstance(value, nn.Module):
                state[key] = _on_cpu(value)
            elif isinstance(value, torch.Tensor):
                state[key] = value.detach().cpu()
        state[_VERSION_KEY] = sktransfer_version()
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop(_VERSION_KEY, None)
        if saved is not None:
            check_version(saved)
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:  # pragma: no cover
            self.__dict__.update(state)


def check_version(saved: str) -> None:
    """Refuse models from a newer sktransfer; warn on other minor versions."""
    here = sktransfer_version()
    if _major_minor(saved) > _major_minor(here):
        raise RuntimeError(
            f"this model was saved with sktransfer {saved}, newer than the installed {here}; "
            f"upgrade sktransfer (pip install 'sktransfer>={saved}') to load it"
        )
    if _major_minor(saved) != _major_minor(here):
        warnings.warn(
            f"loading a model saved with sktransfer {saved} into sktransfer {here}; "
            "predictions may differ, re-save it with this version",
            stacklevel=3,
        )
