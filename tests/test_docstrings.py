"""The public estimators' docstrings: every parameter documented, Examples, no dangling refs.

The docstring Examples themselves run as doctests in the normal test command
(``--doctest-modules`` over ``sktransfer/`` in pyproject's pytest options).
"""

from __future__ import annotations

import inspect
import re

import pytest

import sktransfer
from sktransfer._estimator import docs

PUBLIC_CLASSES = sorted(
    name for name in sktransfer.__all__ if isinstance(getattr(sktransfer, name), type)
)
METHODS = ("fit", "predict", "predict_proba", "transform")

# Known gaps, as {class name: reason}, each run as a strict xfail (it flips to a failure
# once fixed). None today: every class's Parameters section is generated from
# sktransfer._estimator.docs (shared text + per-class OVERRIDES).
UNDESCRIBED: dict = {}
NO_EXAMPLES: dict = {}
DANGLING: dict = {}


def _cases(known):
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=known[name]))
        if name in known
        else name
        for name in PUBLIC_CLASSES
    ]


def _init_params(cls):
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _entries(section_body, *, with_type=False):
    """``{name: description}`` of a numpydoc Parameters section (``with_type``: the
    type line's text after ``name :`` first)."""
    out, current = {}, []
    for line in section_body.splitlines():
        if line.strip() and not line[0].isspace():
            current = docs.parameter_names(line)
            type_ = line.split(" : ", 1)[1] if " : " in line else ""
            for name in current:
                out[name] = type_ if with_type else ""
        else:
            for name in current:
                out[name] = (out[name] + "\n" + line.strip()).strip()
    return out


def test_the_public_estimators_are_all_checked():
    assert {
        "PretrainedImageClassifier",
        "PretrainedTextClassifier",
        "ImageEmbedder",
        "TextEmbedder",
    } <= set(PUBLIC_CLASSES)


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_parameters_section_names_every_init_parameter(name):
    cls = getattr(sktransfer, name)
    documented = docs.parameter_names(docs.sections(cls.__doc__).get("Parameters", ""))
    params = _init_params(cls)
    missing = [p for p in params if p not in documented]
    stale = [p for p in documented if p not in params]
    assert not missing, f"{name}'s Parameters section lacks {missing}"
    assert not stale, f"{name}'s Parameters section documents {stale}, not in __init__"
    assert documented == params, f"{name}: documented in another order than the signature"


@pytest.mark.parametrize("name", _cases(UNDESCRIBED))
def test_every_parameter_has_a_description(name):
    cls = getattr(sktransfer, name)
    entries = _entries(docs.sections(cls.__doc__).get("Parameters", ""))
    bare = [p for p in _init_params(cls) if not entries.get(p)]
    assert not bare, f"{name}: no description for {', '.join(bare)}"


@pytest.mark.parametrize("name", _cases(NO_EXAMPLES))
def test_class_has_an_examples_section_with_code(name):
    section = docs.sections(getattr(sktransfer, name).__doc__).get("Examples", "")
    assert ">>>" in section, f"{name} has no Examples section with code"


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_method_docstrings_use_numpydoc_sections(name):
    cls = getattr(sktransfer, name)
    for method in METHODS:
        func = getattr(cls, method, None)
        if func is None:
            continue
        assert func.__doc__, f"{name}.{method} has no docstring"
        unknown = set(docs.sections(func.__doc__)) - {"", *docs.SECTION_TITLES}
        assert not unknown, f"{name}.{method}: not numpydoc sections: {sorted(unknown)}"


_SEE_SECTION = re.compile(r"see (?:the )?(" + "|".join(docs.SECTION_TITLES) + r")\b", re.I)


@pytest.mark.parametrize("name", _cases(DANGLING))
def test_method_docstrings_refer_only_to_what_exists(name):
    """``(see the class docstring)`` on parameter ``P`` needs a class docstring that
    mentions ````P````; ``see Notes`` (any section title) needs that section, in the
    method's or the class's docstring."""
    cls = getattr(sktransfer, name)
    class_doc = cls.__doc__ or ""
    class_sections = docs.sections(class_doc)
    problems = []
    for method in METHODS:
        func = getattr(cls, method, None)
        if func is None:
            continue
        own = docs.sections(func.__doc__)
        for param, text in _entries(own.get("Parameters", ""), with_type=True).items():
            if "class docstring" in text and f"``{param}``" not in class_doc:
                problems.append(f"{method}({param}) points at the class docstring")
        for title in _SEE_SECTION.findall(func.__doc__ or ""):
            title = title.title() if title.lower() != "see also" else "See Also"
            if title not in own and title not in class_sections:
                problems.append(f"{method} points at a missing {title} section")
    assert not problems, f"{name}: {problems}"


# ---------------------------------------------------------------- the shared docs helper
def test_generated_section_documents_the_signature_in_order():
    class Est:
        def __init__(self, backbone=None, *, lr=5e-05, freeze_depth="all", C=1.0):
            pass

    text = docs.parameters_section(Est, overrides={"C": ("float", "Ridge-free C.")})
    section = docs.sections(text)["Parameters"]
    assert docs.parameter_names(section) == ["backbone", "lr", "freeze_depth", "C"]
    assert 'freeze_depth : "all", "auto" or int, default="all"' in section
    assert 'lr : float or "auto", default=5e-5' in section
    assert "C : float, default=1.0\n    Ridge-free C." in section
    assert all(_entries(section).values())


def test_generated_section_refuses_undocumented_and_stale_names():
    class Est:
        def __init__(self, *, lr=1e-4, mystery_knob=3):
            pass

    with pytest.raises(KeyError, match="mystery_knob"):
        docs.parameters_section(Est)
    with pytest.raises(KeyError, match="gone"):
        docs.parameters_section(Est, overrides={"mystery_knob": ("int", "x"), "gone": ("", "")})


def test_document_parameters_fills_the_marker_at_its_indentation():
    @docs.document_parameters(overrides={"batch_size": ("int", "Rows per forward pass.")})
    class Emb:
        """Embedder.

        {parameters}

        Examples
        --------
        >>> 1 + 1
        2
        """

        def __init__(self, backbone=None, *, batch_size=32, device="auto"):
            pass

    parts = docs.sections(Emb.__doc__)
    assert list(parts) == ["", "Parameters", "Examples"]
    entries = _entries(parts["Parameters"])
    assert list(entries) == ["backbone", "batch_size", "device"]
    assert entries["batch_size"] == "Rows per forward pass."
    assert entries["device"].startswith('"auto" (cuda when available')
    with pytest.raises(ValueError, match="no '\\{parameters\\}' line"):
        docs.document_parameters(type("NoMarker", (), {"__doc__": "Nothing here."}))


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_shared_descriptions_cover_every_public_estimator(name):
    """``document_parameters`` applied to the class leaves no parameter bare."""
    cls = getattr(sktransfer, name)
    assert [p for p in _init_params(cls) if p not in docs.PARAMETERS] == []
    section = docs.sections(docs.parameters_section(cls))["Parameters"]
    assert list(_entries(section)) == _init_params(cls) and all(_entries(section).values())
