"""What a sentence-transformers model directory says: model subdirectory, pooling, normalisation.

Read by :func:`sktransfer.backbones.huggingface.load_huggingface` (plain JSON files only).
"""

from __future__ import annotations

import json
import os
import warnings

__all__ = ["POOLINGS", "sentence_transformers_defaults"]

POOLINGS = ("mean", "cls")


def _read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sentence_transformers_defaults(directory: str) -> dict:
    """Read a sentence-transformers layout: model subdir, pooling, normalize, max length.

    Parameters
    ----------
    directory : str
        A model directory ("" for none: the defaults).

    Returns
    -------
    dict
        ``model_dir`` (the ``Transformer`` module's subdirectory, else ``directory``),
        ``pooling`` ("mean", "cls" or None), ``normalize`` (bool), ``max_seq_length``.
    """
    found = {"model_dir": directory, "pooling": None, "normalize": False, "max_seq_length": None}
    modules_file = os.path.join(directory, "modules.json")
    if not os.path.isfile(modules_file):
        return found
    for module in _read_json(modules_file):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = os.path.join(directory, module.get("path", ""))
        if kind == "Transformer":
            found["model_dir"] = sub
            config = os.path.join(sub, "sentence_bert_config.json")
            if os.path.isfile(config):
                found["max_seq_length"] = _read_json(config).get("max_seq_length")
        elif kind == "Normalize":
            found["normalize"] = True
        elif kind == "Pooling" and os.path.isfile(os.path.join(sub, "config.json")):
            found["pooling"] = _pooling_from_config(
                _read_json(os.path.join(sub, "config.json")), sub
            )
    return found


def _pooling_from_config(config: dict, where: str) -> str:
    mode = config.get("pooling_mode")
    if mode in POOLINGS:
        return mode
    if config.get("pooling_mode_cls_token"):
        return "cls"
    any_mode = any(v for k, v in config.items() if k.startswith("pooling_mode_"))
    if config.get("pooling_mode_mean_tokens") or (mode is None and not any_mode):
        return "mean"
    warnings.warn(
        f"the sentence-transformers pooling in {where} ({mode or config}) is not supported; "
        "sktransfer uses mean pooling instead",
        stacklevel=3,
    )
    return "mean"
