"""The six public estimators agree on every constructor parameter they share.

Each ``__init__`` spells its parameters out (scikit-learn's explicit-signature rule), so
one new knob is six edits; these tests catch the edit that drifted. A parameter is
*shared* when at least two classes take it; for every pair of classes, each parameter
both take must have the same default (``==``, same type; ``None`` only equals ``None``)
and the same kind (positional or keyword-only), and the parameters both take must come
in the same relative order. A name that only one class takes must be listed in
:data:`UNIQUE` (a renamed parameter shows up there).

Deliberate differences are listed in :data:`DELIBERATE`, each run as a strict xfail (it
flips to a failure once the defaults agree).
"""

from __future__ import annotations

import inspect
import itertools

import pytest

import sktransfer

CLASSES = (
    sktransfer.PretrainedImageClassifier,
    sktransfer.PretrainedTextClassifier,
    sktransfer.PretrainedImageRegressor,
    sktransfer.PretrainedTextRegressor,
    sktransfer.ImageEmbedder,
    sktransfer.TextEmbedder,
)
PAIRS = list(itertools.combinations(CLASSES, 2))

_TEXT = ("PretrainedTextClassifier", "PretrainedTextRegressor")
_IMAGE = ("PretrainedImageClassifier", "PretrainedImageRegressor")
_EMBEDDERS = ("ImageEmbedder", "TextEmbedder")

_LR = "per-modality defaults: 1e-4 for CNNs/ViTs, 5e-5 for BERT-style encoders (Devlin et al.)"
_EPOCHS = "per-modality defaults: 10 epochs for images, 4 for text encoders (BERT's 2-4)"
_BATCH = "an embedder's batch_size is its inference micro-batch (None: automatic), not training's"

#: (parameter, classes, other classes, reason): defaults that differ on purpose between
#: any class of the first group and any of the second
_AUTO = (
    "'auto' resolves by objective (frozen probe for cross_entropy, the whole encoder for "
    "contrastive); only the text classifier has an objective, the others default to 'all'"
)
DELIBERATE = (
    ("lr", _IMAGE, _TEXT, _LR),
    ("max_epochs", _IMAGE, _TEXT, _EPOCHS),
    ("batch_size", _IMAGE + _TEXT, _EMBEDDERS, _BATCH),
    ("freeze_depth", ("PretrainedTextClassifier",), _IMAGE + ("PretrainedTextRegressor",), _AUTO),
)

#: parameters that one class alone takes, and why
UNIQUE = {
    "objective": "PretrainedTextClassifier's contrastive (SetFit) fit",
    "num_iterations": "PretrainedTextClassifier's contrastive (SetFit) fit",
}


def _params(cls):
    return {
        name: p for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self"
    }  # fmt: skip


def _same_default(x, y) -> bool:
    if x is None or y is None:
        return x is y
    return type(x) is type(y) and x == y


def disagreements(a, b, names=None) -> list[str]:
    """How the constructors of classes ``a`` and ``b`` differ on the parameters both take
    (only ``names`` when given): relative order, default, kind. Empty when they agree."""
    pa, pb = _params(a), _params(b)
    in_a = [n for n in pa if n in pb]
    in_b = [n for n in pb if n in pa]
    found = []
    if names is None and in_a != in_b:
        found.append(f"order: {a.__name__} {in_a} vs {b.__name__} {in_b}")
    for name in in_a if names is None else [n for n in names if n in pa and n in pb]:
        da, db = pa[name].default, pb[name].default
        if not _same_default(da, db):
            found.append(f"{name}: default {da!r} in {a.__name__}, {db!r} in {b.__name__}")
        if pa[name].kind != pb[name].kind:
            found.append(f"{name}: {pa[name].kind.description} in {a.__name__}, "
                         f"{pb[name].kind.description} in {b.__name__}")  # fmt: skip
    return found


def _deliberate(name, a, b):
    """The reason ``name``'s defaults differ between classes ``a`` and ``b``, or None."""
    pair = {a.__name__, b.__name__}
    for param, group, others, reason in DELIBERATE:
        if param == name and any({x, y} == pair for x in group for y in others):
            return reason
    return None


def _default_cases():
    cases = []
    for a, b in PAIRS:
        for name in (n for n in _params(a) if n in _params(b)):
            reason = _deliberate(name, a, b)
            marks = pytest.mark.xfail(strict=True, reason=reason) if reason else ()
            cases.append(pytest.param(name, a, b, marks=marks,
                                      id=f"{name}-{a.__name__}-{b.__name__}"))  # fmt: skip
    return cases


@pytest.mark.parametrize("name,a,b", _default_cases())
def test_shared_parameter_has_one_default_and_kind(name, a, b):
    assert disagreements(a, b, names=[name]) == []


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a.__name__}-{b.__name__}" for a, b in PAIRS])
def test_shared_parameters_come_in_one_order(a, b):
    found = disagreements(a, b)
    assert [f for f in found if f.startswith("order:")] == []


def test_every_parameter_is_shared_or_known_unique():
    takers = {}
    for cls in CLASSES:
        for name in _params(cls):
            takers.setdefault(name, []).append(cls.__name__)
    alone = {name: who[0] for name, who in takers.items() if len(who) == 1}
    assert alone.keys() == UNIQUE.keys(), alone
    names = {cls.__name__: _params(cls) for cls in CLASSES}
    for param, group, others, _ in DELIBERATE:  # (a stale entry names what no class takes)
        assert all(param in names[c] for c in group + others), param


def test_disagreements_are_reported():
    class A:
        def __init__(self, backbone=None, *, lr=1.0, device="auto", seed=None, size=8):
            pass

    class SwappedOrder:
        def __init__(self, backbone=None, *, device="auto", lr=1.0, seed=None, size=8):
            pass

    class OtherDefaults:
        def __init__(self, backbone=None, *, lr=2.0, device="auto", seed=0, size=8.0):
            pass

    class Positional:
        def __init__(self, backbone=None, lr=1.0, *, device="auto", seed=None, size=8):
            pass

    assert disagreements(A, A) == []
    assert disagreements(A, SwappedOrder) == [
        "order: A ['backbone', 'lr', 'device', 'seed', 'size'] "
        "vs SwappedOrder ['backbone', 'device', 'lr', 'seed', 'size']"
    ]
    assert disagreements(A, OtherDefaults) == [
        "lr: default 1.0 in A, 2.0 in OtherDefaults",
        "seed: default None in A, 0 in OtherDefaults",  # None is only None
        "size: default 8 in A, 8.0 in OtherDefaults",  # == but another type
    ]
    assert disagreements(A, Positional) == [
        "lr: keyword-only in A, positional or keyword in Positional"
    ]
    assert disagreements(A, OtherDefaults, names=["device"]) == []
