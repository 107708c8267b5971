"""The manifest of a loaded file, checked before anything is built from it.

:func:`construct` turns a verified manifest into an estimator of checked parameters with
its decoded, checked fitted attributes and preprocessing (:mod:`sktransfer.io.checks`,
:mod:`sktransfer.io.fitted`); :func:`sktransfer.load` then builds and checks the network.
:func:`check_manifest` is what :func:`sktransfer.save` runs before writing, so that it
never writes a file load would refuse.
"""

from __future__ import annotations

import contextlib
import importlib
import os

from sktransfer._estimator.pickling import sktransfer_version
from sktransfer.io import checks, fitted
from sktransfer.io.archive import from_json

_CLASSES = {
    "PretrainedImageClassifier": "sktransfer.image",
    "PretrainedTextClassifier": "sktransfer.text",
    "PretrainedImageRegressor": "sktransfer.image",
    "PretrainedTextRegressor": "sktransfer.text",
    "ImageEmbedder": "sktransfer.image",
    "TextEmbedder": "sktransfer.text",
}
_META_TYPES = {
    "estimator": str,
    "params": dict,
    "attributes": dict,
    "modality": str,
    "store_backbone": str,
    "n_frozen": int,
    "block_names": list,
    "arch": dict,
    "preprocessing": dict,
    "backbone_source": dict,
}


@contextlib.contextmanager
def malformed(path):
    """A manifest that passed its checksum but is not what :func:`save` writes: ``ValueError``."""
    try:
        yield
    except ValueError as exc:
        if os.fspath(path) in str(exc):
            raise
        raise ValueError(f"cannot load {os.fspath(path)!r}: {exc}") from exc
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(
            f"{os.fspath(path)!r} has a manifest this sktransfer cannot rebuild a model from "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def check_manifest(cls, meta, attrs, prep) -> None:
    """The checks that need no network (save runs them too: it never writes a file that
    :func:`load` would refuse)."""
    fitted.check_attributes(cls, meta, attrs)
    if cls._modality == "text":
        checks.check_text_preprocessing(prep)
    else:
        checks.check_image_preprocessing(prep)


def construct(path, meta):
    """``(est, attrs, preprocessing)``: the estimator of checked parameters, the decoded and
    checked fitted attributes and preprocessing (nothing built yet)."""
    wrong = sorted(k for k, t in _META_TYPES.items() if not isinstance(meta.get(k), t))
    if (
        wrong
        or meta["modality"] not in ("image", "text")
        or meta["store_backbone"] not in ("embed", "reference")
    ):
        raise ValueError(
            f"{os.fspath(path)!r} has a malformed manifest (fields {wrong}, modality "
            f"{meta.get('modality')!r}, store_backbone {meta.get('store_backbone')!r})"
        )
    cls_name = meta["estimator"]
    if cls_name not in _CLASSES:
        raise ValueError(f"{os.fspath(path)!r} holds an unknown estimator class {cls_name!r}")
    cls = getattr(importlib.import_module(_CLASSES[cls_name]), cls_name)
    attrs = {k: from_json(v) for k, v in meta["attributes"].items()}
    prep = from_json(meta["preprocessing"])
    check_manifest(cls, meta, attrs, prep)
    params = checks.checked_params(cls, from_json(meta["params"]), repr(os.fspath(path)))
    try:
        est = cls(**params)
    except TypeError as exc:
        raise ValueError(
            f"the saved {cls_name} parameters do not fit sktransfer {sktransfer_version()} "
            f"(saved with {meta['versions'].get('sktransfer')}): {exc}"
        ) from exc
    checks.validate_params(est)
    return est, attrs, prep
