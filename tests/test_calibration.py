"""Per-backbone calibration of the CPU image micro-batch (behaviour, not speed).

The suite runs with ``SKTRANSFER_BATCH_CALIBRATION=0`` (conftest.py: fixed sizes for its
exact comparisons); these tests turn it on. The modules here make one batch size the
fastest on purpose, by a CPU cost per image ten times smaller at that size, so the
choice does not hang on this machine's load.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import assert_batch_invariant, make_cnn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from torch import nn

from sktransfer import ImageEmbedder, PretrainedImageClassifier, cache_info
from sktransfer.cache import config_context
from sktransfer.runtime import batch_tuning as calibrate
from sktransfer.runtime import microbatch
from sktransfer.runtime.batch_tuning import REPS, Calibration, architecture_key, candidates

pytestmark = pytest.mark.usefixtures("fresh_cache")

SIDE = 16  # with a pixel budget of 4 such images: the rule's 4 as at 224 px, cheap images


@pytest.fixture(autouse=True)
def calibrating(monkeypatch):
    monkeypatch.setenv(calibrate.ENV, "1")
    monkeypatch.setitem(microbatch.PIXEL_BUDGET, "cpu", 4 * SIDE * SIDE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (two threads on two busy cores: barrier spins, not batches)
    calibrate.reset()
    yield
    calibrate.reset()
    torch.set_num_threads(threads)


class Delay(nn.Module):
    """Identity that burns ``per_image`` CPU seconds per image (the calibration times CPU
    time), a tenth of it in batches of ``fast``: the size the calibration must find."""

    def __init__(self, fast=None, per_image=0.003):
        super().__init__()
        self.fast, self.per_image = fast, per_image

    def forward(self, x):
        end = time.process_time() + self.per_image * len(x) / (10 if len(x) == self.fast else 1)
        while time.process_time() < end:
            pass
        return x

    def extra_repr(self):
        return f"fast={self.fast}, per_image={self.per_image}"


def _net(delay, seed=0):
    cnn = make_cnn(seed, width=4)
    return nn.Sequential(delay, *cnn)


def _sizes(module):
    """Batch sizes seen by ``module``'s first block (the hook survives the fits' copies)."""
    seen = []
    module[0].register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    return seen


def _images(n, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _trial_items():
    return REPS * sum(candidates(4))  # 93


def test_candidates_surround_the_rule():
    assert candidates(4) == (1, 2, 4, 8, 16)
    assert candidates(16) == (4, 8, 16, 32, 64)
    assert candidates(64) == (16, 32, 64)  # clamped to the CPU bounds [1, 64]
    assert candidates(1) == (1, 2, 4)


def test_the_fastest_size_wins_only_by_the_margin():
    def run(per_image):
        cal = Calibration(4)
        while (size := cal.next_trial(10_000)) is not None:
            cal.observe(size, per_image(size) * size)
        return cal.best

    assert run(lambda s: {1: 3, 2: 2, 4: 1.5, 8: 1.0, 16: 1.2}[s]) == 8
    assert run(lambda s: 1.0 - 0.01 * (s == 8)) == 4  # 1% faster: the rule stays
    cal = Calibration(4)
    first = cal.next_trial(10_000)
    cal.observe(first, 0.001)  # warm-up runs are discarded: no decision from them
    assert cal.best is None and cal.next_trial(3) in (1, 2)  # only sizes that fit


def test_calibration_finds_the_fastest_batch_and_remembers_it():
    X = _images(_trial_items() - 1 + 64)  # the transform's trials: all but the probe's
    module = _net(Delay(fast=16))
    seen = _sizes(module)
    emb = ImageEmbedder(module, image_size=SIDE).fit(X[:2])  # a 1-image shape probe: a trial
    with config_context(cache=False):
        out = emb.transform(X)
    assert sorted(seen[: REPS * 5]) == sorted(candidates(4) * REPS)  # each tried REPS times
    assert sum(seen) == len(X) + 1 and seen[REPS * 5 :] == [16] * 4  # 16 chosen
    seen.clear()
    with config_context(cache=False):
        again = emb.transform(X[:60])
    assert seen == [15] * 4  # remembered: no trials in the next call (16, balanced over 60)
    assert_batch_invariant(again, out[:60])  # a per-sample CNN: equal up to kernel rounding
    with config_context(cache=False):
        forced = emb.set_params(batch_size=7).transform(X)
    assert_batch_invariant(forced, out)


def test_a_small_best_batch_and_the_cache_across_sizes():
    X = _images(_trial_items() + 20)
    module = _net(Delay(fast=1))
    seen = _sizes(module)
    emb = ImageEmbedder(module, image_size=SIDE).fit(X[:2])
    out = emb.transform(X)
    assert seen[-20:] == [1] * 20
    forwards = cache_info()["backbone_forwards"]
    again = emb.set_params(batch_size=64).transform(X)  # cached across sizes
    assert cache_info()["backbone_forwards"] == forwards
    np.testing.assert_array_equal(again, out)
    seen.clear()
    with config_context(cache=False):
        emb.set_params(batch_size=None).transform(X[:6])
    assert seen == [1] * 6  # 1 chosen, and remembered


def test_trials_span_small_calls():
    module = _net(Delay(fast=16))
    seen = _sizes(module)
    emb = ImageEmbedder(module, image_size=SIDE).fit(_images(2))
    with config_context(cache=False):
        for i in range(8):  # calls of 12, as a CLI's: the 16-image trials do not fit
            emb.transform(_images(12, seed=i))
        assert max(seen) <= 12 and 16 not in seen
        seen.clear()
        for i in range(3):  # undecided until 16 is timed: the rule's size meanwhile
            emb.transform(_images(40, seed=i))
        assert seen.count(16) == REPS and seen[:4] == [16, 16, 4, 4]  # undecided: the rule's
        seen.clear()
        emb.transform(_images(64, seed=9))
    assert seen == [16] * 4  # decided: 16


def test_forced_or_disabled_sizes_run_no_trials(monkeypatch):
    X = _images(100)
    module = _net(Delay())
    seen = _sizes(module)
    with config_context(cache=False):
        emb = ImageEmbedder(module, image_size=SIDE, batch_size=9).fit(X[:2])
        seen.clear()
        emb.transform(X)
        assert set(seen[:-1]) == {9}  # no trials
        monkeypatch.setenv(calibrate.ENV, "0")
        emb = ImageEmbedder(module, image_size=SIDE).fit(X[:2])
        seen.clear()
        emb.transform(X)
    assert seen == [4] * 25  # the rule's size, no trials


def test_frozen_fit_and_predict_share_one_calibration(digits_small):
    X, y = digits_small  # 240 images
    module = _net(Delay(fast=8))
    seen = _sizes(module)
    clf = PretrainedImageClassifier(module, image_size=SIDE, random_state=0)
    with config_context(cache=False):
        proba = clf.fit(X, y).predict_proba(X)
        assert seen.count(16) == REPS  # one set of trials, the fit's
        assert seen[-30:] == [8] * 30  # predict: 240 images in batches of 8, chosen in the fit
        ref = clone(clf).set_params(inference_batch_size=5).fit(X, y).predict_proba(X)
    assert_batch_invariant(proba, ref)


def test_a_fine_tuned_predict_calibrates_its_head_run(digits_small):
    X, y = digits_small
    module = _net(Delay(fast=16))
    seen = _sizes(module)
    clf = PretrainedImageClassifier(
        module, image_size=SIDE, freeze_depth=0, max_epochs=1, early_stopping=False,
        random_state=0,
    )  # fmt: skip
    with config_context(cache=False):
        clf.fit(X[:40], y[:40])
        seen.clear()
        proba = clf.predict_proba(X)
        assert sorted(seen[: REPS * 5]) == sorted(candidates(4) * REPS)  # its own trials
        assert seen[REPS * 5 :] == [15] * 7 + [14] * 3  # then 16, balanced over 147
        ref = clf.set_params(inference_batch_size=3).predict_proba(X)
    np.testing.assert_allclose(proba, ref, rtol=1e-5, atol=1e-6)


def test_one_calibration_per_architecture_in_a_search(digits_small):
    a, b = make_cnn(0), make_cnn(1)
    assert architecture_key(_wrap(a)) == architecture_key(_wrap(b))  # weights: same time
    assert architecture_key(_wrap(a)) != architecture_key(_wrap(make_cnn(0, width=16)))
    assert architecture_key(_wrap(a), 0, 2) != architecture_key(_wrap(a))
    X, y = digits_small
    clf = PretrainedImageClassifier(_net(Delay(fast=16)), image_size=SIDE)
    seen = _sizes(clf.backbone)
    with config_context(cache=False):  # (else the first fit's features serve them all)
        GridSearchCV(clf, {"C": [0.1, 1.0]}, cv=2).fit(X, y)
    assert seen.count(1) == REPS  # 4 fits and their predictions: one set of trials


def _wrap(module):
    from sktransfer.freezing import TransferNet

    blocks = list(module.children())
    return TransferNet(blocks, [str(i) for i in range(len(blocks))], nn.Identity(), nn.Linear(1, 1))


def test_text_and_cuda_are_not_calibrated(tiny_bert_dir, monkeypatch):
    from sktransfer import TextEmbedder

    created = []  # the rule's size of each calibration the library starts

    def spy(rule):
        created.append(rule)
        return Calibration(rule)

    monkeypatch.setattr(calibrate, "Calibration", spy)
    texts = [f"text number {i}" for i in range(100)]
    TextEmbedder(tiny_bert_dir).fit(texts).transform(texts)
    assert created == []
    ImageEmbedder(_net(Delay(per_image=0)), image_size=SIDE).fit(_images(2))
    assert created == [4]  # (an image run does start one)
    loader = calibrate.inference_loader(list(range(10)), None, "image", "cpu", None, None)
    assert isinstance(loader.batch_sampler, calibrate.CalibratingBatches)

    class Small:  # a rule's size above MAX_RULE: small images keep the rule
        image_size = SIDE // 4

    loader = calibrate.inference_loader(list(range(10)), None, "image", "cpu", Small(), None)
    assert not isinstance(loader.batch_sampler, calibrate.CalibratingBatches)
    if torch.cuda.is_available():
        loader = calibrate.inference_loader(list(range(10)), None, "image", "cuda", None, None)
        assert not isinstance(loader.batch_sampler, calibrate.CalibratingBatches)
