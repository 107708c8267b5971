"""Invariant 6: inputs follow scikit-learn's rules, and every refusal names what is wrong.

What a fit accepts it handles correctly (labels stay distinct, every batch trains, long
texts cost what ``max_length`` tokens cost, pixels map by their mode); what it cannot
handle it refuses up front with a ``ValueError``/``TypeError`` naming the parameter or
the caller's index — never a raw error from torch, never a silently wrong model.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import make_cnn, make_texts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from sktransfer import PretrainedImageClassifier, PretrainedTextClassifier
from sktransfer.inputs.images import load_rgb
from sktransfer.inputs.texts import clip_for_tokenizer

SIDE = 8


def _images(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)


def _clf(**kw):
    return PretrainedImageClassifier(make_cnn(), image_size=SIDE, random_state=0, **kw)


# ----------------------------------------------------------------------- labels
def test_int_and_str_labels_are_not_merged():
    """The reproduction: [1, "1", 2] * 10 became the classes ['1', '2']."""
    with pytest.raises(ValueError, match=r"Mix of label input types.*y\[0\].*y\[1\]"):
        _clf().fit(_images(30), [1, "1", 2] * 10)


@settings(max_examples=30, deadline=None)
@given(
    labels=st.lists(
        st.one_of(
            st.integers(0, 3),
            st.sampled_from(["0", "1", "a"]),
            st.floats(0, 3, allow_nan=False).map(lambda v: float(int(v))),
            st.booleans(),
        ),
        min_size=6,
        max_size=12,
    )
)
def test_label_mixtures_are_refused_or_kept_distinct(labels):
    """Any mixture: refused when strings meet numbers, else classes_ are the distinct
    labels as given and the encoding round-trips (predicting y's own labels)."""
    from sktransfer._estimator.targets.single_label import SingleLabel

    kinds = {isinstance(v, str) for v in labels}
    est = _clf()
    try:
        encoded = SingleLabel().encode(est, labels, len(labels))
    except ValueError as exc:
        msg = str(exc)
        assert len(kinds) == 2 and "Mix of label input types" in msg or "one class" in msg
        return
    assert len(kinds) == 1
    classes = encoded.attrs["classes_"]
    assert len(classes) == len(set(labels))  # nothing merged
    assert list(classes[encoded.values]) == list(np.asarray(labels))


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), "heavy"])
def test_bad_class_weights_are_refused_by_name(weight):
    with pytest.raises(ValueError, match=r"class_weight\[0\]"):
        _clf(class_weight={0: weight, 1: 1.0, 2: 1.0}).fit(_images(30), np.arange(30) % 3)


def test_class_weights_zeroing_every_sample_are_refused():
    with pytest.raises(ValueError, match="class_weight"):
        _clf(class_weight={0: 0.0, 1: 0.0}).fit(_images(10), np.arange(10) % 2)


# ----------------------------------------------------------------------- batches
def _bn_net():
    """A CNN whose last BatchNorm sees a 1x1 map: it cannot normalise one sample."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4), nn.Flatten()),
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(9, 30), batch_size=st.integers(2, 8), early_stopping=st.booleans())
def test_train_bn_trains_whatever_the_last_batch_holds(n, batch_size, early_stopping):
    """The reproduction: a training split leaving one sample for the last batch raised
    torch's "Expected more than 1 value per channel"."""
    clf = PretrainedImageClassifier(
        _bn_net(), image_size=16, freeze_depth=0, train_bn=True, batch_size=batch_size,
        max_epochs=1, early_stopping=early_stopping, random_state=0,
    )  # fmt: skip
    X = np.random.RandomState(n).randint(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proba = clf.fit(X, np.arange(n) % 2).predict_proba(X)
    assert np.isfinite(proba).all()


def test_no_training_batch_is_a_single_sample():
    from sktransfer.training.loaders import NoSingletonBatches

    for n in range(1, 40):
        for size in range(1, 9):
            batches = list(NoSingletonBatches(range(n), size))
            assert sorted(i for b in batches for i in b) == list(range(n))
            assert len(batches) == len(NoSingletonBatches(range(n), size))
            if n > 1 and size > 1:
                assert min(map(len, batches)) > 1


# ----------------------------------------------------------------------- texts
def test_max_length_beyond_the_models_positions_is_refused_at_fit(tiny_bert_dir):
    texts, labels = make_texts(20)
    clf = PretrainedTextClassifier(tiny_bert_dir, max_length=1024)
    with pytest.raises(ValueError, match=r"max_length=1024 exceeds the 64 token positions"):
        clf.fit(texts, labels)
    assert not hasattr(clf, "classes_")
    clf.set_params(max_length=64).fit(texts, labels)  # the limit itself is fine
    long = " ".join(["good"] * 500)
    assert clf.predict([long]).shape == (1,)


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_dir)


WORDS = ["good", "movie", "the", "x" * 150, "plot,", "dull.", "naïve", "\n", "\t", "😀"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=600),
    seps=st.lists(st.sampled_from([" ", "", "  ", "\n"]), min_size=600, max_size=600),
    max_length=st.sampled_from([2, 5, 16, 64]),
)
def test_clipping_a_long_text_keeps_its_first_tokens(tokenizer, words, seps, max_length):
    text = "".join(w + s for w, s in zip(words, seps))
    clipped = clip_for_tokenizer(text, tokenizer, max_length)
    assert text.startswith(clipped)
    full = tokenizer([text], truncation=True, max_length=max_length)["input_ids"]
    assert tokenizer([clipped], truncation=True, max_length=max_length)["input_ids"] == full


def test_one_huge_line_is_clipped_before_tokenising(tokenizer):
    huge = "good movie " * 1_000_000  # 11 MB
    clipped = clip_for_tokenizer(huge, tokenizer, 64)
    assert len(clipped) <= 16 * 64


# ----------------------------------------------------------------------- pixels
def test_a_32bit_integer_image_maps_by_its_mode_not_its_content():
    """The reproduction: in mode "I", 250 became pixel 250 but 300 became pixel 1."""
    low = np.asarray(load_rgb(Image.fromarray(np.full((2, 2), 250, np.int32), mode="I")))
    high = np.asarray(load_rgb(Image.fromarray(np.full((2, 2), 300, np.int32), mode="I")))
    assert high[0, 0, 0] >= low[0, 0, 0]


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=2, max_size=16),
    mode=st.sampled_from(["I", "F", "I;16"]),
)
def test_high_depth_pixels_map_monotonically_and_independently_of_each_other(values, mode):
    if mode == "I;16":
        arr = np.clip(np.asarray(values), 0, 65535).astype(np.uint16)
    elif mode == "F":
        arr = (np.asarray(values, dtype=np.float64) / 2**31).astype(np.float32)
    else:
        arr = np.asarray(values, dtype=np.int32)
    arr = arr.reshape(1, -1)
    together = np.asarray(load_rgb(Image.fromarray(arr)))[0, :, 0]
    alone = [
        np.asarray(load_rgb(Image.fromarray(arr[:, i : i + 1])))[0, 0, 0]
        for i in range(arr.shape[1])
    ]
    assert list(together) == alone  # a pixel's value never depends on its neighbours
    order = np.argsort(arr[0], kind="stable")
    assert (np.diff(together[order].astype(int)) >= 0).all()  # brighter is never darker
