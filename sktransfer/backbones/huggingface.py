"""Hugging Face ``transformers`` encoders as text :class:`Backbone` objects.

BERT-class encoders (BERT, MiniLM, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA,
DistilBERT) are split into ``embeddings`` and ``layer.0`` .. ``layer.N-1``; every
layer block builds the attention mask its attention implementation expects
(eager, sdpa, ...) with ``transformers.masking_utils.create_bidirectional_mask``,
exactly as the model's own ``forward`` does. DeBERTa (v1, v2/v3), MPNet and ModernBERT
are split the same way by :mod:`sktransfer.backbones.hf_text_blocks` (dispatched on
``config.model_type``). Any other architecture is one block, ``model`` (an
encoder-decoder model contributes its encoder), and says so
(``Backbone.unsplit_reason``). ``pool`` is a masked mean or the first (CLS) token,
optionally L2-normalised.

Only local files are read: a model directory, or a hub id already in the local
Hugging Face cache (``HF_HOME``). Sentence-transformers directories set the
pooling, normalisation and maximum length defaults. A safe file's text model is rebuilt
from its stored config and tokenizer members by :mod:`sktransfer.backbones.hf_text_members`.
"""

from __future__ import annotations

import contextlib
import inspect
import os

import torch
from torch import nn

from sktransfer.backbones.base import Backbone, TextState
from sktransfer.backbones.compat import ensure_transformers_importable
from sktransfer.backbones.hf_st_layout import POOLINGS, sentence_transformers_defaults
from sktransfer.backbones.hf_text_blocks import FAMILIES, layer_mask, split_text_encoder
from sktransfer.backbones.registry import BackboneSource, looks_like_hub_id, register_source
from sktransfer.inputs.preprocessing import TextPreprocessing

__all__ = ["TextPool", "backbone_from_hf_model", "load_huggingface"]

# Model types whose encoder layers are ``layer(hidden, mask)`` with the mask from
# ``create_bidirectional_mask`` and nothing else (checked against transformers 5).
_SPLITTABLE = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert"}
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}
_MAX_LENGTH_CAP = 512


class TextPool(nn.Module):
    """``TextState -> (n, d)``: masked mean or first token, optionally L2-normalised.

    Parameters
    ----------
    pooling : {"mean", "cls"}
        Mean over real (unpadded) tokens, or the first token's hidden state.
    normalize : bool
        L2-normalise the pooled vectors.
    """

    def __init__(self, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        _check_pooling(pooling)
        self.pooling = pooling
        self.normalize = bool(normalize)

    def forward(self, state: TextState) -> torch.Tensor:
        hidden, mask = state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=1)
        return pooled

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, normalize={self.normalize}"


class HFEmbeddings(nn.Module):
    """Block 0: the tokenizer's dict of tensors -> ``TextState``.

    Parameters
    ----------
    embeddings : torch.nn.Module
        The model's embedding module (``model.embeddings``).
    project : torch.nn.Module, optional
        ELECTRA's ``embeddings_project`` (embedding size -> hidden size).
    """

    def __init__(self, embeddings: nn.Module, project: nn.Module | None = None):
        super().__init__()
        self.embeddings = embeddings
        self.project = project
        params = inspect.signature(embeddings.forward).parameters
        self._token_types = "token_type_ids" in params

    def forward(self, batch) -> TextState:
        input_ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        kwargs = {}
        if self._token_types and batch.get("token_type_ids") is not None:
            kwargs["token_type_ids"] = batch["token_type_ids"]
        hidden = self.embeddings(input_ids=input_ids, **kwargs)
        if self.project is not None:
            hidden = self.project(hidden)
        return TextState(hidden, mask)


class HFLayer(nn.Module):
    """One encoder layer: ``TextState -> TextState``.

    Parameters
    ----------
    layer : torch.nn.Module
        An encoder layer taking ``(hidden_states, attention_mask)``.
    config : transformers.PretrainedConfig
        The model's config (shared, not copied), which names the attention
        implementation the mask is built for.
    """

    def __init__(self, layer: nn.Module, config):
        super().__init__()
        self.layer = layer
        self.config = config

    def forward(self, state: TextState) -> TextState:
        from transformers.masking_utils import create_bidirectional_mask

        hidden, mask = state
        attn_mask = layer_mask(create_bidirectional_mask, self.config, hidden, mask)
        out = self.layer(hidden, attn_mask)
        if isinstance(out, tuple):  # older layer classes return (hidden, ...)
            out = out[0]
        return TextState(out, mask)


