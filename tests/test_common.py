"""scikit-learn's estimator checks over every public estimator (imbalanced-learn's style).

An image or text estimator that declares its input honestly gets no checks at all from
``parametrize_with_checks`` (scikit-learn only generates 2-D numeric data), so the image
estimators run the full suite on a 2-D configuration: a ``torch.nn.Module`` backbone
that takes numeric vectors. The text estimators take strings only (``_TextInput._check_X``
is :func:`sktransfer.inputs.texts.check_texts`; no backbone makes them take vectors), so
they run the checks that need no data, and text-data versions of the checks that do.

One table, :data:`EXPECTED_FAILED_CHECKS`, lists every check expected to fail, per
configuration, with its reason; the marks are strict, so a check that starts passing
fails the suite until its entry is removed.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import make_texts
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as ec
from sklearn.utils.estimator_checks import (
    estimator_checks_generator,
    parametrize_with_checks,
)
from torch import nn

from sktransfer import (
    ImageEmbedder,
    PretrainedImageClassifier,
    PretrainedImageRegressor,
    PretrainedTextClassifier,
    PretrainedTextRegressor,
    TextEmbedder,
)


def _vector_backbone():
    """A backbone of numeric vectors of any width: the 2-D test configuration."""
    torch.manual_seed(0)
    return nn.Sequential(nn.LazyLinear(32), nn.Tanh())


FINE_TUNE = dict(freeze_depth=0, max_epochs=2, batch_size=64, lr=1e-2, early_stopping=False)


def _label(est):
    kind = "frozen" if getattr(est, "freeze_depth", "all") == "all" else "fine-tuning"
    if kind == "frozen" and getattr(est, "alpha", "auto") != "auto":
        kind = "frozen, fixed alpha"
    name = type(est).__name__
    return f"{name}[{kind}]"


_FLOAT32_SUMS = (
    "fine-tuning runs in float32: the weighted mean loss over 15 rows and the plain mean "
    "over their ~27 repetitions are equal in exact arithmetic but round differently, so "
    "the probabilities differ by ~4e-8 after two epochs (measured), over the check's "
    "rtol=1e-7, atol=1e-9; they agree to float32 rounding, and unweighted they do not "
    "(test_fine_tuning_sample_weight_equals_repetition_to_float32_rounding). The frozen "
    "configuration (float64 head) passes this check"
)

# {configuration: {check name: reason}}; "bug:" reasons name the file to fix, the others
# are deliberate behaviour a reviewer can weigh.
EXPECTED_FAILED_CHECKS = {
    "PretrainedImageClassifier[fine-tuning]": {
        "check_sample_weight_equivalence_on_dense_data": _FLOAT32_SUMS,
    },
    "PretrainedImageRegressor[frozen]": {
        "check_sample_weight_equivalence_on_dense_data": (
            'the default alpha="auto" picks the ridge strength by leave-one-out error, as '
            "RidgeCV does (weighted as RidgeCV weighs it, test_regressor): leaving out one "
            "copy of a repeated row leaves its twin in the training fold, so repeated rows "
            "and the same rows weighted pick different strengths. With a fixed alpha (the "
            "[frozen, fixed alpha] configuration) the check passes"
        ),
    },
    "PretrainedImageRegressor[fine-tuning]": {
        "check_sample_weight_equivalence_on_dense_data": (
            "fine-tuning runs in float32 (see the classifier's entry); y is standardised "
            "with the weighted moments, so the weighted and the repeated fits solve the "
            "same problem, but two epochs at lr=1e-2 of an unbounded squared loss carry the "
            "rounding further: predictions 4e-4 relative apart (measured), against the "
            "check's rtol=1e-7. The frozen configuration with a fixed alpha (float64 ridge head) "
            "passes"
        ),
    },
}


# Checks that fail on some CPUs and pass on others (kernel choice by vendor and batch
# shape): non-strict, so neither outcome fails the suite. {configuration: {check: reason}}
CPU_DEPENDENT_CHECKS = {
    "PretrainedImageRegressor[fine-tuning]": {
        "check_methods_subset_invariance": (
            "the fine-tuned blocks run in float32 on the whole predict batch, and a row's "
            "output moves with the batch it is in (GEMM blocking): 3.7e-7 here, over the "
            "check's atol=1e-7. The frozen configuration passes (cached per-row features, "
            "float64 head); the classifier's softmax keeps its moves under the tolerance"
        ),
    },
}


def _expected_failures(est):
    return EXPECTED_FAILED_CHECKS.get(_label(est), {})


IMAGE_ESTIMATORS = [
    PretrainedImageClassifier(_vector_backbone(), random_state=0),
    PretrainedImageClassifier(_vector_backbone(), random_state=0, **FINE_TUNE),
    PretrainedImageRegressor(_vector_backbone(), random_state=0),
    PretrainedImageRegressor(_vector_backbone(), random_state=0, alpha=1.0),
    PretrainedImageRegressor(_vector_backbone(), random_state=0, **FINE_TUNE),
    ImageEmbedder(_vector_backbone()),  # a lazy module: materialised before any digest
]


@parametrize_with_checks(
    IMAGE_ESTIMATORS, expected_failed_checks=_expected_failures, xfail_strict=True
)
def test_sklearn_estimator_checks(estimator, check):
    reason = CPU_DEPENDENT_CHECKS.get(_label(estimator), {}).get(ec._check_name(check))
    if reason is None:
        check(estimator)
        return
    try:  # a non-strict xfail: on an AMD EPYC this one passes (3.7e-7 on a Xeon)
        check(estimator)
    except AssertionError:
        pytest.xfail(reason)


def test_multilabel_checks_are_generated_for_the_classifiers():
    """A 2-D 0/1 ``y`` is a multi-label fit (DESIGN); scikit-learn generates its four
    ``check_classifiers_multilabel_*`` checks only for ``classifier_tags.multi_label``."""
    for est in IMAGE_ESTIMATORS:
        if not is_classifier(est):
            continue
        names = {ec._check_name(check) for _, check in estimator_checks_generator(est)}
        multilabel = {n for n in names if n.startswith("check_classifiers_multilabel_")}
        assert len(multilabel) == 4, f"{_label(est)}: {sorted(multilabel)}"


def test_fine_tuning_sample_weight_equals_repetition_to_float32_rounding():
    """Backs the expected failure above with the check's own data."""
    rng = np.random.RandomState(42)
    X, y, sw = rng.rand(15, 30), rng.randint(0, 3, 15), rng.randint(0, 5, 15)

    def proba(X_fit, y_fit, weights=None):
        est = PretrainedImageClassifier(_vector_backbone(), random_state=0, **FINE_TUNE)
        return est.fit(X_fit, y_fit, sample_weight=weights).predict_proba(X)

    weighted = proba(X, y, sw)
    repeated = proba(X.repeat(sw, axis=0), y.repeat(sw))
    unweighted = proba(X[sw > 0], y[sw > 0])
    assert np.abs(weighted - repeated).max() < 1e-6
    assert np.abs(weighted - unweighted).max() > 1e-3


