"""The safe file format: :func:`save` / :func:`load` without pickle.

One zip file (see :mod:`sktransfer.io.archive`: checksummed members, atomic
write) holding the weights in safetensors and everything else as JSON
(versions, estimator class, parameters, classes, preprocessing, how to rebuild
the backbone), Hugging Face config and tokenizer files. Loading runs no pickled
code: the architecture is rebuilt from the recorded backbone source and the
weights are loaded with ``load_state_dict(strict=True)``. With
``store_backbone="reference"`` the packaged backbone's unchanged weights are
not stored but re-read, and checked against their recorded digest, on load; a LoRA
fit's merged weights are re-made from the stored adapters (:mod:`sktransfer.io.adapters`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import os

import torch
from torch import nn

from sktransfer.io import adapters
from sktransfer.io.archive import (
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS,
    _atomic_write,
    _from_json,
    _read,
    _to_json,
)
from sktransfer.io.hf_members import _JOBLIB_HINT, text_members
from sktransfer.io.pickling import _version

_CLASSES = {
    "PretrainedImageClassifier": "sktransfer.image",
    "PretrainedTextClassifier": "sktransfer.text",
    "PretrainedImageRegressor": "sktransfer.image",
    "PretrainedTextRegressor": "sktransfer.text",
    "ImageEmbedder": "sktransfer.image",
    "TextEmbedder": "sktransfer.text",
}
_SPECIAL_ATTRS = ("module_", "preprocessing_", adapters.ATTR)


def _tensor_digest(state: dict, keys) -> str:
    h = hashlib.sha256()
    for k in sorted(keys):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- save
def _check_savable(est):
    from sklearn.utils.validation import check_is_fitted

    name = type(est).__name__
    if _CLASSES.get(name) != type(est).__module__:
        raise TypeError(f"sktransfer.save supports sktransfer's own estimators, not {name}")
    check_is_fitted(est)
    try:
        params = _to_json(est.get_params(deep=False), "parameter")
    except TypeError as exc:
        raise TypeError(
            f"cannot save {name} safely: a parameter is not a plain value ({exc}). The safe "
            "format rebuilds the model from plain parameters only" + _JOBLIB_HINT
        ) from exc
    from sktransfer.deploy import is_quantized

    if is_quantized(est):
        raise TypeError(
            "cannot save a quantised model; save the float model and use "
            "sktransfer.load(path, quantize='dynamic')"
        )
    from sktransfer.backbones.registry import rebuildable_kinds

    source = getattr(est, "backbone_source_", None)
    if not source or source.get("kind") not in rebuildable_kinds():
        raise TypeError(
            f"cannot save {name} safely: its backbone ({getattr(est, 'backbone_name_', '?')}, "
            f"source {source}) cannot be rebuilt without code" + _JOBLIB_HINT
        )
    return params, dict(source)


def _weights_state(module) -> dict:
    out, seen = {}, set()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[k] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def save(est, path, *, store_backbone="embed"):
    """Save a fitted sktransfer estimator to one file that loads without pickle.

    Parameters
    ----------
    est : fitted sktransfer classifier, regressor or embedder
        Its parameters must be plain values (no ``nn.Module`` backbone, callable
        ``augment`` or ``RandomState``); use ``joblib.dump`` for those.
    path : str or path-like
        The file to write. Written atomically: a failed save leaves any earlier
        file at ``path`` untouched. Temp files that killed saves of ``path`` left
        beside it (``.<name>.<pid>@<host>.<random>.tmp``) are removed first when
        their process is gone (or, if it cannot be checked, after 24 hours).
    store_backbone : {"embed", "reference"}, default="embed"
        ``"embed"``: all weights in the file (self-contained). ``"reference"``
        (packaged backbones with default weights only): tensors equal to the
        packaged weights are not stored, so a frozen model is a few kilobytes;
        loading reads the packaged weights again and checks their digest. An
        ``adapter="lora"`` model then stores its adapters and head (and any other
        tensor training changed) and re-merges the adapters on load (needs ``peft``).

    Returns
    -------
    str
        The path written.
    """
    from safetensors.torch import save as st_save

    if store_backbone not in ("embed", "reference"):
        raise ValueError(f"store_backbone must be 'embed' or 'reference', got {store_backbone!r}")
    params, source = _check_savable(est)
    state = _weights_state(est.module_)
    lora, lora_tensors = adapters.to_file(est)
    attrs = {}
    for key, value in vars(est).items():
        if key.endswith("_") and not key.startswith("_") and key not in _SPECIAL_ATTRS:
            attrs[key] = _to_json(value, f"fitted attribute {key}")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "versions": _library_versions(),
        "estimator": type(est).__name__,
        "params": params,
        "attributes": attrs,
        "modality": est._modality,
        "store_backbone": store_backbone,
        "n_frozen": int(est.module_.n_frozen),
        "block_names": list(est.module_.block_names),
        "arch": {},
    }
    members = {}
    prep = est.preprocessing_
    if dataclasses.is_dataclass(prep) and hasattr(prep, "tokenizer"):
        fields = {f.name: getattr(prep, f.name) for f in dataclasses.fields(prep)}
        fields.pop("tokenizer")
        meta["preprocessing"] = _to_json(fields, "preprocessing")
    else:
        meta["preprocessing"] = _to_json(dataclasses.asdict(prep), "preprocessing")
    if getattr(prep, "tokenizer", None) is not None and not _is_reference(source, store_backbone):
        text, arch = text_members(est.module_, prep.tokenizer)  # the config and tokenizer files
        members.update(text)
        meta["arch"].update(arch)
    first = est.module_.blocks[0] if len(est.module_.blocks) else None
    if source.get("kind") == "torchvision" and hasattr(first, "image_size"):
        meta["arch"]["image_size"] = int(first.image_size)  # ViT: set by the weights
    if store_backbone == "reference":
        if not _is_reference(source, store_backbone):
            raise ValueError(
                "store_backbone='reference' needs a packaged backbone with its default weights; "
                f"this model's backbone is {source}. Use store_backbone='embed'"
            )
        ref_net = _build_net(meta, source, members, state)[0]
        if lora is not None:  # the reference: the packaged weights + the merged adapters
            adapters.merge_into(ref_net, {**lora, "tensors": est.lora_adapters_["tensors"]})
        ref_state = ref_net.state_dict()
        same = [
            k
            for k, v in state.items()
            if not k.startswith("head.")
            and k in ref_state
            and ref_state[k].shape == v.shape
            and ref_state[k].dtype == v.dtype
            and torch.equal(ref_state[k], v)
        ]
        meta["referenced"] = {"keys": sorted(same), "sha256": _tensor_digest(state, same)}
        state = {k: v for k, v in state.items() if k not in set(same)}
    meta["backbone_source"] = _to_json(source, "backbone_source_")
    if lora is not None:
        meta["lora_adapters"] = _to_json(lora, "lora_adapters_")
        state = {**state, **lora_tensors}
    members[WEIGHTS] = st_save(state) if state else st_save({})
    _atomic_write(os.fspath(path), meta, members)
    return os.fspath(path)


def _is_reference(source, store_backbone):
    return (
        store_backbone == "reference"
        and source.get("kind") == "packaged"
        and str(source.get("weights")) == "default"
    )


def _library_versions():
    from importlib import metadata

    out = {"sktransfer": _version(), "torch": torch.__version__}
    for name in ("transformers", "safetensors", "numpy", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _build_net(meta, source, members, state):
    """``(TransferNet, tokenizer or None)``: the architecture, with reference or random weights.

    Every source rebuilds its own architecture (``BackboneSource.rebuild``, reached through
    :func:`~sktransfer.backbones.registry.rebuild_backbone`), from the recorded ``source`` and
    ``arch``, the file's plain data members, the stored weights' size and the preprocessing.
    """
    from sktransfer.backbones import resolve_backbone
    from sktransfer.backbones.registry import rebuild_backbone
    from sktransfer.freezing import TransferNet

    kind, modality = source.get("kind"), meta["modality"]
    reference = meta["store_backbone"] == "reference"
    if reference or kind == "packaged":
        _check_packaged(source, modality)
    if reference:
        backbone = resolve_backbone(source["name"], modality, weights="default")
    else:  # each source leaf rebuilds its own architecture (random weights)
        arch = {
            **meta["arch"],
            "weight_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "preprocessing": _from_json(meta["preprocessing"]),
        }
        data = {k: v for k, v in members.items() if k != WEIGHTS}
        backbone = rebuild_backbone(source, arch, members=data)
    if backbone.modality != modality:
        raise ValueError(f"backbone source {source!r} is not a {modality} backbone")
    pool, tokenizer = backbone.pool, None
    if modality == "text":
        from sktransfer.backbones.huggingface import TextPool

        prep = meta["preprocessing"]
        pool = TextPool(prep["pooling"], normalize=prep["normalize"])
        tokenizer = backbone.preprocessing.tokenizer
    head = nn.Identity()
    if "head.weight" in state:
        out_f, in_f = state["head.weight"].shape
        head = nn.Linear(in_f, out_f, bias="head.bias" in state)
    names = [n for n, _ in backbone.blocks]
    if names != meta["block_names"]:
        raise ValueError(
            f"the rebuilt backbone has blocks {names}, the saved model {meta['block_names']}; "
            "the backbone library changed since saving"
        )
    net = TransferNet([m for _, m in backbone.blocks], names, pool, head, n_frozen=meta["n_frozen"])
    return net.eval(), tokenizer


def _check_packaged(source, modality):
    """A packaged (or referenced) backbone must be a registered packaged name, never a path.

    Otherwise a file could make :func:`load` read a model directory or hub id it
    names (whose weights loaders may unpickle) or download torchvision weights.
    """
    from sktransfer.backbones import list_backbones

    names = {b.name for b in list_backbones(modality) if b.source == "packaged"}
    if source.get("kind") != "packaged" or source.get("name") not in names:
        raise ValueError(
            f"the saved model names backbone {source!r}; only the packaged backbones "
            f"{sorted(names)} are rebuilt from their registry name (store_backbone='reference' "
            "or kind 'packaged'); nothing named by a file is read from disk or the network"
        )


def load(path, device=None, quantize=None):
    """Load an estimator written by :func:`save`; no pickled code is run.

    Parameters
    ----------
    path : str or path-like
    device : str or None, default=None
        Override the saved ``device`` parameter (``"auto"``, ``"cpu"``, ``"cuda:0"``).
    quantize : {None, "dynamic"}, default=None
        ``"dynamic"``: int8 dynamic quantisation of the Linear layers (CPU scoring),
        see :func:`sktransfer.deploy.quantize_dynamic`.

    Returns
    -------
    estimator
        The fitted estimator; its predictions equal the saved one's.

    Raises
    ------
    ValueError
        A truncated, corrupted or modified file (the message names the path and
        the member), a newer file format, or weights that do not fit the rebuilt
        architecture. Refusing costs bounded time and memory: the manifest is
        checked first and no member is inflated past the size it records.
    RuntimeError
        The file was written by a newer sktransfer version.
    """
    if quantize not in (None, "dynamic"):
        raise ValueError(f"quantize must be None or 'dynamic', got {quantize!r}")
    meta, members = _read(path)
    with _malformed(path):
        est = _rebuild(path, meta, members)
    if device is not None:
        from sktransfer.training.batches import resolve_device

        resolve_device(device)  # fail early on a device this machine lacks
        est.set_params(device=device)
    if quantize == "dynamic":
        from sktransfer.deploy import quantize_dynamic

        est = quantize_dynamic(est)
    return est


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
def _malformed(path):
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


def _rebuild(path, meta, members):
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    wrong = sorted(k for k, t in _META_TYPES.items() if not isinstance(meta.get(k), t))
    if wrong or meta["modality"] not in ("image", "text") or WEIGHTS not in members:
        raise ValueError(
            f"{os.fspath(path)!r} has a malformed manifest (fields {wrong}, modality "
            f"{meta.get('modality')!r}, {WEIGHTS} {'present' if WEIGHTS in members else 'missing'})"
        )
    cls_name = meta["estimator"]
    if cls_name not in _CLASSES:
        raise ValueError(f"{os.fspath(path)!r} holds an unknown estimator class {cls_name!r}")
    cls = getattr(importlib.import_module(_CLASSES[cls_name]), cls_name)
    params = _from_json(meta["params"])
    try:
        est = cls(**params)
    except TypeError as exc:
        raise ValueError(
            f"the saved {cls_name} parameters do not fit sktransfer {_version()} (saved with "
            f"{meta['versions'].get('sktransfer')}): {exc}"
        ) from exc
    try:
        state = st_load(members[WEIGHTS])
    except SafetensorError as exc:
        raise ValueError(f"{os.fspath(path)!r}: unreadable {WEIGHTS} ({exc})") from exc
    source = _from_json(meta["backbone_source"])
    lora, state = adapters.from_file(meta, state)
    net, tokenizer = _build_net(meta, source, members, state)
    if meta["store_backbone"] == "reference":
        if lora is not None:  # re-merged into the packaged weights, checked by the digest
            adapters.merge_into(net, lora)
        ref_keys = meta["referenced"]["keys"]
        full = net.state_dict()
        if _tensor_digest(full, ref_keys) != meta["referenced"]["sha256"]:
            raise ValueError(
                f"the packaged weights of {source.get('name')!r} differ from those the model "
                "was saved with (was the weights package upgraded?); re-save with "
                "store_backbone='embed'"
            )
        state = {**{k: full[k] for k in ref_keys}, **state}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the saved weights do not fit the rebuilt architecture: {exc}") from exc
    net.eval()
    est.module_ = net
    for key, value in meta["attributes"].items():
        setattr(est, key, _from_json(value))
    if lora is not None:
        setattr(est, adapters.ATTR, lora)
    prep_fields = dict(meta["preprocessing"])
    if meta["modality"] == "text":
        from sktransfer.backbones import TextPreprocessing

        est.preprocessing_ = TextPreprocessing(tokenizer=tokenizer, **_from_json(prep_fields))
    else:
        from sktransfer.backbones import ImagePreprocessing

        est.preprocessing_ = ImagePreprocessing(**_from_json(prep_fields))
    return est