class HFWholeModel(nn.Module):
    """A whole encoder as one block: dict of tensors -> ``TextState``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        An encoder whose output has ``last_hidden_state``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._accepts = set(inspect.signature(model.forward).parameters)

    def forward(self, batch) -> TextState:
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(batch["input_ids"])
        kwargs = {k: v for k, v in batch.items() if k in self._accepts and v is not None}
        kwargs["attention_mask"] = mask
        out = self.model(**kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return TextState(hidden, mask)


def _check_pooling(pooling):
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def _split_blocks(model) -> tuple[list[tuple[str, nn.Module]], str | None]:
    """``(blocks, unsplit_reason)``: the split, or the whole model and why it is one block."""
    config = model.config
    model_type = getattr(config, "model_type", None)
    family = split_text_encoder(model)
    if family is not None:
        return family, None
    layers = None
    if model_type in _SPLITTABLE and not getattr(config, "is_decoder", False):
        owner = getattr(model, "transformer" if model_type == "distilbert" else "encoder", None)
        layers = getattr(owner, "layer", None)
    if layers is None or not hasattr(model, "embeddings"):
        known = sorted(_SPLITTABLE | set(FAMILIES))
        reason = f"no block split for model_type {model_type!r}; split: {', '.join(known)}"
        if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            return [("model", HFWholeModel(model.get_encoder()))], reason
        return [("model", HFWholeModel(model))], reason
    blocks = [
        ("embeddings", HFEmbeddings(model.embeddings, getattr(model, "embeddings_project", None)))
    ]
    blocks += [(f"layer.{i}", HFLayer(layer, config)) for i, layer in enumerate(layers)]
    return blocks, None


def position_limit(config) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    return limit - _POSITION_OFFSET.get(getattr(config, "model_type", None), 0)


def _out_of_resources(exc) -> bool:
    """Whether ``exc`` (or its cause) is the machine out of memory or threads: no file's fault."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or (
            isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def backbone_from_hf_model(
    model,
    tokenizer,
    name: str,
    pooling: str = "mean",
    normalize: bool = False,
    max_length: int = 256,
) -> Backbone:
    """Split an already-built ``transformers`` encoder into blocks.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A base encoder (``AutoModel``), e.g. ``BertModel``. Its submodules are
        reused, not copied.
    tokenizer : transformers tokenizer
        The matching tokenizer. A tokenizer without a padding token gets its
        end-of-sequence token as padding token.
    name : str
        Name shown to users.
    pooling : {"mean", "cls"}, default="mean"
        Masked mean over tokens or the first token.
    normalize : bool, default=False
        L2-normalise pooled features.
    max_length : int, default=256
        Truncation length for the tokenizer.

    Returns
    -------
    Backbone
        ``modality="text"``; ``feature_dim`` is the config's ``hidden_size``.
    """
    _check_pooling(pooling)
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None):
        tokenizer.pad_token = tokenizer.eos_token
    blocks, unsplit_reason = _split_blocks(model)
    return Backbone(
        name=name,
        modality="text",
        blocks=blocks,
        pool=TextPool(pooling, normalize),
        feature_dim=getattr(model.config, "hidden_size", None),
        preprocessing=TextPreprocessing(
            tokenizer=tokenizer,
            max_length=int(max_length),
            max_positions=position_limit(model.config),
            pooling=pooling,
            normalize=bool(normalize),
        ),
        source={"kind": "module", "name": name},
        unsplit_reason=unsplit_reason,
    )


@contextlib.contextmanager
def no_progress_bar():
    """Silence transformers' "Loading weights" bar while loading (restored after)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def hub_snapshot(repo_id: str) -> str | None:
    """The local snapshot directory of a cached hub repository, or None."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        return None