# ---------------------------------------------------------------- checks that need no data
# scikit-learn runs check_param_validation in its own test suite, not in the generator.
DATA_FREE_CHECKS = [
    ec.check_estimator_cloneable,
    ec.check_estimator_repr,
    ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types,
    ec.check_no_attributes_set_in_init,
    ec.check_parameters_default_constructible,
    ec.check_get_params_invariance,
    ec.check_set_params,
    ec.check_do_not_raise_errors_in_init_or_set_params,
    ec.check_mixin_order,
    ec.check_param_validation,  # every constraint rejects a bad type and a bad value in fit
]


def _data_free_cases():
    estimators = [
        *IMAGE_ESTIMATORS[:-1],
        ImageEmbedder(nn.Sequential(nn.Tanh())),
        PretrainedTextClassifier("unused/model/dir"),  # never loaded: no check fits
        PretrainedTextRegressor("unused/model/dir"),
        TextEmbedder("unused/model/dir"),
    ]
    cases = []
    for est in estimators:
        for check in DATA_FREE_CHECKS:
            reason = _expected_failures(est).get(check.__name__)
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(
                pytest.param(est, check, marks=marks, id=f"{_label(est)}-{check.__name__}")
            )
    return cases


@pytest.mark.parametrize("estimator, check", _data_free_cases())
def test_checks_that_need_no_data(estimator, check):
    check(type(estimator).__name__, estimator)


