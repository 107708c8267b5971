"""Scoring in Ray Data (``pip install "sktransfer[ray]"``).

:class:`Predictor` is the callable class that ``Dataset.map_batches`` wants: Ray builds
one per actor, so the model is loaded once per actor and reused by every batch it
scores. Passing a function that loads the model instead reloads it per call; passing
the fitted estimator itself ships it with every task::

    import ray
    from sktransfer.ray import Predictor

    ds = ray.data.read_binary_files("photos/", include_paths=True)   # bytes, path
    scored = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_path": "model.skt", "column": "bytes"},
        concurrency=4,            # actors, each with its own copy of the model
        batch_size=256,
        batch_format="pandas",    # or "numpy"
    )
    scored.drop_columns(["bytes"]).write_parquet("labels/")

* This module imports nothing of Ray (Ray imports it, in each actor); Ray Data itself
  comes with ``pip install "sktransfer[ray]"``.
* The model is read from the safe file (no pickle), on the actor: only the path travels.
* The feature cache is off while an actor scores (items scored once would only fill its
  memory, up to the cache's bound per actor), as in :func:`predict_dask`.
* The scored column may hold texts (a text model), image paths readable on the workers,
  or encoded images (``bytes``, e.g. ``read_binary_files``' ``bytes`` column).

Each batch comes back with its columns and the columns of ``sktransfer predict``'s
CSV added: ``prediction`` (a label; a regressor's value for 1-D ``y``),
``prediction_0..k-1`` (a regressor's k outputs), ``prediction_<label>`` (a multi-label
indicator, int64), and with ``proba=True`` one ``proba_<class>`` column per class.
"""

from __future__ import annotations

import os

import numpy as np

from sktransfer.cache import config_context
from sktransfer.io.columns import output_columns

__all__ = ["Predictor", "output_columns"]


class Predictor:
    """Score one column of Ray Data batches with a model saved by :func:`sktransfer.save`.

    Parameters
    ----------
    model_path : str or path-like
        The safe ``.skt`` file, readable where the actors run.
    column : str, optional
        The column to score; optional when batches have one column.
    proba : bool, default=False
        Add ``proba_<class>`` columns (classifiers); ``prediction`` is then the most
        probable label (multi-label: the labels with probability >= 0.5, joined by ``;``,
        as ``sktransfer predict`` writes them).
    device : str, default="cpu"
        Where the actor runs the model (``"cpu"``, ``"cuda"``, ``"auto"``); give the
        actors a GPU with ``map_batches(..., num_gpus=1)``.

    Attributes
    ----------
    estimator_ : the loaded estimator (one per actor, reused by every batch)
    columns_ : list of str, the columns added to each batch (:func:`output_columns`)

    Examples
    --------
    >>> ds.map_batches(Predictor, fn_constructor_kwargs={"model_path": "m.skt"},
    ...                concurrency=2, batch_format="pandas")  # doctest: +SKIP
    """

    def __init__(self, model_path, *, column=None, proba=False, device="cpu"):
        import sktransfer

        self.model_path = os.fspath(model_path)
        self.column = column
        self.proba = bool(proba)
        self.estimator_ = sktransfer.load(self.model_path, device=device)
        self.columns_ = output_columns(self.estimator_, self.proba)

    # ------------------------------------------------------------------ one batch
    def _column(self, names):
        if self.column is None:
            if len(names) != 1:
                raise ValueError(
                    f"batches have the columns {names}: pass column=NAME in "
                    "fn_constructor_kwargs to choose the one to score"
                )
            return names[0]
        if self.column not in names:
            raise ValueError(f"no column {self.column!r} in the batch; its columns are {names}")
        return self.column

    def _score(self, items, column):
        """``{column: 1-D array}`` for the items (a list of str / bytes)."""
        est = self.estimator_
        try:
            with config_context(cache=False):  # each item once: a cache would only grow
                out = est.predict_proba(items) if self.proba else est.predict(items)
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):
                raise
            raise type(exc)(
                f"{exc} (column {column!r}: samples are numbered from 0 within this batch "
                f"of {len(items)} rows)"
            ) from exc
        out = np.asarray(out)
        names = self.columns_
        if not self.proba:
            if len(names) == 1:
                return {names[0]: out.reshape(len(items))}
            return {name: out[:, j] for j, name in enumerate(names)}
        classes = np.asarray(est.classes_)
        if getattr(est, "target_type_", None) == "multi_label":
            chosen = [";".join(str(c) for c in classes[row >= 0.5]) for row in out]
            first = np.asarray(chosen, dtype=object)
        else:
            first = classes[out.argmax(axis=1)]
        return {"prediction": first, **{n: out[:, j] for j, n in enumerate(names[1:])}}

    def __call__(self, batch):
        """Score ``batch`` (a pandas DataFrame or a dict of numpy arrays); the same kind back,
        with :attr:`columns_` added (an existing column of that name is replaced)."""
        if isinstance(batch, dict):
            column = self._column(list(batch))
            scored = self._score(_as_list(batch[column]), column)
            return {**batch, **scored}
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - ray[data] depends on pandas
            pd = None
        if pd is not None and isinstance(batch, pd.DataFrame):
            column = self._column(list(batch.columns))
            scored = self._score(_as_list(batch[column]), column)
            out = batch.copy(deep=False)
            for name, values in scored.items():
                out[name] = values
            return out
        raise TypeError(
            "Predictor takes a pandas DataFrame or a dict of numpy arrays (map_batches with "
            f'batch_format="pandas" or "numpy"), got {type(batch).__name__}'
        )


def _as_list(values):
    """Python ``str`` / ``bytes`` items (numpy's ``str_`` / ``bytes_`` converted)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)
