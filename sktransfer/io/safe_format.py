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

import dataclasses
import os

import torch

from sktransfer._estimator.ownership import read_network, read_preprocessing
from sktransfer._estimator.pickling import sktransfer_version
from sktransfer.io import adapters, checks, fitted
from sktransfer.io.archive import (
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS,
    _atomic_write,
    _read,
    _to_json,
    from_json,
)
from sktransfer.io.hf_members import _JOBLIB_HINT, text_members
from sktransfer.io.manifest import _CLASSES, check_manifest, construct, malformed
from sktransfer.io.rebuild import build_net, tensor_digest
from sktransfer.runtime.process_group import is_writer

_SPECIAL_ATTRS = ("module_", "preprocessing_", adapters.ATTR)


# --------------------------------------------------------------------------- save
def _check_savable(est):
    from sklearn.utils.validation import check_is_fitted

    name = type(est).__name__
    if _CLASSES.get(name) != type(est).__module__:
        raise TypeError(f"sktransfer.save supports sktransfer's own estimators, not {name}")
    check_is_fitted(est)
    try:
        params = checks.params_to_save(type(est), est.get_params(deep=False))
        params = _to_json(params, "parameter")
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


def _meta(est, net, params, store_backbone) -> dict:
    """The manifest's plain part: format, versions, class, parameters, fitted attributes."""
    attrs = {}
    for key, value in vars(est).items():
        if key.endswith("_") and not key.startswith("_") and key not in _SPECIAL_ATTRS:
            attrs[key] = _to_json(value, f"fitted attribute {key}")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "versions": _library_versions(),
        "estimator": type(est).__name__,
        "params": params,
        "attributes": attrs,
        "modality": est._modality,
        "store_backbone": store_backbone,
        "n_frozen": int(net.n_frozen),
        "block_names": list(net.block_names),
        "arch": {},
    }


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
        no writer holds their lock (a live save in another process or container
        keeps its own; see :mod:`sktransfer.fs.atomic`).
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

    Raises
    ------
    ValueError
        The model holds values :func:`load` would refuse (e.g. ``image_size`` above
        1024, see :mod:`sktransfer.io.checks`): no file is written.

    Notes
    -----
    Machine-local settings (``cache_dir``, ``device``, ``num_workers``) are stored as
    their defaults: a file never chooses them for the machine that loads it. In a
    data-parallel run (``torchrun``, :mod:`sktransfer.runtime.process_group`) only rank 0
    writes; every rank checks the model as above.
    """
    from safetensors.torch import save as st_save

    if store_backbone not in ("embed", "reference"):
        raise ValueError(f"store_backbone must be 'embed' or 'reference', got {store_backbone!r}")
    params, source = _check_savable(est)
    net = read_network(est)  # (reading est.module_ would copy a shared frozen backbone)
    state = _weights_state(net)
    lora, lora_tensors = adapters.to_file(est)
    meta = _meta(est, net, params, store_backbone)
    members, prep = {}, read_preprocessing(est)
    meta["preprocessing"] = _preprocessing_json(prep)
    meta["backbone_source"] = _to_json(source, "backbone_source_")
    _check_before_writing(est, meta)
    if getattr(prep, "tokenizer", None) is not None and not _is_reference(source, store_backbone):
        text, arch = text_members(net, prep.tokenizer)  # the config and tokenizer files
        members.update(text)
        meta["arch"].update(arch)
    first = net.blocks[0] if len(net.blocks) else None
    if source.get("kind") == "torchvision" and hasattr(first, "image_size"):
        meta["arch"]["image_size"] = int(first.image_size)  # ViT: set by the weights
    if store_backbone == "reference":
        state = _referenced(est, meta, source, members, state, lora)
    if lora is not None:
        meta["lora_adapters"] = _to_json(lora, "lora_adapters_")
        state = {**state, **lora_tensors}
    members[WEIGHTS] = st_save(state) if state else st_save({})
    if is_writer():  # a data-parallel run: rank 0 writes, the other ranks hold the same model
        _atomic_write(os.fspath(path), meta, members)
    return os.fspath(path)


def _preprocessing_json(prep):
    if dataclasses.is_dataclass(prep) and hasattr(prep, "tokenizer"):
        fields = {f.name: getattr(prep, f.name) for f in dataclasses.fields(prep)}
        fields.pop("tokenizer")
        return _to_json(fields, "preprocessing")
    return _to_json(dataclasses.asdict(prep), "preprocessing")


def _referenced(est, meta, source, members, state, lora):
    """``store_backbone="reference"``: the state without the tensors equal to the packaged
    weights (plus merged adapters); their keys and digest go into ``meta["referenced"]``."""
    if not _is_reference(source, "reference"):
        raise ValueError(
            "store_backbone='reference' needs a packaged backbone with its default weights; "
            f"this model's backbone is {source}. Use store_backbone='embed'"
        )
    ref_net = build_net(meta, source, members, state)[0]
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
    meta["referenced"] = {"keys": sorted(same), "sha256": tensor_digest(state, same)}
    return {k: v for k, v in state.items() if k not in set(same)}


def _check_before_writing(est, meta):
    """The load-time checks on what save is about to write: never a file load refuses."""
    try:
        checks.validate_params(type(est)(**from_json(meta["params"])))
        attrs = {k: from_json(v) for k, v in meta["attributes"].items()}
        check_manifest(type(est), meta, attrs, from_json(meta["preprocessing"]))
    except ValueError as exc:
        raise ValueError(
            f"cannot save this {type(est).__name__}: sktransfer.load would refuse the file "
            f"({exc})" + _JOBLIB_HINT
        ) from exc


def _is_reference(source, store_backbone):
    return (
        store_backbone == "reference"
        and source.get("kind") == "packaged"
        and str(source.get("weights")) == "default"
    )


def _library_versions():
    from importlib import metadata

    out = {"sktransfer": sktransfer_version(), "torch": torch.__version__}
    for name in ("transformers", "safetensors", "numpy", "scikit-learn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def load(path, device=None, quantize=None):
    """Load an estimator written by :func:`save`; no pickled code is run.

    Parameters
    ----------
    path : str or path-like
    device : str or None, default=None
        The ``device`` parameter of the loaded estimator (``"auto"``, ``"cpu"``,
        ``"cuda:0"``); None: ``"auto"``. A file never sets it: files store the
        default, and an older file's stored value is reset with a warning.
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
        checked first and no member is inflated past the size it records. Also a
        file whose contents disagree (the message names the path and the attribute
        or parameter): every parameter, fitted attribute, preprocessing value and
        weight is cross-checked against the estimator class and the rest of the
        file before the estimator is returned (:mod:`sktransfer.io.checks`,
        :mod:`sktransfer.io.fitted`).
    RuntimeError
        The file was written by a newer sktransfer version.
    """
    if quantize not in (None, "dynamic"):
        raise ValueError(f"quantize must be None or 'dynamic', got {quantize!r}")
    meta, members = _read(path)
    with malformed(path):
        est = _rebuild(path, meta, members)
    if device is not None:
        from sktransfer.runtime.device import resolve_device

        resolve_device(device)  # fail early on a device this machine lacks
        est.set_params(device=device)
    if quantize == "dynamic":
        from sktransfer.deploy import quantize_dynamic

        est = quantize_dynamic(est)
    return est


def _rebuild(path, meta, members):
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    if WEIGHTS not in members:
        raise ValueError(f"{os.fspath(path)!r} has a malformed manifest ({WEIGHTS} missing)")
    est, attrs, prep = construct(path, meta)
    try:
        state = st_load(members[WEIGHTS])
    except SafetensorError as exc:
        raise ValueError(f"{os.fspath(path)!r}: unreadable {WEIGHTS} ({exc})") from exc
    source = from_json(meta["backbone_source"])
    lora, state = adapters.from_file(meta, state)
    info = {}
    net, tokenizer = build_net(meta, source, members, state, info=info)
    checks.check_weights({**state, **(lora or {}).get("tensors", {})}, net)
    if meta["store_backbone"] == "reference":
        if lora is not None:  # re-merged into the packaged weights, checked by the digest
            adapters.merge_into(net, lora)
        ref_keys = meta["referenced"]["keys"]
        full = net.state_dict()
        if tensor_digest(full, ref_keys) != meta["referenced"]["sha256"]:
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
    fitted.check_against_net(type(est), meta, attrs, net, info.get("feature_dim"))
    if meta["modality"] == "text":
        from sktransfer.backbones import TextPreprocessing

        checks.check_text_length(net, prep["max_length"])
        prep = TextPreprocessing(tokenizer=tokenizer, **prep)
    else:
        from sktransfer.backbones import ImagePreprocessing

        checks.check_image_size(net, prep["image_size"])
        prep = ImagePreprocessing(**prep)
    est.module_ = net.eval()
    for key, value in attrs.items():
        setattr(est, key, value)
    if lora is not None:
        setattr(est, adapters.ATTR, lora)
    est.preprocessing_ = prep
    return est
