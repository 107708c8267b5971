"""Cross-checks of the fitted attributes a loaded file sets (see :mod:`sktransfer.io.checks`).

Every attribute name a file may set has a check here (:data:`CHECKS`); a name without
one is refused, so a file can neither shadow a method nor set something predict would
trust unchecked. Two passes: :func:`check_attributes` before the network is built
(types, the target kind against the estimator class, ``classes_`` against
``n_outputs_``, the attributes that repeat the manifest), :func:`check_against_net`
after the weights are loaded (the head's output and input sizes, the block counts).

A new fitted attribute that :func:`sktransfer.save` should write needs its check here;
``tests/invariants/test_inv8_loaded_files.py`` fails until it has one.
"""

from __future__ import annotations

import math

import numpy as np

#: How many outputs (classes, targets) and features a file may declare.
MAX_OUTPUTS = MAX_FEATURES = 1 << 20


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _plain(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _count(lo=0, hi=None):
    def check(name, v, ctx):
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            span = f">= {lo}" if hi is None else f"in {lo}...{hi}"
            raise ValueError(f"attribute {name} is {v!r}, expected an int {span}")

    return check


def _string(name, v, ctx):
    if not isinstance(v, str):
        raise ValueError(f"attribute {name} is {v!r}, expected a string")


def _equals(key):
    """The attribute repeats a manifest field (or the modality) and must equal it."""

    def check(name, v, ctx):
        want = ctx["modality"] if key == "modality" else ctx["meta"][key]
        if ctx["meta"]["attributes"][name] != want:  # the JSON values: no arrays compared
            raise ValueError(f"attribute {name} is {v!r}, but the file's {key} is {want!r}")

    return check


def _history(name, v, ctx):
    ok = isinstance(v, list) and all(
        isinstance(row, dict) and all(isinstance(k, str) and _plain(x) for k, x in row.items())
        for row in v
    )
    if not ok:
        raise ValueError(f"attribute {name} is not a list of records of plain values")


def _lr(name, v, ctx):
    if v is not None and not (_is_real(v) and v > 0):
        raise ValueError(f"attribute {name} is {v!r}, expected None or a positive number")


def _alpha(name, v, ctx):
    if not (_is_real(v) and v >= 0):
        raise ValueError(f"attribute {name} is {v!r}, expected a finite number >= 0")


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _lr_find(name, v, ctx):
    ok = isinstance(v, dict) and all(
        isinstance(k, str)
        and isinstance(x, list)
        and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in x)
        for k, x in v.items()
    )
    if not ok:
        raise ValueError(f"attribute {name} is not a mapping of number lists")


def _target_type(name, v, ctx):
    kinds = sorted(t.name for t in ctx["cls"]._targets)
    if v not in kinds:
        raise ValueError(
            f"attribute target_type_ is {v!r}, which is not a target kind of "
            f"{ctx['cls'].__name__} (one of {kinds})"
        )


def _classes(name, v, ctx):
    """1-D, at least 2 distinct labels, sorted and unique as ``fit`` makes them (no
    missing labels); ``arange(n_outputs_)`` for a multi-label model."""
    n_out = ctx["attrs"].get("n_outputs_")
    if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype.kind not in "biufUO":
        raise ValueError(f"attribute classes_ is not a 1-D array of labels ({_describe(v)})")
    if len(v) != n_out:
        raise ValueError(
            f"attribute classes_ has {len(v)} labels, but the model has {n_out} outputs "
            "(n_outputs_)"
        )
    if ctx["kind"] == "multi_label":
        if not np.array_equal(v, np.arange(n_out)) or v.dtype.kind not in "iu":
            raise ValueError("attribute classes_ of a multi-label model must be arange(n_outputs_)")
        return
    items = v.tolist()
    if v.dtype.kind == "O" and not all(isinstance(x, (str, int, float)) for x in items):
        raise ValueError("attribute classes_ holds values that are not labels (str, int, float)")
    if any(isinstance(x, float) and math.isnan(x) for x in items):
        raise ValueError("attribute classes_ holds NaN (a missing label)")
    try:
        unique = np.unique(v)
    except TypeError:  # e.g. str and int mixed in an object array
        raise ValueError("attribute classes_ mixes label types (str and numbers)") from None
    if len(v) < 2 or len(unique) != len(v) or not np.array_equal(unique, v):
        raise ValueError(
            f"attribute classes_ must hold at least 2 distinct labels, sorted as fit sorts "
            f"them; got {items[:10]}"
        )


def _describe(v):
    if isinstance(v, np.ndarray):
        return f"an array of dtype {v.dtype} and shape {v.shape}"
    return f"a {type(v).__name__}"


def _y_moments(name, v, ctx):
    n_out = ctx["attrs"].get("n_outputs_")
    if not isinstance(v, np.ndarray) or v.dtype != np.float64 or v.shape != (n_out,):
        raise ValueError(
            f"attribute {name} is {_describe(v)}, expected float64 of shape ({n_out},) "
            "(one value per output)"
        )
    if not np.isfinite(v).all() or (name == "y_scale_" and not (v > 0).all()):
        raise ValueError(f"attribute {name} holds values that are not finite (or not > 0)")


