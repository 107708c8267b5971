"""The Hugging Face members a safe file stores for a text backbone: config and tokenizer.

Save side only (used by :mod:`sktransfer.io.safe_format`); the architecture is rebuilt
from these members by the ``"huggingface"`` source itself
(:func:`sktransfer.backbones.hf_text_members.rebuild_huggingface`), which the safe format
reaches through :func:`sktransfer.backbones.registry.rebuild_backbone` like any source.
"""

from __future__ import annotations

import os
import tempfile

from sktransfer.backbones.hf_text_members import HF_CONFIG, TOKENIZER_DIR, TOKENIZER_SUFFIXES

__all__ = ["HF_CONFIG", "TOKENIZER_DIR", "text_members"]

_JOBLIB_HINT = "; save this model with joblib.dump instead (a pickle: load only trusted files)"


def _hf_config(module):
    for m in module.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "to_json_string"):
            return config
    raise TypeError("the text backbone has no Hugging Face config to save" + _JOBLIB_HINT)


def _tokenizer_files(tokenizer) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {}
        for root, _, names in os.walk(tmp):
            for fname in sorted(names):
                rel = os.path.relpath(os.path.join(root, fname), tmp).replace(os.sep, "/")
                if not rel.endswith(TOKENIZER_SUFFIXES):
                    raise TypeError(
                        f"the tokenizer writes {rel!r}, which is not a plain data file"
                        + _JOBLIB_HINT
                    )
                with open(os.path.join(root, fname), "rb") as fh:
                    files[TOKENIZER_DIR + rel] = fh.read()
    return files


def text_members(module, tokenizer) -> tuple[dict, dict]:
    """``(members, arch)`` for a text model: its config and tokenizer as data files.

    ``arch`` records what the rebuild needs beside them: the attention implementation
    the model ran with and the tokenizer's ``name_or_path`` (a label the feature cache
    keys preprocessing by; never read as a path).
    """
    config = _hf_config(module)
    members = {HF_CONFIG: config.to_json_string(use_diff=False).encode()}
    members.update(_tokenizer_files(tokenizer))
    arch = {"attn_implementation": getattr(config, "_attn_implementation", None)}
    name = getattr(tokenizer, "name_or_path", None)
    if isinstance(name, str) and name:
        arch["tokenizer_name"] = name
    return members, arch
