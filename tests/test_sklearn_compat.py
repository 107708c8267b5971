"""scikit-learn citizenship: clone, params, Pipeline, search, CV, pickling.

scikit-learn's estimator checks over every public estimator are in test_common.py.
"""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline

from sktransfer import ImageEmbedder, PretrainedImageClassifier


def test_clone_and_params_are_plain(cnn):
    clf = PretrainedImageClassifier(cnn, freeze_depth=-2, lr=3e-4, image_size=16)
    params = clf.get_params()
    assert params["backbone"] is cnn  # user object passed through untouched
    assert params["freeze_depth"] == -2 and params["device"] == "auto"
    c = clone(clf)
    assert c.get_params()["lr"] == 3e-4 and c is not clf
    c.set_params(freeze_depth="all", lr=1e-3)
    assert (c.freeze_depth, c.lr) == ("all", 1e-3)
    assert clf.freeze_depth == -2
    with pytest.raises(NotFittedError):
        c.predict(np.zeros((2, 8, 8), np.uint8))


def test_invalid_params_raise_at_fit(cnn, digits_small):
    X, y = digits_small
    for bad in [
        {"lr": -1.0},
        {"freeze_depth": "some"},
        {"optimizer": "rmsprop"},
        {"batch_size": 0},
    ]:
        with pytest.raises(ValueError):
            PretrainedImageClassifier(cnn, image_size=8, **bad).fit(X, y)
    with pytest.raises(TypeError):
        PretrainedImageClassifier(cnn, image_size=8, freeze_depth=1.5).fit(X, y)


def test_pipeline_and_nested_params(cnn, digits_small):
    X, y = digits_small
    pipe = Pipeline([("clf", PretrainedImageClassifier(cnn, image_size=8, random_state=0))])
    pipe.set_params(clf__C=0.5, clf__freeze_depth="all")
    assert pipe.get_params()["clf__C"] == 0.5
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.3
    emb_pipe = make_pipeline(ImageEmbedder(cnn, image_size=8), LogisticRegression(max_iter=2000))
    assert emb_pipe.fit(X, y).score(X, y) > 0.3


def test_grid_search_over_freeze_depth_and_lr_with_string_labels(cnn, digits_small):
    X, y = digits_small
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    ys = names[y]
    search = GridSearchCV(
        PretrainedImageClassifier(cnn, image_size=8, max_epochs=1, random_state=0),
        {"freeze_depth": ["all", -1, 0], "lr": [1e-4, 1e-3]},
        cv=3,
    )
    search.fit(X, ys)
    assert len(search.cv_results_["params"]) == 6
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert set(search.predict(X)) <= set(names)
    assert search.best_estimator_.classes_.dtype.kind in "UO"


def test_cross_val_score(cnn, digits_small):
    X, y = digits_small
    scores = cross_val_score(
        PretrainedImageClassifier(cnn, image_size=8, random_state=0), X, y, cv=3
    )
    assert scores.shape == (3,) and np.all(scores > 0.15)


@pytest.mark.parametrize("freeze_depth", ["all", 2])
def test_pickle_and_joblib_round_trip(cnn, digits_small, tmp_path, freeze_depth):
    X, y = digits_small
    clf = PretrainedImageClassifier(
        cnn, image_size=8, freeze_depth=freeze_depth, max_epochs=1, random_state=0
    ).fit(X, y)
    expected = clf.predict_proba(X)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), expected)
    joblib.dump(clf, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert all(p.device.type == "cpu" for p in loaded.module_.parameters())


def test_newer_saved_version_is_refused(cnn, digits_small):
    X, y = digits_small
    clf = PretrainedImageClassifier(cnn, image_size=8).fit(X, y)
    state = clf.__getstate__()
    state["_sktransfer_version"] = "99.1.0"
    fresh = PretrainedImageClassifier.__new__(PretrainedImageClassifier)
    with pytest.raises(RuntimeError, match=r"99\.1\.0.*installed"):
        fresh.__setstate__(state)
