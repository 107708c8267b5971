"""An MLflow flavour on the safe format: log, load and serve sktransfer models without pickle.

``mlflow.sklearn.log_model`` cannot store these estimators safely (its skops format cannot
hold torch tensors; its fallback is cloudpickle). This flavour stores the estimator with
:func:`sktransfer.save` (one ``model.skt``: safetensors weights and JSON, see
:mod:`sktransfer.io.safe_format`) and adds a ``python_function`` flavour whose
``loader_module`` is this module, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve``
work and nothing in the model directory is a pickle. The pyfunc model is
:class:`PyfuncModel`. MLflow is imported lazily: without it, calling any function here
raises ``ImportError`` naming ``pip install "sktransfer[mlflow]"``. Guide: docs/mlflow.md.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sys

__all__ = [
    "FLAVOR_NAME",
    "MODEL_FILE",
    "PyfuncModel",
    "get_default_pip_requirements",
    "infer_signature",
    "load_model",
    "log_model",
    "save_model",
]

FLAVOR_NAME = "sktransfer"
MODEL_FILE = "model.skt"
#: the input column of the default signature, per modality
COLUMNS = {"text": "text", "image": "image"}
_METHODS = ("predict", "predict_proba", "transform")
_TASKS = {
    "single_label": "classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def _mlflow():
    try:
        import mlflow
        import mlflow.pyfunc  # noqa: F401 - the submodules used below
    except ImportError as exc:
        raise ImportError(
            'sktransfer.mlflow needs MLflow: pip install "sktransfer[mlflow]"'
        ) from exc
    return mlflow


# --------------------------------------------------------------------------- what the model is
def _modality(model):
    kind = getattr(model, "input_kind_", None) or getattr(model, "_modality", None)
    if kind not in COLUMNS:
        raise TypeError(
            f"sktransfer.mlflow logs fitted sktransfer text or image estimators; got "
            f"{type(model).__name__} (input kind {kind!r})"
        )
    return kind


def _task(model):
    kind = getattr(model, "target_type_", None)
    if kind is not None:
        return _TASKS.get(kind, kind)
    return "embedding" if hasattr(model, "transform") else "unknown"


def _methods(model):
    return [m for m in _METHODS if hasattr(model, m)]


def _default_method(model):
    return "predict" if hasattr(model, "predict") else "transform"


def _check_model(model):
    from sklearn.utils.validation import check_is_fitted

    name = type(model).__name__
    if not type(model).__module__.startswith("sktransfer."):
        raise TypeError(f"sktransfer.mlflow logs sktransfer's own estimators, not {name}")
    check_is_fitted(model)
    _modality(model)


# --------------------------------------------------------------------------- signature, example
def infer_signature(model, *, image_input="bytes", column=None):
    """The default :class:`mlflow.models.ModelSignature` of a fitted sktransfer estimator.

    One input column: strings for a text model; ``binary`` image bytes for an image model
    (the scoring server base64-decodes them), strings with ``image_input="path"``. Unnamed
    unless ``column`` names it, so a list, a Series or a one-column DataFrame passes MLflow's
    schema check. Params: ``method`` (default ``predict``; an embedder's ``transform``), so
    the scoring server accepts ``{"params": {"method": "predict_proba"}}``.
    """
    _mlflow()
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    if image_input not in ("bytes", "path"):
        raise ValueError(f"image_input must be 'bytes' or 'path', got {image_input!r}")
    modality = _modality(model)
    binary = modality == "image" and image_input == "bytes"
    dtype = DataType.binary if binary else DataType.string
    inputs = Schema([ColSpec(dtype, column)] if column else [ColSpec(dtype)])
    params = ParamSchema([ParamSpec("method", DataType.string, _default_method(model))])
    return ModelSignature(inputs=inputs, params=params)


def _example_image():
    """A small encoded PNG: the default input example of an image model."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _default_example(model):
    import pandas as pd

    if _modality(model) == "text":
        return pd.DataFrame({"text": ["a short example text", "another example"]})
    return pd.DataFrame({"image": [_example_image()]})


def _signature_for(model, signature, input_example):
    """The caller's signature, none (False), or ours (a path column for string examples)."""
    if signature is False:
        return None
    if signature is not None:
        return signature
    import pandas as pd

    first = input_example
    if isinstance(first, pd.DataFrame):
        first = first.iloc[:, 0].tolist() if len(first.columns) else []
    elif isinstance(first, pd.Series):
        first = first.tolist()
    paths = isinstance(first, list) and len(first) > 0 and isinstance(first[0], str)
    return infer_signature(model, image_input="path" if paths else "bytes")


# --------------------------------------------------------------------------- environment
def get_default_pip_requirements(model=None):
    """``sktransfer``, ``torch`` and what loading ``model`` needs (``transformers`` for a text
    model, ``peft`` for a LoRA one), pinned to the installed versions."""
    _mlflow()
    import torch
    from mlflow.utils.requirements_utils import _get_pinned_requirement

    names = ["sktransfer"]
    if model is not None and _modality(model) == "text":
        names.append("transformers")
    if model is not None and getattr(model, "lora_adapters_", None) is not None:
        names.append("peft")
    # torch without its local label (+cpu, +cu124): the wheel index decides the build
    torch_pin = "torch==" + torch.__version__.split("+")[0]
    return [_get_pinned_requirement(n) for n in names] + [torch_pin]


def _write_environment(path, model, pip_requirements, extra_pip_requirements):
    import yaml
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _CONSTRAINTS_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _process_pip_requirements,
        _PythonEnv,
    )

    defaults = get_default_pip_requirements(model)
    conda_env, reqs, constraints = _process_pip_requirements(
        defaults, pip_requirements, extra_pip_requirements
    )
    files = {_CONDA_ENV_FILE_NAME: yaml.safe_dump(conda_env, default_flow_style=False)}
    files[_REQUIREMENTS_FILE_NAME] = "\n".join(reqs)
    if constraints:
        files[_CONSTRAINTS_FILE_NAME] = "\n".join(constraints)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as fh:
            fh.write(text)
    _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))
    return _CONDA_ENV_FILE_NAME, _PYTHON_ENV_FILE_NAME