def _load(auto_tokenizer, auto_model, spec, directory):
    if directory is not None:
        st = sentence_transformers_defaults(directory)
        where, kwargs = st["model_dir"], {}
    else:
        st = sentence_transformers_defaults("")
        where, kwargs = spec, {"local_files_only": True}
    tokenizer = auto_tokenizer.from_pretrained(where, **kwargs)
    model = auto_model.from_pretrained(where, **kwargs)
    return tokenizer, model, st


def load_huggingface(name_or_path, pooling=None, max_length=None, normalize=None) -> Backbone:
    """Load a local Hugging Face encoder and its tokenizer as a text :class:`Backbone`.

    Parameters
    ----------
    name_or_path : str or path-like
        A directory written by ``save_pretrained`` (or a sentence-transformers
        model directory), or a hub id such as ``"bert-base-uncased"`` that is
        already in the local Hugging Face cache. Nothing is downloaded.
    pooling : {"mean", "cls"} or None, default=None
        None: the sentence-transformers pooling if the directory has one, else "mean".
    max_length : int or None, default=None
        None: ``min(tokenizer.model_max_length, max_seq_length of
        sentence_bert_config.json, position embeddings, 512)``.
    normalize : bool or None, default=None
        None: True when the sentence-transformers modules include ``Normalize``.

    Returns
    -------
    Backbone
        ``modality="text"``, ``source={"kind": "huggingface", "path": name_or_path}``.

    Raises
    ------
    ValueError
        ``name_or_path`` is neither a model directory nor a cached hub id, or
        ``pooling`` is not supported.
    """
    if pooling is not None:
        _check_pooling(pooling)
    ensure_transformers_importable()
    from transformers import AutoModel, AutoTokenizer

    spec = os.fspath(name_or_path)
    directory = spec if os.path.isdir(spec) else hub_snapshot(spec)
    try:
        with no_progress_bar():
            tokenizer, model, st = _load(AutoTokenizer, AutoModel, spec, directory)
    except Exception as exc:
        if _out_of_resources(exc):  # not the directory's fault: say what ran out
            raise
        if directory is not None and os.path.isdir(spec):
            raise ValueError(
                f"{spec!r} is a directory but not a loadable Hugging Face model "
                f"(model and tokenizer files from save_pretrained): {type(exc).__name__}: {exc}"
            ) from exc
        home = os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface"))
        raise ValueError(
            f"cannot load text backbone {spec!r}: it is not a local directory, and it is not "
            f"in the local Hugging Face cache (HF_HOME={home}). Hub ids need network access "
            "to download, or a pre-populated cache; sktransfer never downloads. Pass a local "
            "directory written by save_pretrained instead. "
            f"(transformers said: {type(exc).__name__}: {str(exc)[:300]})"
        ) from exc
    model.eval()
    if max_length is None:
        candidates = [
            tokenizer.model_max_length,
            st["max_seq_length"],
            position_limit(model.config),
        ]
        max_length = min(
            [_MAX_LENGTH_CAP] + [int(c) for c in candidates if isinstance(c, int) and c > 0]
        )
    backbone = backbone_from_hf_model(
        model,
        tokenizer,
        name=spec,
        pooling=pooling or st["pooling"] or "mean",
        normalize=st["normalize"] if normalize is None else bool(normalize),
        max_length=max_length,
    )
    backbone.source = {"kind": "huggingface", "path": spec}
    return backbone


def _rebuild(source, arch):
    """From a safe file's config and tokenizer members (see :mod:`.hf_text_members`)."""
    from sktransfer.backbones.hf_text_members import rebuild_huggingface

    return rebuild_huggingface(source, arch)


register_source(
    BackboneSource(
        kind="huggingface",
        modality="text",
        install="included (transformers is a dependency)",
        weights="a local save_pretrained / sentence-transformers directory, or a hub id "
        "already in the Hugging Face cache (HF_HOME); never downloaded",
        spec="a text model directory or cached hub id (in blocks: BERT-class, DeBERTa-v2/v3, "
        "MPNet, ModernBERT; any other encoder is one block)",
        claims=lambda spec, modality: (
            modality == "text" and (os.path.isdir(spec) or looks_like_hub_id(spec))
        ),
        load=lambda spec, weights="default": load_huggingface(spec),
        rebuild=_rebuild,
    )
)
