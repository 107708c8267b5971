"""Cross-checks of a loaded file: parameters, preprocessing and weights.

A file that passed its checksums is only known to be unchanged since *some* writer
wrote it, not to hold a model sktransfer could have fitted. :func:`sktransfer.load`
therefore checks every value it sets against the estimator class and against the
rest of the file before the estimator is returned (the fitted attributes in
:mod:`sktransfer.io.fitted`); a failure is a ``ValueError`` (the loader adds the
path). What the checks guarantee:

* **Parameters** are the class's own, each validated by its ``_parameter_constraints``
  (scikit-learn's validation, as ``fit`` does), ``backbone`` a name or path string.
  Machine-local settings (:data:`MACHINE_LOCAL`: ``cache_dir``, ``device``,
  ``num_workers``) never travel: :func:`sktransfer.save` stores their defaults and
  :func:`sktransfer.load` resets any other stored value with a warning, so a file
  never chooses where predict writes, which device it claims or how many processes
  it starts. Parameters that size predict work are bounded (:data:`PREDICT_BOUNDS`).
* **Preprocessing** has exactly the fields of its modality, of the right types;
  ``image_size`` is at most :data:`MAX_IMAGE_SIZE` pixels and ``resize_size`` at most
  twice it; ``max_length`` is at most what the network's position embeddings hold.
* **Weights**: floating tensors are finite and stored as floating point, integer
  buffers as integers.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings

import torch

#: Settings of the machine that runs a model, not of the model: never stored in a file.
MACHINE_LOCAL = ("cache_dir", "device", "num_workers")
#: Largest ``image_size`` a file may set: predict work per image is bounded by it
#: (3000 px made 8 small images cost 2.5 GB and 67 s).
MAX_IMAGE_SIZE = 1024
#: Largest ``max_length`` when the network does not say (no position embeddings).
MAX_TEXT_LENGTH = 8192
#: Upper bounds of the parameters that size predict work (inclusive).
PREDICT_BOUNDS = {"tta": 32, "inference_batch_size": 4096}
_EMBEDDER_BATCH = 4096  # an embedder's batch_size is its inference micro-batch


class LoadWarning(UserWarning):
    """A loaded file held a value sktransfer ignored (see :data:`MACHINE_LOCAL`)."""


def _defaults(cls) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def params_to_save(cls, params: dict) -> dict:
    """``params`` with every machine-local setting at its default (see the module doc)."""
    defaults = _defaults(cls)
    return {
        k: (defaults[k] if k in MACHINE_LOCAL and k in defaults else v) for k, v in params.items()
    }


def checked_params(cls, params, where) -> dict:
    """The stored parameters to construct ``cls`` with; machine-local ones reset to defaults.

    ``where`` names the file in the warning. Unknown names are refused; values are
    validated once the estimator exists (:func:`validate_params`).
    """
    if not isinstance(params, dict):
        raise ValueError("the saved parameters are not a mapping")
    defaults = _defaults(cls)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"{unknown} are not parameters of {cls.__name__}")
    reset = [k for k in MACHINE_LOCAL if k in params and k in defaults and params[k] != defaults[k]]
    if reset:
        stored = ", ".join(f"{k}={params[k]!r}" for k in reset)
        warnings.warn(
            f"{where}: ignoring the machine-local settings stored in the file ({stored}); "
            "a file never chooses the cache directory, device or worker processes of the "
            "machine that loads it. They are reset to their defaults; set them after loading "
            "(sktransfer.load(path, device=...), est.set_params(...))",
            LoadWarning,
            stacklevel=3,
        )
    return {**params, **{k: defaults[k] for k in reset}}


def validate_params(est) -> None:
    """Every parameter of the freshly constructed ``est`` as ``fit`` would accept it, and
    within :data:`PREDICT_BOUNDS`; ``ValueError`` naming the parameter otherwise."""
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        est._validate_params()
    except InvalidParameterError as exc:
        raise ValueError(f"a saved parameter is invalid: {exc}") from None
    backbone = est.get_params(deep=False).get("backbone")
    if backbone is not None and not isinstance(backbone, str):
        raise ValueError(
            f"the saved parameter backbone is a {type(backbone).__name__}; a file stores a "
            "registry name or path string (or None)"
        )
    bounds = dict(PREDICT_BOUNDS)
    if not hasattr(est, "predict"):  # an embedder: batch_size is its inference batch
        bounds["batch_size"] = _EMBEDDER_BATCH
    for name, limit in bounds.items():
        value = getattr(est, name, None)
        if value is not None and value > limit:
            raise ValueError(
                f"the saved parameter {name}={value} is out of range (at most {limit} in a "
                "file: it sizes the work predict does)"
            )


# --------------------------------------------------------------------------- preprocessing
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_fields(prep, cls):
    names = {f.name for f in dataclasses.fields(cls)} - {"tokenizer"}
    if not isinstance(prep, dict) or set(prep) != names:
        got = sorted(prep) if isinstance(prep, dict) else type(prep).__name__
        raise ValueError(f"preprocessing has fields {got}, expected {sorted(names)}")


def check_image_preprocessing(prep) -> None:
    """Sizes bounded by :data:`MAX_IMAGE_SIZE`, finite mean and std, a known interpolation."""
    from sktransfer.backbones import ImagePreprocessing
    from sktransfer.inputs.crops import INTERPOLATION

    _check_fields(prep, ImagePreprocessing)
    size, resize = prep["image_size"], prep["resize_size"]
    if not _is_int(size) or not 8 <= size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"preprocessing image_size {size!r} is out of range: a file may set 8..."
            f"{MAX_IMAGE_SIZE} pixels (it bounds the work predict does per image)"
        )
    if resize is not None and (not _is_int(resize) or not 8 <= resize <= 2 * size):
        raise ValueError(
            f"preprocessing resize_size {resize!r} is out of range for image_size {size}: "
            f"None or 8...{2 * size} pixels"
        )
    for name in ("mean", "std"):
        v = prep[name]
        if not (isinstance(v, (tuple, list)) and len(v) == 3 and all(_is_real(x) for x in v)):
            raise ValueError(f"preprocessing {name} {v!r} is not 3 finite numbers")
    if not all(1e-3 <= s <= 1e3 for s in prep["std"]) or not all(
        abs(m) <= 1e3 for m in prep["mean"]
    ):
        raise ValueError(f"preprocessing mean {prep['mean']} or std {prep['std']} is out of range")
    if prep["interpolation"] not in INTERPOLATION:
        raise ValueError(
            f"preprocessing interpolation {prep['interpolation']!r} is not one of "
            f"{sorted(INTERPOLATION)}"
        )


def check_text_preprocessing(prep) -> None:
    """A known pooling, a bool ``normalize``, ``max_length`` in 2...:data:`MAX_TEXT_LENGTH`
    (the network's own limit is checked by :func:`check_text_length`)."""
    from sktransfer.backbones import TextPreprocessing

    _check_fields(prep, TextPreprocessing)
    if prep["pooling"] not in ("mean", "cls") or not isinstance(prep["normalize"], bool):
        raise ValueError(
            f"preprocessing pooling {prep['pooling']!r} / normalize {prep['normalize']!r}: "
            "expected 'mean' or 'cls' and a bool"
        )
    length = prep["max_length"]
    if not _is_int(length) or not 2 <= length <= MAX_TEXT_LENGTH:
        raise ValueError(
            f"preprocessing max_length {length!r} is out of range (2...{MAX_TEXT_LENGTH})"
        )


def check_text_length(net, max_length) -> None:
    """``max_length`` within the position embeddings of the rebuilt network (if it has any)."""
    from sktransfer.backbones.huggingface import position_limit

    for module in net.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "max_position_embeddings"):
            limit = position_limit(config)
            if limit is not None and max_length > limit:
                raise ValueError(
                    f"preprocessing max_length {max_length} exceeds the {limit} positions of "
                    "the saved network"
                )
            return


def check_image_size(net, image_size) -> None:
    """A first block that only takes one input size (a ViT without interpolation) gets it."""
    first = net.blocks[0] if len(net.blocks) else None
    fixed = getattr(first, "image_size", None)
    if fixed is None or getattr(first, "interpolate", False):
        return
    fixed = tuple(fixed) if isinstance(fixed, (tuple, list)) else (fixed, fixed)
    if tuple(int(s) for s in fixed) != (image_size, image_size):
        raise ValueError(
            f"preprocessing image_size {image_size} does not fit the saved network, which "
            f"takes {fixed[0]}x{fixed[1]} images"
        )


# --------------------------------------------------------------------------- weights
def check_weights(state: dict, net) -> None:
    """Stored tensors: floating where the network's are, integer where they are, finite."""
    target = net.state_dict()
    for key, t in state.items():
        want = target.get(key)
        if want is not None and want.is_floating_point() != t.is_floating_point():
            raise ValueError(
                f"the saved weight {key!r} is {t.dtype}, the network's is {want.dtype}"
            )
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"the saved weight {key!r} holds NaN or infinite values")