# --------------------------------------------------------------------------- save / log / load
def _store_backbone(model, store_backbone):
    if store_backbone != "auto":
        return store_backbone
    source = getattr(model, "backbone_source_", None) or {}
    packaged = source.get("kind") == "packaged" and str(source.get("weights")) == "default"
    return "reference" if packaged else "embed"


def save_model(
    model,
    path,
    *,
    signature=None,
    input_example=None,
    store_backbone="auto",
    mlflow_model=None,
    pip_requirements=None,
    extra_pip_requirements=None,
    metadata=None,
):
    """Save a fitted sktransfer estimator as an MLflow model directory at ``path``.

    Parameters
    ----------
    model : fitted sktransfer classifier, regressor or embedder
        Stored with :func:`sktransfer.save` (no pickle); a model that format cannot hold
        (a ``torch.nn.Module`` backbone) raises ``TypeError``.
    path : str or path-like
        A directory that does not exist yet, or an empty one.
    signature : ModelSignature, None or False, default=None
        None: :func:`infer_signature` (a ``text`` or ``image`` column and a ``method``
        param); False: no signature.
    input_example : DataFrame, list or None, default=None
        None: two short texts, or one small PNG, when ``signature`` is None too.
    store_backbone : {"auto", "embed", "reference"}, default="auto"
        As :func:`sktransfer.save`; ``"auto"``: ``"reference"`` for a packaged backbone with
        its default weights (only what training changed is stored), else ``"embed"``.
    mlflow_model, pip_requirements, extra_pip_requirements, metadata
        As in MLflow's built-in flavours.
    """
    mlflow = _mlflow()
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    from sktransfer import __version__
    from sktransfer.io.safe_format import save

    _check_model(model)
    path = os.path.abspath(os.fspath(path))
    created = not os.path.exists(path)
    if not created and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path} exists and is not an empty directory")
    if input_example is None and signature is None:
        input_example = _default_example(model)
    store = _store_backbone(model, store_backbone)
    os.makedirs(path, exist_ok=True)
    try:
        save(model, os.path.join(path, MODEL_FILE), store_backbone=store)
        mlflow_model = Model() if mlflow_model is None else mlflow_model
        _save_example(mlflow_model, input_example, path)
        signature = _signature_for(model, signature, input_example)
        if signature is not None:
            mlflow_model.signature = signature
        if metadata is not None:
            mlflow_model.metadata = metadata
        conda, python_env = _write_environment(
            path, model, pip_requirements, extra_pip_requirements
        )
        mlflow.pyfunc.add_to_model(
            mlflow_model,
            loader_module=__name__,
            data=MODEL_FILE,
            conda_env=conda,
            python_env=python_env,
        )
        mlflow_model.add_flavor(
            FLAVOR_NAME,
            sktransfer_version=__version__,
            model_file=MODEL_FILE,
            estimator=type(model).__name__,
            modality=_modality(model),
            task=_task(model),
            methods=_methods(model),
            store_backbone=store,
        )
        mlflow_model.model_size_bytes = sum(
            os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(path) for f in fs
        )
        mlflow_model.save(os.path.join(path, "MLmodel"))
    except BaseException:  # leave the directory as it was found
        shutil.rmtree(path, ignore_errors=True)
        if not created:
            os.makedirs(path, exist_ok=True)
        raise
    return path


