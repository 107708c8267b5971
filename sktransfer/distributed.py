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
from sktransfer.io.columns import output_columns

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


def _layout(est, proba):
    """``(columns, dtype)`` of the dataframe result: ``columns`` is None for a ``prediction``
    Series. The names are :func:`~sktransfer.io.columns.output_columns`' (those of
    ``sktransfer predict``'s CSV), less ``prediction`` with ``proba``: ``predict_proba``'s
    ``proba_<class>`` columns only."""
    names = output_columns(est, proba)
    kind = getattr(est, "target_type_", "single_label")
    if proba:
        return names[1:], np.float64
    if names == ["prediction"]:
        return None, np.float64 if kind == "regression" else object  # labels of any dtype
    return names, np.float64 if kind == "regression" else np.int64


def _score_partition(items, est, proba):
    """Score one bag partition: a list of ``predict`` (or ``predict_proba``) rows."""

    items = list(items)
    if not items:
        return []
    with config_context(cache=False):  # one pass over the data: a worker's cache would only grow
        return list(est.predict_proba(items) if proba else est.predict(items))


def _score_series(series, est, proba, columns, dtype):
    import pandas as pd

    items = series.tolist()
    if not items:
        values = np.empty((0, len(columns or [None])), dtype=dtype)
    else:
        with config_context(cache=False):
            values = est.predict_proba(items) if proba else est.predict(items)
    if columns is None:
        return pd.Series(np.ravel(values), index=series.index, name="prediction", dtype=dtype)
    return pd.DataFrame(np.asarray(values, dtype=dtype), index=series.index, columns=columns)


def predict_dask(est, collection, *, proba=False, column=None):
    """Score a Dask collection with a fitted sktransfer classifier or regressor.

    Parameters
    ----------
    est : fitted sktransfer classifier or regressor (image or text)
        Anything the estimator's ``predict`` accepts per item works: image paths
        (readable on the workers) or texts.
    collection : dask.bag.Bag, dask.dataframe.Series or dask.dataframe.DataFrame
        A bag of items, a dataframe column, or a dataframe plus ``column``.
    proba : bool, default=False
        Return class probabilities (in ``est.classes_`` order) instead of
        predictions; classifiers only.
    column : str, optional
        The column to score when ``collection`` is a dataframe.

    Returns
    -------
    dask collection (lazy; call ``.compute()``)
        For a bag: one ``predict`` row per item (a label, a multi-label indicator
        array, a regressor's value or array of values), or one probability array.
        For a dataframe, with the input's index and the column names of
        ``sktransfer predict``: a ``prediction`` Series (labels; a regressor fitted on
        1-D ``y``: float64); a DataFrame of ``prediction_0..k-1`` (a regressor's k
        outputs, float64) or of ``prediction_<label>`` (a multi-label indicator
        matrix, int64); with ``proba``, one ``proba_<class>`` column per class.

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
    columns, dtype = _layout(est, proba)  # (refuses proba for a regressor, before any work)
    if isinstance(collection, db.Bag):
        if column is not None:
            raise ValueError("column applies to dataframes, not to bags")
        return collection.map_partitions(_score_partition, _model_handle(est), proba)
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

    if columns is None:
        meta = pd.Series([], dtype=dtype, name="prediction")
    else:
        meta = pd.DataFrame({c: np.empty(0, dtype=dtype) for c in columns})
    model = _model_handle(est)
    return collection.map_partitions(_score_series, model, proba, columns, dtype, meta=meta)
