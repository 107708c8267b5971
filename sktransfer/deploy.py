"""Deployment: int8 dynamic quantisation for CPU scoring and ONNX export.

* :func:`quantize_dynamic` returns a copy of a fitted estimator whose backbone
  ``nn.Linear`` layers run in int8 (weights quantised once, activations on the
  fly). It pays off for transformer text backbones; convolutional image
  backbones have (almost) no Linear layers and are left as they are.
* :func:`export_onnx` writes the fitted network, from the preprocessed tensors to
  the fitted target's outputs (a classifier's class probabilities, a regressor's
  predictions in the units of ``y``), as an ONNX graph with a dynamic batch axis
  (and a dynamic sequence axis for text). Classes and preprocessing are recorded
  in the model's metadata. Needs the ``onnx`` extra: ``pip install "sktransfer[onnx]"``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings

import torch
from torch import nn

__all__ = ["export_onnx", "is_quantized", "quantize_dynamic"]

_ONNX_HINT = 'ONNX export needs the "onnx" extra: pip install "sktransfer[onnx]"'


@contextlib.contextmanager
def _quiet():
    """Silence torch's deprecation notices for eager quantisation / TorchScript export."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        yield


def is_quantized(est) -> bool:
    """Whether ``est``'s network holds dynamically quantised layers."""
    module = vars(est).get("module_")  # the stored network: reading it copies nothing
    return module is not None and any(_is_quantized_module(m) for m in module.modules())


def _is_quantized_module(module) -> bool:
    return type(module).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))