def log_model(model, name=None, *, artifact_path=None, registered_model_name=None, **kwargs):
    """Log a fitted sktransfer estimator to the active run (or a new one) with this flavour.

    ``name`` (MLflow 3; ``artifact_path`` in MLflow 2) names the model; other keyword
    arguments go to :func:`save_model` (``signature``, ``input_example``, ``store_backbone``,
    ``pip_requirements``, ...) and :meth:`mlflow.models.Model.log` (``params``, ``tags``,
    ``metadata``). Returns MLflow's ``ModelInfo`` (``.model_uri`` loads it).
    """
    _mlflow()
    from mlflow.models import Model

    _check_model(model)
    if "name" in inspect.signature(Model.log).parameters:
        kwargs.update(name=name, artifact_path=artifact_path)
    else:  # MLflow 2: the artifact path is the name
        kwargs.update(artifact_path=artifact_path or name)
    return Model.log(
        flavor=sys.modules[__name__],
        model=model,
        registered_model_name=registered_model_name,
        **kwargs,
    )


def _model_file(model_dir):
    """The ``.skt`` file an MLflow model directory's ``sktransfer`` flavour names."""
    from mlflow.models import Model

    conf = Model.load(os.path.join(model_dir, "MLmodel")).flavors.get(FLAVOR_NAME)
    if conf is None:
        raise ValueError(f"{model_dir} is not an MLflow model of the {FLAVOR_NAME!r} flavour")
    name = conf.get("model_file", MODEL_FILE)
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(f"{model_dir}/MLmodel names a model file outside its directory: {name!r}")
    return os.path.join(model_dir, name)


def load_model(model_uri, dst_path=None, *, device=None):
    """The fitted estimator of an MLflow model logged with this flavour (no pickle is read).

    ``model_uri``: ``runs:/<run>/<name>``, ``models:/<id or name/version>``, a local path...
    ``device`` as :func:`sktransfer.load`.
    """
    mlflow = _mlflow()
    from sktransfer.io.safe_format import load

    local = mlflow.artifacts.download_artifacts(artifact_uri=str(model_uri), dst_path=dst_path)
    return load(_model_file(local), device=device)


# --------------------------------------------------------------------------- pyfunc
def _load_pyfunc(path, model_config=None):
    """MLflow's ``loader_module`` entry: ``path`` is the ``data`` file (``model.skt``)."""
    from sktransfer.io.safe_format import load

    if os.path.isdir(path):
        path = _model_file(path)
    return PyfuncModel(load(path), column=_signature_column(os.path.dirname(path)))


def _signature_column(model_dir):
    """The name of the signature's one input column, if it names one."""
    from mlflow.models import Model

    try:
        signature = Model.load(os.path.join(model_dir, "MLmodel")).signature
    except OSError:
        return None
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return None
    names = signature.inputs.input_names()
    return str(names[0]) if len(names) == 1 else None


# the pyfunc model (it uses the helpers above)
from sktransfer.mlflow.pyfunc import PyfuncModel  # noqa: E402