def _y_ndim(name, v, ctx):
    if not _is_int(v) or v not in (1, 2) or (v == 1 and ctx["attrs"].get("n_outputs_") != 1):
        raise ValueError(
            f"attribute y_ndim_ is {v!r}; 1 (one output, predict returns 1-D) or 2 expected"
        )


#: Attribute name -> check(name, value, ctx).
CHECKS = {
    "backbone_name_": _string,
    "backbone_source_": _equals("backbone_source"),
    "block_names_": _equals("block_names"),
    "classes_": _classes,
    "history_": _history,
    "input_kind_": _equals("modality"),
    "lr_": _lr,
    "alpha_": _alpha,
    "lr_find_": _lr_find,
    "modality_": _equals("modality"),
    "n_blocks_": _count(1),
    "n_features_out_": _count(1, MAX_FEATURES),
    "n_frozen_blocks_": _equals("n_frozen"),
    "n_outputs_": _count(1, MAX_OUTPUTS),
    "n_trainable_params_": _count(0),
    "target_type_": _target_type,
    "y_mean_": _y_moments,
    "y_scale_": _y_moments,
    "y_ndim_": _y_ndim,
}
#: The attributes each target kind needs; those of another kind are refused.
_BY_KIND = {
    "single_label": {"classes_"},
    "multi_label": {"classes_"},
    "regression": {"y_mean_", "y_scale_", "y_ndim_"},
}
#: Attributes a target kind may have (``alpha_``: a ridge head that was solved, not trained).
_OPTIONAL_BY_KIND = {"regression": {"alpha_"}}
_COMMON = {"backbone_name_", "backbone_source_", "input_kind_", "n_blocks_", "n_features_out_"}
_WITH_HEAD = _COMMON | {"n_outputs_"}


def check_attributes(cls, meta, attrs) -> None:
    """Static checks of the decoded ``attrs`` (before anything is built)."""
    head = bool(getattr(cls, "_targets", ()))
    kind = attrs.get("target_type_", cls._targets[-1].name) if head else None
    ctx = {"cls": cls, "meta": meta, "attrs": attrs, "kind": kind, "modality": cls._modality}
    if meta["modality"] != cls._modality:
        raise ValueError(
            f"a {cls.__name__} is a {cls._modality} model, the file says {meta['modality']}"
        )
    names = meta["block_names"]
    if not all(isinstance(n, str) for n in names) or not 0 <= meta["n_frozen"] <= len(names):
        raise ValueError(f"{meta['n_frozen']} frozen blocks of blocks {names}")
    if head:
        _target_type("target_type_", kind, ctx)
    mine = _BY_KIND.get(kind, set()) | _OPTIONAL_BY_KIND.get(kind, set())
    other = set().union(*_BY_KIND.values(), *_OPTIONAL_BY_KIND.values()) - mine
    unknown = sorted(k for k in attrs if k not in CHECKS or k in other)
    if unknown:
        raise ValueError(
            f"the file sets attributes {unknown}, which a {cls.__name__}"
            + (f" with target_type_ {kind!r}" if kind else "")
            + " does not have"
        )
    required = (_WITH_HEAD | _BY_KIND[kind]) if head else _COMMON
    missing = sorted(required - set(attrs))
    if missing:
        raise ValueError(f"the file lacks the fitted attributes {missing}")
    for key in sorted(attrs, key=lambda k: k == "classes_"):  # counts before classes_
        CHECKS[key](key, attrs[key], ctx)


def check_against_net(cls, meta, attrs, net, feature_dim) -> None:
    """The attributes against the loaded network: head sizes, block counts."""
    n_blocks, head = len(net.blocks), getattr(net.head, "weight", None)
    if attrs["n_blocks_"] != n_blocks or not 0 <= meta["n_frozen"] <= n_blocks:
        raise ValueError(
            f"attribute n_blocks_ is {attrs['n_blocks_']} and {meta['n_frozen']} blocks are "
            f"frozen, but the saved network has {n_blocks} blocks"
        )
    if not getattr(cls, "_targets", ()):  # an embedder: no head, every block frozen
        if head is not None or meta["n_frozen"] != n_blocks:
            raise ValueError("an embedder's file holds a head or unfrozen blocks")
    elif head is None or tuple(head.shape) != (attrs["n_outputs_"], attrs["n_features_out_"]):
        got = "no head" if head is None else f"a head of shape {tuple(head.shape)}"
        raise ValueError(
            f"attributes n_outputs_={attrs['n_outputs_']} and n_features_out_="
            f"{attrs['n_features_out_']} do not match the saved network ({got})"
        )
    if feature_dim is not None and attrs["n_features_out_"] != feature_dim:
        raise ValueError(
            f"attribute n_features_out_ is {attrs['n_features_out_']}, the saved backbone "
            f"outputs {feature_dim} features"
        )
    if "freeze_depth" in (params := meta["params"]):
        from sktransfer.freezing import resolve_freeze_depth

        try:
            resolve_freeze_depth(params["freeze_depth"], n_blocks, params.get("objective"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the saved parameter freeze_depth: {exc}") from None