def quantize_dynamic(est):
    """A copy of a fitted estimator with int8 dynamically quantised Linear layers.

    The backbone's ``nn.Linear`` layers get int8 weights (one scale per output
    channel) and quantise their activations per batch; the head stays float32, so
    probabilities (or a regressor's predictions) keep their precision. Quantised
    kernels run on the CPU only: the copy's ``device`` parameter is set to ``"cpu"``.

    Parameters
    ----------
    est : fitted sktransfer classifier, regressor or embedder

    Returns
    -------
    estimator
        A new estimator; ``est`` is unchanged.

    Examples
    --------
    >>> from sktransfer.deploy import quantize_dynamic
    >>> fast = quantize_dynamic(clf)  # doctest: +SKIP
    >>> fast.predict(texts)  # doctest: +SKIP
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    if is_quantized(est):
        raise ValueError("this estimator is already quantised")
    net = est.module_
    if not any(isinstance(m, nn.Linear) for m in net.blocks.modules()):
        warnings.warn(
            f"the backbone of {type(est).__name__} has no nn.Linear layers; dynamic "
            "quantisation leaves it unchanged (it helps transformer backbones)",
            UserWarning,
            stacklevel=2,
        )
    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine == "none" and engines:  # pragma: no cover - platform
        torch.backends.quantized.engine = next(e for e in engines if e != "none")
    out = copy.deepcopy(est)
    out.module_.cpu().eval()
    with _quiet():
        quant = torch.ao.quantization
        # per-output-channel weight scales: as fast as per-tensor here, and on Rotten Tomatoes
        # with MiniLM it kept 0.8 pt more accuracy (benchmarks/bench_deploy.py)
        spec = {nn.Linear: quant.per_channel_dynamic_qconfig}
        quant.quantize_dynamic(out.module_.blocks, spec, dtype=torch.qint8, inplace=True)
    out.set_params(device="cpu")
    return out


# --------------------------------------------------------------------------- ONNX
class _ImageGraph(nn.Module):
    def __init__(self, net, output):
        super().__init__()
        self.net, self.output = net, output

    def forward(self, pixel_values):
        return self.output(self.net(pixel_values).float())


class _TextGraph(nn.Module):
    def __init__(self, net, keys, output):
        super().__init__()
        self.net, self.keys, self.output = net, list(keys), output

    def forward(self, *tensors):
        return self.output(self.net(dict(zip(self.keys, tensors))).float())


def _output(est):
    """``(name, module)`` of the graph's output: the fitted target's ``output_module``
    (``probabilities`` of a classifier, ``predictions`` of a regressor, in ``predict``'s
    arithmetic), or the pooled ``features`` of an embedder."""
    from sklearn.base import is_regressor

    if not hasattr(est, "target_type_"):
        return "features", nn.Identity()
    module = est._target.output_module(est)
    return ("predictions" if is_regressor(est) else "probabilities"), module


def _hf_configs(net):
    seen = {}
    for m in net.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen[id(config)] = config
    return list(seen.values())


def _example(est, net):
    """``(graph, example inputs, input names, dynamic axes)`` for ``est``."""
    prep = vars(est)["preprocessing_"]  # read, not handed out (no tokenizer copy)
    output = _output(est)[1]
    if est._modality == "image":
        size = int(prep.image_size)
        x = torch.zeros(2, 3, size, size)
        return _ImageGraph(net, output), (x,), ["pixel_values"], {"pixel_values": {0: "batch"}}
    if est._modality != "text":  # pragma: no cover - defensive
        raise ValueError(f"cannot export a {est._modality} model to ONNX")
    for config in _hf_configs(net):
        config._attn_implementation = "eager"  # plain ops: no shape-dependent mask shortcuts
    enc = prep.tokenizer(
        ["an example input text", "short"],
        padding=True,
        truncation=True,
        max_length=prep.max_length,
        return_tensors="pt",
    )
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    axes = {k: {0: "batch", 1: "sequence"} for k in keys}
    return _TextGraph(net, keys, output), tuple(enc[k] for k in keys), keys, axes


def export_onnx(est, path, *, opset=17):
    """Export a fitted estimator's network to ONNX.

    Parameters
    ----------
    est : fitted sktransfer classifier, regressor or embedder
        Not quantised (export the float model).
    path : str or path-like
        Where to write the ``.onnx`` file.
    opset : int, default=17
        ONNX opset version.

    Returns
    -------
    str
        ``path``. Inputs: images ``pixel_values`` float32 ``(batch, 3, S, S)``,
        preprocessed as ``est.preprocessing_`` says (resize, centre crop,
        mean/std); texts ``input_ids``, ``attention_mask`` (and
        ``token_type_ids`` when the tokenizer makes them) int64
        ``(batch, sequence)``. Output ``probabilities`` ``(batch, n_classes)``
        in ``classes_`` order for a classifier, ``predictions``
        ``(batch, n_outputs)`` in the units of ``y`` for a regressor (``predict``
        before it ravels a 1-D target), ``features`` for an embedder. The metadata
        keys ``sktransfer_classes``, ``sktransfer_n_outputs`` and
        ``sktransfer_preprocessing`` hold JSON; ``sktransfer_target`` names the
        target kind.

    Examples
    --------
    >>> from sktransfer.deploy import export_onnx
    >>> export_onnx(clf, "model.onnx")  # doctest: +SKIP
    >>> import onnxruntime  # doctest: +SKIP
    >>> onnxruntime.InferenceSession("model.onnx").run(None, {"pixel_values": x})  # doctest: +SKIP
    """
    from sklearn.utils.validation import check_is_fitted

    try:
        import onnx
    except ImportError as exc:
        raise ImportError(_ONNX_HINT) from exc
    check_is_fitted(est)
    if is_quantized(est):
        raise ValueError("cannot export a quantised model to ONNX; export the float model")
    path = os.fspath(path)
    net = copy.deepcopy(est.module_).cpu().eval()
    graph, example, names, axes = _example(est, net)
    output = _output(est)[0]
    axes[output] = {0: "batch"}
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            graph,
            example,
            path,
            input_names=names,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=int(opset),
            dynamo=False,
        )
    model = onnx.load(path)
    _add_metadata(model, est)
    onnx.save(model, path)
    return path


def _add_metadata(model, est):
    import dataclasses

    from sktransfer import __version__

    prep = vars(est)["preprocessing_"]  # read, not handed out (no tokenizer copy)
    fields = {f.name: getattr(prep, f.name) for f in dataclasses.fields(prep)}
    fields.pop("tokenizer", None)
    meta = {
        "sktransfer_version": __version__,
        "sktransfer_estimator": type(est).__name__,
        "sktransfer_preprocessing": json.dumps(fields),
    }
    if hasattr(est, "target_type_"):
        meta["sktransfer_target"] = est.target_type_
    if hasattr(est, "classes_"):
        meta["sktransfer_classes"] = json.dumps([_plain(c) for c in est.classes_])
    if hasattr(est, "y_mean_"):  # a regressor's graph already maps back to y's units
        meta["sktransfer_n_outputs"] = json.dumps(int(est.n_outputs_))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _plain(value):
    return value.item() if hasattr(value, "item") else value
