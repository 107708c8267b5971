"""Reading weight files: a state dict from ``torch.save`` or ``.safetensors``, key previews.

Shared by the image sources that accept ``weights="/path/to/file"`` (torchvision, timm).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

__all__ = ["looks_like_path", "preview", "read_state_dict"]

PATH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar")


def looks_like_path(weights) -> bool:
    """Whether ``weights`` names a file (a path-like, an existing path, a weight suffix)."""
    if isinstance(weights, os.PathLike):
        return True
    s = str(weights)
    return (
        os.path.exists(s)
        or "/" in s
        or os.sep in s
        or s.startswith(("~", "."))
        or s.lower().endswith(PATH_SUFFIXES)
    )


def read_state_dict(path: str) -> dict:
    """The mapping of names to tensors in ``path``, unwrapped from ``state_dict``/``model``.

    Parameters
    ----------
    path : str
        A ``torch.save`` file (read with ``weights_only=True``) or ``.safetensors``.

    Returns
    -------
    dict
        Names to tensors; a ``module.`` prefix (DataParallel) is removed.

    Raises
    ------
    ValueError
        The file is missing or holds no state dict.
    """
    if not os.path.isfile(path):
        raise ValueError(f"weights file not found: {path!r}")
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"could not read {path!r} as a state dict ({type(exc).__name__}: {exc}). "
            "Save weights with torch.save(model.state_dict(), path) or as .safetensors"
        ) from exc
    for wrapper_key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper_key), Mapping):
            if not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = obj[wrapper_key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path!r} does not hold a state dict (a mapping of names to tensors)")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def preview(keys: list[str], n: int = 8) -> str:
    """``[k1, k2, ...] (+m more)``: the first ``n`` keys for an error message."""
    if not keys:
        return "none"
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more
