"""Scale-out scoring on Dask (``pip install "sktransfer[dask]"``).

:func:`predict_dask` scores a ``dask.bag`` of image paths / texts, or a dask
dataframe column, partition by partition. The fitted model is sent to each worker
once: with a ``distributed.Client`` it is scattered to every worker
(``broadcast=True``) before the graph runs, and the tasks refer to that one copy;
without a client the model becomes a single delayed object of the graph.

Hyper-parameter search runs on the same cluster through joblib::

    from dask.distributed import Client
    import joblib
    client = Client(cluster)
    with joblib.parallel_backend("dask"):
        GridSearchCV(PretrainedImageClassifier(), grid, cv=3).fit(X, y)
"""

from __future__ import annotations

import numpy as np

from sktransfer.cache import config_context

__all__ = ["predict_dask"]

_HINT = 'predict_dask needs dask: pip install "sktransfer[dask]"'


def _client():
    """The ``distributed.Client`` that ``compute()`` will use now, or None."""
    import dask

    try:
        from distributed import Client
    except ImportError:
        return None
    scheduler = dask.base.get_scheduler()
    client = getattr(scheduler, "__self__", None)
    return client if isinstance(client, Client) else None


def _model_handle(est):
    """A future (distributed: broadcast to all workers) or a delayed object holding ``est``.

    The future lives as long as the returned collection does.
    """
    import dask

    client = _client()
    if client is not None:
        return client.scatter(est, broadcast=True, hash=False)
    return dask.delayed(est, pure=True)


def _score_partition(items, est, proba):
    """Score one bag partition: a list of labels or of probability rows."""

    items = list(items)
    if not items:
        return []
    with config_context(cache=False):  # one pass over the data: a worker's cache would only grow
        return list(est.predict_proba(items) if proba else est.predict(items))


def _score_series(series, est, proba, columns):
    import pandas as pd

    if len(series) == 0:
        if proba:
            return pd.DataFrame({c: np.empty(0, dtype=float) for c in columns}, index=series.index)
        return pd.Series([], dtype=object, index=series.index, name="prediction")

    items = series.tolist()
    with config_context(cache=False):
        if proba:
            return pd.DataFrame(est.predict_proba(items), index=series.index, columns=columns)
        return pd.Series(est.predict(items), index=series.index, name="prediction", dtype=object)


def predict_dask(est, collection, *, proba=False, column=None):
    """Score a Dask collection with a fitted sktransfer classifier.

    Parameters
    ----------
    est : fitted PretrainedImageClassifier or PretrainedTextClassifier
        Anything the estimator's ``predict`` accepts per item works: image paths
        (readable on the workers) or texts.
    collection : dask.bag.Bag, dask.dataframe.Series or dask.dataframe.DataFrame
        A bag of items, a dataframe column, or a dataframe plus ``column``.
    proba : bool, default=False
        Return class probabilities (in ``est.classes_`` order) instead of labels.
    column : str, optional
        The column to score when ``collection`` is a dataframe.

    Returns
    -------
    dask collection (lazy; call ``.compute()``)
        For a bag: a bag of labels, or of probability arrays. For a dataframe:
        a ``prediction`` Series, or a DataFrame with one ``proba_<class>``
        column per class; the index is the input's.

    Examples
    --------
    >>> import dask.bag as db  # doctest: +SKIP
    >>> from sktransfer.distributed import predict_dask  # doctest: +SKIP
    >>> predict_dask(clf, db.from_sequence(paths, npartitions=8)).compute()  # doctest: +SKIP
    """
    try:
        import dask.bag as db
    except ImportError as exc:
        raise ImportError(_HINT) from exc
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est)
    model = _model_handle(est)
    if isinstance(collection, db.Bag):
        if column is not None:
            raise ValueError("column applies to dataframes, not to bags")
        return collection.map_partitions(_score_partition, model, proba)
    try:
        import dask.dataframe as dd
    except ImportError as exc:  # pragma: no cover - dask without its dataframe extra
        raise ImportError(_HINT) from exc
    if isinstance(collection, dd.DataFrame):
        if column is None:
            raise ValueError("pass column=NAME to score one column of a dask DataFrame")
        collection = collection[column]
    elif not isinstance(collection, dd.Series):
        raise TypeError(
            "collection must be a dask.bag.Bag, dask.dataframe.Series or dask.dataframe.DataFrame, "
            f"got {type(collection).__name__}"
        )
    import pandas as pd

    columns = [f"proba_{c}" for c in est.classes_]
    if proba:
        meta = pd.DataFrame({c: np.empty(0, dtype=float) for c in columns})
    else:
        meta = pd.Series([], dtype=object, name="prediction")
    return collection.map_partitions(_score_series, model, proba, columns, meta=meta)
