"""A Hugging Face text encoder as plain data members, and rebuilt from them.

The safe format (:mod:`sktransfer.io.safe_format`) stores a text backbone's ``config.json``
and its tokenizer's data files beside the weights; :func:`rebuild_huggingface` (the
``"huggingface"`` source's ``rebuild``) builds the randomly initialised architecture from
those bytes: no pickle, no remote code (``trust_remote_code=False``), nothing read from a
path or hub id a file names, nothing downloaded.
"""

from __future__ import annotations

import os
import tempfile

import torch

from sktransfer.backbones.base import Backbone
from sktransfer.backbones.compat import ensure_transformers_importable

__all__ = ["HF_CONFIG", "TOKENIZER_DIR", "TOKENIZER_SUFFIXES", "rebuild_huggingface"]

HF_CONFIG = "backbone/config.json"
TOKENIZER_DIR = "tokenizer/"
TOKENIZER_SUFFIXES = (".json", ".txt", ".model")  # data files only; no pickles, no code
_SLACK_BYTES = 64 << 20  # rebuilt-but-unsaved parameters allowed beyond 2x the weights
# built-in attention implementations (never a hub kernel: "owner/repo" would run its code)
_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")


def load_tokenizer(members, name=None):
    """The tokenizer saved as ``tokenizer/...`` data members (written to a temp dir).

    Parameters
    ----------
    members : mapping of str to bytes
        The archive's members; only ``tokenizer/*.json|.txt|.model`` are used.
    name : str, optional
        The ``name_or_path`` the saved tokenizer had. Only a label (read by nothing), but
        the feature cache keys preprocessing by it: without it every load would get a new,
        temp-dir name, and cached features of the same texts and weights would miss.
    """
    ensure_transformers_importable()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for member, data in members.items():
            if not member.startswith(TOKENIZER_DIR):
                continue
            rel = member[len(TOKENIZER_DIR) :]
            if not rel.endswith(TOKENIZER_SUFFIXES) or ".." in rel.split("/"):
                raise ValueError(f"refusing tokenizer member {member!r}")
            target = os.path.join(tmp, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(data)
        tokenizer = AutoTokenizer.from_pretrained(tmp, trust_remote_code=False)
    if isinstance(name, str) and name:
        tokenizer.name_or_path = name
    return tokenizer


def _config(members):
    from transformers import AutoConfig

    if HF_CONFIG not in members:
        raise ValueError(f"the saved text model has no {HF_CONFIG} member")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "wb") as fh:
            fh.write(members[HF_CONFIG])
        return AutoConfig.from_pretrained(tmp, trust_remote_code=False)


def rebuild_huggingface(source: dict, arch: dict) -> Backbone:
    """The text encoder a safe file's members describe, randomly initialised.

    Parameters
    ----------
    source : dict
        The saved ``Backbone.source`` (``{"kind": "huggingface", "path": ...}``); the path
        is only a name here, never read.
    arch : dict
        ``members`` (the file's data members: :data:`HF_CONFIG` and the tokenizer files),
        ``weight_bytes`` (the size of the stored weights: a config describing a far larger
        network is refused before anything is allocated), ``attn_implementation`` and
        ``tokenizer_name`` as recorded at save time, and ``preprocessing`` (the saved
        ``pooling``, ``normalize`` and ``max_length``).

    Returns
    -------
    Backbone
        ``source`` is the saved one; ``preprocessing.tokenizer`` the saved tokenizer.
    """
    from sktransfer.backbones.huggingface import backbone_from_hf_model

    ensure_transformers_importable()
    from transformers import AutoModel

    members = arch.get("members") or {}
    config = _config(members)
    kwargs = {}
    attn = arch.get("attn_implementation")
    if attn is not None:
        if attn not in _ATTENTION:  # e.g. a hub kernel id, whose code transformers fetches
            raise ValueError(f"refusing attn_implementation {attn!r}; known: {_ATTENTION}")
        kwargs["attn_implementation"] = attn
    with torch.device("meta"):  # size the architecture before allocating it
        probe = AutoModel.from_config(config, trust_remote_code=False, **kwargs)
    need = sum(p.numel() * p.element_size() for p in probe.parameters())
    del probe
    have = int(arch.get("weight_bytes") or 0)
    if need > 2 * have + _SLACK_BYTES:  # parts the blocks drop (BERT's pooler) are not saved
        raise ValueError(
            f"the saved config describes a {need}-byte network, but the file holds only "
            f"{have} bytes of weights; refusing to allocate it"
        )
    model = AutoModel.from_config(config, trust_remote_code=False, **kwargs).eval()
    name = source.get("path") or source.get("name") or "huggingface"
    tokenizer = load_tokenizer(members, arch.get("tokenizer_name"))
    prep = arch.get("preprocessing") or {}
    backbone = backbone_from_hf_model(
        model,
        tokenizer,
        str(name),
        prep.get("pooling", "mean"),
        bool(prep.get("normalize", False)),
        int(prep.get("max_length", 256)),
    )
    backbone.source = dict(source)
    return backbone
