"""Import helpers for optional dependencies with broken native parts.

The registry's ``torchvision==0.28.0`` wheel is a CUDA build. Next to a CPU
``torch`` its native library fails to load, and ``import torchvision`` then
dies with ``RuntimeError: operator torchvision::nms does not exist`` because
``torchvision._meta_registrations`` registers fake kernels for ``nms`` and
``qnms`` unconditionally. ``transformers`` imports torchvision whenever it is
installed, so ``from transformers import BertModel`` fails as well.

Defining the two operator *schemas* (no kernels) is enough for the import to
succeed; models, weight metadata and transforms then work, while the native
ops (``torchvision.ops.nms``, ``torchvision.io``) stay unavailable.
The schemas are only defined when the real operators are missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

import torch

__all__ = ["ensure_transformers_importable", "import_torchvision", "torchvision_installed"]

TORCHVISION_PIN = "torchvision==0.28.0"

# Schemas as torchvision's C++ sources define them (csrc/ops/nms.cpp and
# csrc/ops/quantized/cpu/qnms_kernel.cpp); _meta_registrations.py registers fake
# kernels with the same arguments.
_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING_OP_MESSAGE = "operator torchvision::nms does not exist"

# Kept alive for the life of the process: dropping a Library deregisters its ops.
_SCHEMA_LIBRARY: torch.library.Library | None = None
_LOCK = threading.RLock()
_TRANSFORMERS_READY = False


def torchvision_installed() -> bool:
    """Tell whether torchvision is installed, without importing it.

    Returns
    -------
    bool
        True when ``torchvision`` can be found on the import path.
    """
    if "torchvision" in sys.modules and sys.modules["torchvision"] is not None:
        return True
    try:
        return importlib.util.find_spec("torchvision") is not None
    except (ImportError, ValueError):
        return False


def _op_exists(name: str) -> bool:
    """Tell whether ``torchvision::<name>`` has a registered schema."""
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def _register_missing_schemas() -> list[str]:
    """Define the schemas of torchvision ops that are not registered yet.

    Returns
    -------
    list of str
        The names of the operators that were defined by this call.
    """
    global _SCHEMA_LIBRARY
    defined = []
    with _LOCK:
        for name, schema in _OP_SCHEMAS.items():
            if _op_exists(name):
                continue
            if _SCHEMA_LIBRARY is None:
                _SCHEMA_LIBRARY = torch.library.Library("torchvision", "DEF")
            _SCHEMA_LIBRARY.define(schema)
            defined.append(name)
    return defined


def _forget_partial_torchvision() -> None:
    """Drop half-imported ``torchvision`` modules so a new import starts clean."""
    for mod_name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod_name]


def _not_installed_error() -> ImportError:
    return ImportError(
        "torchvision is required for torchvision backbones but is not installed. "
        f'Install it with: pip install "sktransfer[torchvision]" (it pins {TORCHVISION_PIN}, '
        "the build that matches torch 2.13.0)."
    )


def import_torchvision() -> ModuleType:
    """Import torchvision, working around a CUDA build next to a CPU torch.

    Returns
    -------
    module
        The ``torchvision`` module.

    Raises
    ------
    ImportError
        If torchvision is not installed.
    RuntimeError
        If the import fails for a reason other than the missing ``nms`` schema.
    """
    with _LOCK:
        module = sys.modules.get("torchvision")
        if module is not None and hasattr(module, "models"):
            return module
        if not torchvision_installed():
            raise _not_installed_error()
        try:
            return importlib.import_module("torchvision")
        except ModuleNotFoundError as exc:
            if exc.name == "torchvision":
                raise _not_installed_error() from exc
            raise
        except RuntimeError as exc:
            if _MISSING_OP_MESSAGE not in str(exc) and "torchvision::qnms" not in str(exc):
                raise
            first_error = exc
        _forget_partial_torchvision()
        if not _register_missing_schemas():
            # The schemas were there after all: the failure has another cause.
            raise first_error
        importlib.invalidate_caches()
        try:
            return importlib.import_module("torchvision")
        except Exception as exc:
            _forget_partial_torchvision()
            raise RuntimeError(
                f"torchvision could not be imported even after registering the missing operator "
                f"schemas ({exc}). Reinstall the pinned build: pip install {TORCHVISION_PIN}"
            ) from exc


def ensure_transformers_importable() -> None:
    """Make ``transformers`` model classes importable while torchvision is installed.

    ``transformers`` imports torchvision when it is installed; with the CUDA
    torchvision build next to a CPU torch that import fails and so do model
    imports such as ``from transformers import BertModel``. Call this before
    importing from ``transformers``. It is idempotent and cheap after the first
    call, and does nothing when torchvision is not installed.
    """
    global _TRANSFORMERS_READY
    if _TRANSFORMERS_READY:
        return
    with _LOCK:
        if _TRANSFORMERS_READY:
            return
        if torchvision_installed():
            try:
                import_torchvision()
            except (ImportError, RuntimeError):
                # Nothing more can be done here; transformers reports its own error.
                pass
        _TRANSFORMERS_READY = True