# ---------------------------------------------------------------- text data
# What the data-needing checks assert, on the texts the text estimators take.
def _text_estimators(path):
    return [
        PretrainedTextClassifier(path, random_state=0),
        PretrainedTextClassifier(path, random_state=0, max_length=16, **FINE_TUNE),
        PretrainedTextClassifier(path, random_state=0),  # y: a 0/1 indicator matrix
        PretrainedTextRegressor(path, random_state=0),
        PretrainedTextRegressor(path, random_state=0, max_length=16, **FINE_TUNE),
        TextEmbedder(path, max_length=16),
    ]


TEXT_IDS = [
    "classifier",
    "classifier-fine-tuning",
    "classifier-multilabel",
    "regressor",
    "regressor-fine-tuning",
    "embedder",
]


def _outputs(est, X):
    if hasattr(est, "predict_proba"):
        return est.predict_proba(X)
    return est.predict(X) if is_regressor(est) else est.transform(X)


@pytest.fixture(scope="module")
def text_data():
    texts, labels = make_texts(n=40, seed=1)
    return np.asarray(texts, dtype=object), labels


@pytest.mark.parametrize("index", range(len(TEXT_IDS)), ids=TEXT_IDS)
def test_text_estimator_checks(tiny_bert_dir, text_data, index):
    est = _text_estimators(tiny_bert_dir)[index]
    X, y = text_data
    noise = np.random.RandomState(0).normal(size=len(y))
    if is_regressor(est):
        y = (y == "pos") + 0.1 * noise
    elif TEXT_IDS[index] == "classifier-multilabel":
        y = np.column_stack([y == "pos", noise > 0, y == "neg"]).astype(int)
    params = clone(est).get_params()
    # check_estimators_unfitted
    with pytest.raises(NotFittedError):
        _outputs(est, X[:2])
    # check_estimators_fit_returns_self, check_dont_overwrite_parameters
    assert est.fit(X, y) is est
    assert est.get_params() == params
    public = {k for k in vars(est) if not k.startswith("_")}
    assert public - set(params) == {k for k in public - set(params) if k.endswith("_")}
    # check_n_features_in_after_fitting: strings have no feature count
    assert not hasattr(est, "n_features_in_")
    if np.ndim(y) == 2 and is_classifier(est):  # check_classifiers_multilabel_output_format_*
        assert est.predict(X).shape == y.shape and est.predict(X).dtype == y.dtype
        assert est.predict_proba(X).shape == y.shape
    # check_dict_unchanged
    before = dict(vars(est))
    out = _outputs(est, X)
    assert vars(est).keys() == before.keys()
    assert all(vars(est)[k] is before[k] for k in before)
    # check_methods_subset_invariance, check_methods_sample_order_invariance
    np.testing.assert_allclose(_outputs(est, X[10:20]), out[10:20], rtol=1e-6, atol=1e-7)
    order = np.random.RandomState(0).permutation(len(X))
    np.testing.assert_allclose(_outputs(est, X[order]), out[order], rtol=1e-6, atol=1e-7)
    # check_estimators_pickle
    np.testing.assert_array_equal(_outputs(pickle.loads(pickle.dumps(est)), X), out)
    # check_fit_idempotent
    np.testing.assert_allclose(_outputs(clone(est).fit(X, y), X), out, rtol=1e-6, atol=1e-7)
    # check_estimators_empty_data_messages, check_fit2d_1sample-style refusal names the issue
    with pytest.raises(ValueError):
        clone(est).fit(X[:0], y[:0])


# ---------------------------------------------------------------- embedder input
def test_image_embedder_tags_admit_vector_input():
    est = ImageEmbedder(_vector_backbone())
    X = np.random.RandomState(0).normal(size=(6, 5))
    assert est.fit_transform(X).shape[0] == 6  # it does take vectors
    assert est.__sklearn_tags__().input_tags.two_d_array


def test_image_embedder_takes_a_lazy_backbone():
    X = np.random.RandomState(0).normal(size=(6, 5))
    assert ImageEmbedder(_vector_backbone()).fit_transform(X).shape == (6, 32)
