"""The Hugging Face members of a safe file: the text backbone's config and tokenizer files,
and the architecture rebuilt from them (random weights, then the file's) on load.

Used by :mod:`sktransfer.io.safe_format`; no pickle, no remote code, nothing downloaded.
"""

from __future__ import annotations

import os
import tempfile

import torch

HF_CONFIG = "backbone/config.json"
TOKENIZER_DIR = "tokenizer/"
_TOKENIZER_SUFFIXES = (".json", ".txt", ".model")  # data files only; no pickles, no code
_SLACK_BYTES = 64 << 20  # rebuilt-but-unsaved parameters allowed beyond 2x the weights
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
                if not rel.endswith(_TOKENIZER_SUFFIXES):
                    raise TypeError(
                        f"the tokenizer writes {rel!r}, which is not a plain data file"
                        + _JOBLIB_HINT
                    )
                with open(os.path.join(root, fname), "rb") as fh:
                    files[TOKENIZER_DIR + rel] = fh.read()
    return files


# --------------------------------------------------------------------------- load
def _load_tokenizer(members):
    from sktransfer.backbones._compat import ensure_transformers_importable

    ensure_transformers_importable()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in members.items():
            if not name.startswith(TOKENIZER_DIR):
                continue
            rel = name[len(TOKENIZER_DIR) :]
            if not rel.endswith(_TOKENIZER_SUFFIXES) or ".." in rel.split("/"):
                raise ValueError(f"refusing tokenizer member {name!r}")
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(data)
        return AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)


def _hf_backbone(meta, source, members, state):
    from sktransfer.backbones._compat import ensure_transformers_importable
    from sktransfer.backbones.huggingface import backbone_from_hf_model

    ensure_transformers_importable()
    from transformers import AutoConfig, AutoModel

    if HF_CONFIG not in members:
        raise ValueError(f"the saved text model has no {HF_CONFIG} member")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "wb") as fh:
            fh.write(members[HF_CONFIG])
        config = AutoConfig.from_pretrained(tmp, trust_remote_code=False)
    kwargs = {}
    if meta["arch"].get("attn_implementation"):
        kwargs["attn_implementation"] = meta["arch"]["attn_implementation"]
    with torch.device("meta"):  # size the architecture before allocating it
        probe = AutoModel.from_config(config, trust_remote_code=False, **kwargs)
    need = sum(p.numel() * p.element_size() for p in probe.parameters())
    have = sum(t.numel() * t.element_size() for t in state.values())
    del probe
    if need > 2 * have + _SLACK_BYTES:  # parts the blocks drop (BERT's pooler) are not saved
        raise ValueError(
            f"the saved config describes a {need}-byte network, but the file holds only "
            f"{have} bytes of weights; refusing to allocate it"
        )
    model = AutoModel.from_config(config, trust_remote_code=False, **kwargs)
    tokenizer = _load_tokenizer(members)
    prep = meta["preprocessing"]
    name = source.get("path") or source.get("name") or "huggingface"
    return backbone_from_hf_model(
        model, tokenizer, name, prep["pooling"], prep["normalize"], prep["max_length"]
    )
