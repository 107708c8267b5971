"""Scoring on a Dask cluster and GridSearchCV under joblib's dask backend (issue 5, item 5)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

import dask  # noqa: E402
import dask.bag as db  # noqa: E402
import dask.dataframe as dd  # noqa: E402

from sktransfer import PretrainedTextClassifier  # noqa: E402
from sktransfer.distributed import predict_dask  # noqa: E402


@pytest.fixture(scope="module")
def bert_clf(tiny_bert_dir, texts):
    X, y = texts
    return PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X, y)


# A 2-process LocalCluster: the workers import torch + transformers on first use (~15 s here).
@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.mark.slow
def test_bag_scored_with_model_broadcast_once(client, bert_clf, texts):
    X = texts[0]
    bag = db.from_sequence(X, npartitions=6)
    lazy = predict_dask(bert_clf, bag)  # holds the scattered model while it lives
    assert list(lazy.compute()) == list(bert_clf.predict(X))
    # one copy of the model on every worker, under one key, scattered before the tasks ran
    # (checked before any other call: a released copy disappears asynchronously)
    has_what = client.has_what()
    model_keys = {
        key for keys in has_what.values() for key in keys if str(key).startswith("Pretrained")
    }
    assert len(model_keys) == 1
    key = next(iter(model_keys))
    assert sum(key in keys for keys in has_what.values()) == 2
    del lazy
    proba = np.stack(predict_dask(bert_clf, bag, proba=True).compute())
    np.testing.assert_allclose(proba, bert_clf.predict_proba(X), atol=1e-6)


@pytest.mark.slow
def test_dataframe_column_keeps_index(client, bert_clf, texts):
    X = texts[0]
    frame = pd.DataFrame({"text": X, "other": range(len(X))}, index=np.arange(len(X)) * 10)
    ddf = dd.from_pandas(frame, npartitions=3)
    pred = predict_dask(bert_clf, ddf, column="text").compute()
    assert isinstance(pred, pd.Series)
    assert list(pred.index) == list(frame.index)
    assert list(pred) == list(bert_clf.predict(X))
    proba = predict_dask(bert_clf, ddf["text"], proba=True).compute()
    assert list(proba.columns) == ["proba_neg", "proba_pos"]
    np.testing.assert_allclose(proba.to_numpy(), bert_clf.predict_proba(X), atol=1e-6)


def test_without_client_uses_delayed_model(bert_clf, texts):
    X = texts[0][:20]
    with dask.config.set(scheduler="sync"):
        bag = db.from_sequence(X, npartitions=3)
        assert list(predict_dask(bert_clf, bag).compute()) == list(bert_clf.predict(X))


def test_argument_errors(bert_clf, texts):
    ddf = dd.from_pandas(pd.DataFrame({"text": texts[0][:4]}), npartitions=1)
    with pytest.raises(ValueError, match="column="):
        predict_dask(bert_clf, ddf)
    with pytest.raises(TypeError, match="dask.bag.Bag"):
        predict_dask(bert_clf, texts[0][:4])
    with pytest.raises(ValueError, match="dataframes"):
        predict_dask(bert_clf, db.from_sequence(texts[0][:4]), column="text")


@pytest.mark.slow
def test_grid_search_under_dask_backend(client, tiny_bert_dir, texts):
    import joblib
    from sklearn.model_selection import GridSearchCV

    X, y = texts
    grid = {"C": [0.01, 1.0, 100.0]}
    est = PretrainedTextClassifier(tiny_bert_dir, random_state=0)
    local = GridSearchCV(est, grid, cv=2).fit(X, y)
    with distributed.get_task_stream(client) as stream, joblib.parallel_backend("dask"):
        remote = GridSearchCV(est, grid, cv=2, n_jobs=-1).fit(X, y)
    assert remote.best_params_ == local.best_params_
    np.testing.assert_allclose(
        remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
    # the 3 candidates x 2 folds ran as tasks on the cluster's workers
    keys = [str(task["key"]) for task in stream.data]
    assert sum("fit_and_score" in k for k in keys) == 6, keys


# --------------------------------------------------------------------------- other targets
@pytest.fixture(scope="module")
def multi_label_clf(tiny_bert_dir, texts):
    X, labels = texts
    pos = (labels == "pos").astype(int)
    film = np.array(["film" in x.split() for x in X], dtype=int)
    Y = np.stack([pos, film, pos * film], axis=1)
    return PretrainedTextClassifier(tiny_bert_dir, C=100.0, random_state=0).fit(X, Y)


def test_multi_label_bag_and_dataframe(multi_label_clf, texts):
    X = texts[0][:30]
    expected = multi_label_clf.predict(X)
    with dask.config.set(scheduler="sync"):
        rows = predict_dask(multi_label_clf, db.from_sequence(X, npartitions=3)).compute()
        np.testing.assert_array_equal(np.stack(rows), expected)
        frame = pd.DataFrame({"text": X}, index=np.arange(len(X)) * 10)
        ddf = dd.from_pandas(frame, npartitions=3)
        pred = predict_dask(multi_label_clf, ddf, column="text").compute()
        proba = predict_dask(multi_label_clf, ddf["text"], proba=True).compute()
    # the indicator matrix, one prediction_<label> column per label, the input's index
    assert list(pred.columns) == ["prediction_0", "prediction_1", "prediction_2"]
    assert list(pred.index) == list(frame.index) and (pred.dtypes == np.int64).all()
    np.testing.assert_array_equal(pred.to_numpy(), expected)
    assert 0 < expected.sum() < expected.size  # both values occur: the check can fail
    assert list(proba.columns) == ["proba_0", "proba_1", "proba_2"]
    np.testing.assert_allclose(proba.to_numpy(), multi_label_clf.predict_proba(X), atol=1e-6)


def test_empty_partitions_keep_the_meta(multi_label_clf, bert_clf, texts):
    frame = pd.DataFrame({"text": texts[0][:2]})
    ddf = dd.from_pandas(frame, npartitions=1)
    empty = ddf[ddf["text"] == "no such text"]
    with dask.config.set(scheduler="sync"):
        pred = predict_dask(multi_label_clf, empty, column="text").compute()
        labels = predict_dask(bert_clf, empty, column="text").compute()
    assert pred.shape == (0, 3) and list(pred.columns)[0] == "prediction_0"
    assert labels.shape == (0,) and labels.name == "prediction"


@pytest.mark.parametrize("two_d", [False, True])
def test_regressor_series_or_frame(tiny_bert_dir, texts, two_d):
    from sktransfer import PretrainedTextRegressor

    X = texts[0][:40]
    y = np.where(texts[1][:40] == "pos", 3.0, -1.0) + np.linspace(0, 1, 40)
    if two_d:
        y = np.stack([y, 10 * y], axis=1)
    reg = PretrainedTextRegressor(tiny_bert_dir, random_state=0).fit(X, y)
    frame = pd.DataFrame({"text": X}, index=np.arange(40) + 5)
    with dask.config.set(scheduler="sync"):
        rows = predict_dask(reg, db.from_sequence(X, npartitions=2)).compute()
        pred = predict_dask(reg, dd.from_pandas(frame, npartitions=2), column="text").compute()
    expected = reg.predict(X)  # (partitions are other batches: float32 features move ~1e-7)
    np.testing.assert_allclose(np.asarray(rows), expected, atol=1e-5)
    if two_d:
        assert isinstance(pred, pd.DataFrame)
        assert list(pred.columns) == ["prediction_0", "prediction_1"]
    else:
        assert isinstance(pred, pd.Series) and pred.name == "prediction"
    assert list(pred.index) == list(frame.index) and pred.to_numpy().dtype == np.float64
    np.testing.assert_allclose(pred.to_numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="proba=True needs a classifier"):
        predict_dask(reg, dd.from_pandas(frame, npartitions=1)["text"], proba=True)
