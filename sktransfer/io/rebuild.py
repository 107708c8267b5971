"""Rebuilding a saved network: the architecture from its recorded source, then checks.

Used by :mod:`sktransfer.io.safe_format` (save's reference mode and :func:`sktransfer.load`).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from sktransfer.io.archive import WEIGHTS, from_json


def tensor_digest(state: dict, keys) -> str:
    h = hashlib.sha256()
    for k in sorted(keys):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_net(meta, source, members, state, info=None):
    """``(TransferNet, tokenizer or None)``: the architecture, with reference or random weights.

    ``info`` (a dict), when given, receives the rebuilt backbone's ``feature_dim``.

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
            "preprocessing": from_json(meta["preprocessing"]),
        }
        data = {k: v for k, v in members.items() if k != WEIGHTS}
        backbone = rebuild_backbone(source, arch, members=data)
    if backbone.modality != modality:
        raise ValueError(f"backbone source {source!r} is not a {modality} backbone")
    if info is not None:
        info["feature_dim"] = backbone.feature_dim
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
