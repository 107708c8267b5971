"""partial_fit (one epoch per call, as MLPClassifier) and warm_start."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import make_cnn
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from sktransfer import PretrainedImageClassifier, PretrainedImageRegressor
from sktransfer.cache import cache_info

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 255, (60, 16, 16, 3), dtype=np.uint8)
    y = np.array(CLASSES * 20)
    X[y == "a", :8] = 255  # something to learn
    return X, y


def _clf(**kw):
    kw = {"image_size": 16, "freeze_depth": -2, "lr": 1e-2, "max_epochs": 3,
          "random_state": 0, "early_stopping": True, **kw}  # fmt: skip
    return PretrainedImageClassifier(make_cnn(), **kw)


def test_n_calls_train_as_fit_with_n_epochs(data):
    """The optimizer, data order, schedule and random streams go on between calls."""
    X, y = data
    fitted = _clf(early_stopping=False).fit(X, y)
    inc = _clf(early_stopping=False)
    for n in range(1, 4):
        inc.partial_fit(X, y, classes=CLASSES)
        assert len(inc.history_) == n  # one epoch per call
    assert [r["train_loss"] for r in inc.history_] == [r["train_loss"] for r in fitted.history_]
    np.testing.assert_allclose(inc.predict_proba(X), fitted.predict_proba(X), atol=1e-6)


def test_classes_on_the_first_call(data):
    X, y = data
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        _clf().partial_fit(X, y)
    clf = _clf().partial_fit(X[:30], y[:30], classes=["a", "b", "c", "d"])
    assert list(clf.classes_) == ["a", "b", "c", "d"]
    clf.partial_fit(X[y == "a"], y[y == "a"])  # a later call may hold any subset
    bad = y[:30].copy().astype(object)
    bad[7] = "zebra"
    with pytest.raises(ValueError, match=r"y\[7\] is 'zebra'"):
        clf.partial_fit(X[:30], bad)


def test_missing_classes_in_the_first_call_get_a_random_head(data):
    X, y = data
    keep = y != "c"
    clf = _clf(early_stopping=False).partial_fit(X[keep], y[keep], classes=CLASSES)
    assert clf.predict_proba(X).shape == (60, 3)
    clf.partial_fit(X, y)
    assert set(clf.predict(X)) <= set(CLASSES)


def test_early_stopping_state_carries_over(data):
    """Validation losses are compared across calls; after n_iter_no_change calls without
    improvement the best weights come back and later calls train no more."""
    X, y = data
    clf = _clf(lr=5.0, max_epochs=50, n_iter_no_change=2, lr_schedule="constant")
    for _ in range(25):
        clf.partial_fit(X, y, classes=CLASSES)
    losses = [r["valid_loss"] for r in clf.history_]
    best, misses, expected = np.inf, 0, None
    for i, loss in enumerate(losses):  # the rule, replayed on the recorded losses
        best, misses = (loss, 0) if loss < best else (best, misses + 1)
        if misses == 2:
            expected = i + 1
            break
    assert expected is not None and len(losses) == expected < 25
    assert clf.history_[-1]["best"] is not None
    stopped = clf.predict_proba(X)
    clf.partial_fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), stopped)
    assert len(clf.history_) == len(losses)


def test_the_schedule_spans_the_calls(data):
    X, y = data
    kw = dict(early_stopping=False, lr_schedule="onecycle", max_epochs=4)
    clf = _clf(**kw)
    for _ in range(5):
        clf.partial_fit(X, y, classes=CLASSES)
    lrs = [r["lr"] for r in clf.history_]
    # one schedule over max_epochs calls (fit's), not one per call; then its last rate
    assert lrs[:4] == [r["lr"] for r in _clf(**kw).fit(X, y).history_]
    assert len(set(lrs[:4])) == 4 and lrs[4] == lrs[3]


def test_frozen_prefix_comes_from_the_cache(data, fresh_cache):
    X, y = data
    clf = _clf(early_stopping=False).partial_fit(X, y, classes=CLASSES)
    misses = cache_info()["misses"]
    clf.partial_fit(X, y)
    assert cache_info()["misses"] == misses  # the second epoch's activations: all hits


def test_frozen_mode_trains_the_head(data):
    X, y = data
    clf = _clf(freeze_depth="all", lr=0.1, early_stopping=False)
    first = clf.partial_fit(X, y, classes=CLASSES).predict_proba(X)
    clf.partial_fit(X, y)
    assert not np.allclose(clf.predict_proba(X), first)
    assert clf.n_frozen_blocks_ == clf.n_blocks_


def test_regressor_keeps_the_first_scaling(data):
    X, _ = data
    y = np.random.RandomState(1).randn(60) * 100 + 50
    reg = PretrainedImageRegressor(make_cnn(), image_size=16, freeze_depth=-1, lr=1e-2,
                                   random_state=0)  # fmt: skip
    reg.partial_fit(X, y)
    mean = reg.y_mean_
    reg.partial_fit(X[:20], y[:20] + 1000)
    assert reg.y_mean_ == mean
    with pytest.raises(ValueError, match="output"):
        reg.partial_fit(X, np.c_[y, y])


def test_a_failed_call_leaves_an_unfitted_estimator(data):
    X, y = data
    clf = _clf().partial_fit(X, y, classes=CLASSES)
    with pytest.raises(ValueError):
        clf.partial_fit(X[:5], y[:4])
    with pytest.raises(NotFittedError):
        clf.predict(X)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"lr": "auto"}, "lr"),
        ({"unfreeze_schedule": 1}, "unfreeze_schedule"),
        ({"adapter": "lora"}, "adapter"),
        ({"class_weight": "balanced"}, "balanced"),
    ],
)
def test_unsupported_settings_are_named(data, params, match):
    X, y = data
    with pytest.raises(ValueError, match=match):
        _clf(**params).partial_fit(X, y, classes=CLASSES)


def test_pickle_drops_the_trainer_and_goes_on(data):
    X, y = data
    clf = _clf(early_stopping=False).partial_fit(X, y, classes=CLASSES)
    blob = pickle.dumps(clf)
    assert b"IncrementalTrainer" not in blob
    loaded = pickle.loads(blob)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    before = loaded.predict_proba(X)
    loaded.partial_fit(X, y)  # a new optimizer from the loaded weights
    assert not np.allclose(loaded.predict_proba(X), before)
    assert len(loaded.history_) == 2


def test_partial_fit_after_fit_goes_on_from_its_weights(data):
    X, y = data
    clf = _clf(early_stopping=False, max_epochs=2).fit(X, y)
    head = clf.module_.head.weight.detach().clone()
    clf.partial_fit(X, y)
    assert len(clf.history_) == 3
    assert 0 < float((clf.module_.head.weight - head).abs().max()) < 1.0


def test_warm_start_fit_goes_on(data):
    X, y = data
    kw = dict(early_stopping=False, max_epochs=2)
    cold = _clf(**kw).fit(X, y)
    warm = _clf(warm_start=True, **kw).fit(X, y)
    np.testing.assert_array_equal(warm.predict_proba(X), cold.predict_proba(X))  # first fit
    warm.fit(X, y)
    assert warm.history_[0]["train_loss"] < cold.history_[0]["train_loss"]
    again = clone(warm).fit(X, y)  # a clone starts cold
    np.testing.assert_array_equal(again.predict_proba(X), cold.predict_proba(X))
    with pytest.raises(ValueError, match="not one of the classes"):
        warm.fit(X, np.where(y == "a", "z", y))


def test_optuna_search_with_pruning(data):
    optuna = pytest.importorskip("optuna")
    integration = pytest.importorskip("optuna_integration")
    X, y = data
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = integration.OptunaSearchCV(
        _clf(early_stopping=False),
        {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)},
        cv=2, n_trials=3, max_iter=3, enable_pruning=True, random_state=0,
        study=optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(
            n_startup_trials=1, n_warmup_steps=0)),
    )  # fmt: skip
    search.fit(X, y)
    trials = search.trials_
    assert len(trials) == 3
    assert all(len(t.intermediate_values) >= 1 for t in trials)  # partial_fit steps reported
    assert search.best_estimator_.predict(X).shape == (60,)


def test_halving_grid_search_over_max_epochs(data):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    X, y = data
    search = HalvingGridSearchCV(
        _clf(early_stopping=False), {"lr": [1e-3, 1e-2, 3e-2]}, resource="max_epochs",
        min_resources=1, max_resources=3, factor=2, cv=2, random_state=0,
    )  # fmt: skip
    search.fit(X, y)
    assert search.best_params_["max_epochs"] >= 1
    assert len(search.best_estimator_.history_) == search.best_params_["max_epochs"]
