"""Invariant 5: ``random_state`` is the only source of randomness, and fit leaves the
caller's generators alone.

A fit with a given ``random_state`` gives the same model whatever runs beside it (other
fits in other threads) and whatever state the global generators are in; after it,
torch's, numpy's and Python's global generators are where the caller left them.
"""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch
from conftest import make_cnn
from hypothesis import given, settings
from hypothesis import strategies as st

from sktransfer import PretrainedImageClassifier

SIDE = 12
MODULE = make_cnn(seed=1)  # built once: make_cnn seeds torch's global generator itself
X = np.random.RandomState(0).randint(0, 256, (24, SIDE, SIDE, 3), dtype=np.uint8)
Y = np.arange(24) % 2


def _fit(seed, **kw):
    params = dict(freeze_depth=-2, augment="light", max_epochs=2, batch_size=8)
    params.update(kw)
    clf = PretrainedImageClassifier(MODULE, image_size=SIDE, random_state=seed, **params)
    return clf.fit(X, Y).predict_proba(X)


def _global_states():
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


def _same(a, b):
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_two_fits_in_two_threads_equal_the_same_fits_in_sequence():
    """The reproduction: threaded fits differed by up to 0.50, differently each run."""
    sequential = {seed: _fit(seed) for seed in (1, 2)}
    threaded, errors = {}, []

    def run(seed):
        try:
            threaded[seed] = _fit(seed)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    np.random.seed(7)
    before = _global_states()
    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for seed in (1, 2):
        np.testing.assert_array_equal(threaded[seed], sequential[seed])
    assert _same(before, _global_states())  # not left reseeded by either thread


@settings(max_examples=6, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**31 - 2), min_size=2, max_size=2),
    caller_seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(["frozen", "fine-tuned"]),
)
def test_a_fit_depends_on_its_random_state_only(seeds, caller_seed, mode):
    kw = {"freeze_depth": "all"} if mode == "frozen" else {}
    alone = {s: _fit(s, **kw) for s in set(seeds)}
    # the caller's generators in some state: the fits must neither read nor move them
    torch.manual_seed(caller_seed)
    np.random.seed(caller_seed % 2**32)
    random.seed(caller_seed)
    before = _global_states()
    results, errors = {}, []

    def run(i, s):
        try:
            results[i] = _fit(s, **kw)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(seeds)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, s in enumerate(seeds):
        np.testing.assert_array_equal(results[i], alone[s])
    assert _same(before, _global_states())


@pytest.mark.parametrize("mode", ["frozen", "fine-tuned"])
def test_a_fit_leaves_the_global_generators_where_they_were(mode):
    kw = {"freeze_depth": "all"} if mode == "frozen" else {}
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    before = _global_states()
    _fit(5, **kw)
    assert _same(before, _global_states())
