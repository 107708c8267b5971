"""Scoring in Spark (``pip install "sktransfer[spark]"``; Java 17+).

:func:`predict_udf` turns a model saved with :func:`sktransfer.save` into a column
function built on :func:`pyspark.ml.functions.predict_batch_udf`::

    from pyspark.sql import SparkSession
    from sktransfer.spark import predict_udf

    spark = SparkSession.builder.getOrCreate()
    images = spark.read.format("binaryFile").load("photos/*.jpg")   # path, content, ...
    label = predict_udf("model.skt")
    images.select("path", label("content").alias("label")).write.parquet("labels")

* The model is loaded once per executor Python worker, from the safe file (no pickle),
  and reused by every batch that worker scores (Spark's ``ModelCache``; it needs
  ``spark.python.worker.reuse``, on by default). Only the path travels in the task.
* The feature cache is off while a worker scores (items scored once would only fill
  its memory, up to the cache's bound per worker), as in :func:`predict_dask`.
* A string column holds texts (a text model) or image paths readable on the workers
  (an image model); a binary column holds encoded images (PNG, JPEG...), e.g. the
  ``content`` column of ``binaryFile``.
* ``model_path`` must be readable on every worker at the same path (a shared file
  system), or be shipped with ``spark.sparkContext.addFile(model_path)``: a worker that
  does not find the path reads ``SparkFiles.get(basename)``.

The column's type follows the model, with the column names of ``sktransfer predict``
and :func:`~sktransfer.distributed.predict_dask`: see :func:`return_type`.
"""

from __future__ import annotations

import os

import numpy as np

from sktransfer.cache import config_context
from sktransfer.io.columns import output_columns

__all__ = ["make_predict_fn", "predict_udf", "return_type"]

_HINT = 'sktransfer.spark needs pyspark: pip install "sktransfer[spark]" (and Java 17+)'
DEFAULT_BATCH_SIZE = 256  # items per model call, as sktransfer predict's default chunk


def _pyspark_types():
    try:
        from pyspark.sql import types
    except ImportError as exc:
        raise ImportError(_HINT) from exc
    return types


def _label_kind(classes):
    """How labels go to Spark: integers -> long, reals -> double, others -> string."""
    kind = np.asarray(classes).dtype.kind
    return "long" if kind in "iu" else "double" if kind == "f" else "string"


def _layout(est, proba):
    """``[(field, kind), ...]`` of the output and whether it is one scalar column; ``kind``
    is ``"long"``, ``"double"`` or ``"string"``; the names are :func:`output_columns`'."""
    names = output_columns(est, proba)
    kind = est.target_type_

    def field_kind(name):
        if name.startswith("proba_") or kind == "regression":
            return "double"
        if kind == "multi_label":
            return "string" if name == "prediction" else "long"  # (proba: labels joined)
        return _label_kind(est.classes_)

    return [(n, field_kind(n)) for n in names], names == ["prediction"] and not proba


def return_type(est, proba=False):
    """The Spark type of :func:`predict_udf`'s column for the fitted ``est``.

    A scalar ``prediction``: a label (long for integer classes, double for real ones,
    else string) or a regressor's value (1-D ``y``: double). A struct otherwise, its
    fields named as the CSV columns of ``sktransfer predict``: with ``proba=True``,
    ``prediction`` (the most probable label; multi-label: the labels with probability
    >= 0.5 joined by ``;``) then ``proba_<class>`` (double) per class; a multi-label
    ``prediction_<label>`` (long 0/1) per label; a regressor's ``prediction_0..k-1``
    (double). ``df.select("col.*")`` spreads a struct into columns.
    """
    types = _pyspark_types()
    spark = {"double": types.DoubleType(), "long": types.LongType(), "string": types.StringType()}
    fields, scalar = _layout(est, proba)
    if scalar:
        return spark[fields[0][1]]
    return types.StructType([types.StructField(f, spark[k], True) for f, k in fields])


_NUMPY = {"long": np.int64, "double": np.float64}


def _cast(values, kind):
    if kind == "string":
        return np.asarray([str(v) for v in values], dtype=object)
    return np.asarray(values).astype(_NUMPY[kind])


def _columns(est, out, proba, fields):
    """``[array per field]`` of one batch's ``predict`` (or ``predict_proba``) output."""
    out = np.asarray(out)
    n = len(out)
    if not proba:
        out = out.reshape(n, len(fields))
        return [_cast(out[:, j], kind) for j, (_, kind) in enumerate(fields)]
    classes = np.asarray(est.classes_)
    if getattr(est, "target_type_", None) == "multi_label":
        first = [";".join(str(c) for c in classes[row >= 0.5]) for row in out]
    else:
        first = classes[out.argmax(axis=1)]
    return [_cast(first, fields[0][1])] + [_cast(out[:, j], "double") for j in range(out.shape[1])]


def _resolve(model_path):
    """The path of the model file on this worker: as given, or the copy ``addFile`` made."""
    if os.path.exists(model_path):
        return model_path
    try:
        from pyspark import SparkFiles

        shipped = SparkFiles.get(os.path.basename(model_path))
    except Exception:  # noqa: BLE001 - no SparkContext files here: report the path itself
        shipped = None
    if shipped and os.path.exists(shipped):
        return shipped
    raise FileNotFoundError(
        f"model file {model_path} is not readable on this Spark worker: put it on a shared "
        "file system or ship it with spark.sparkContext.addFile(path)"
    )


def make_predict_fn(model_path, *, proba=False, device="cpu"):
    """The ``make_predict_fn`` that :func:`predict_udf` hands to ``predict_batch_udf``.

    Called once per Python worker: it loads the model from ``model_path`` and returns
    ``predict(items: np.ndarray) -> np.ndarray | dict`` (one 1-D array of items in; a
    column, or one array per struct field, out), which scores with the feature cache
    off. Use it for a UDF shape of your own (a ``mapInPandas``, a grouped scoring).
    """
    model_path = os.path.abspath(os.fspath(model_path))

    def make():
        import sktransfer

        est = sktransfer.load(_resolve(model_path), device=device)
        fields, scalar = _layout(est, proba)

        def predict(items):
            items = list(items)  # Python str / bytes, as every input adapter takes them
            try:
                with config_context(cache=False):  # each item once: a cache would only grow
                    out = est.predict_proba(items) if proba else est.predict(items)
            except (TypeError, ValueError) as exc:
                if type(exc) not in (TypeError, ValueError):
                    raise
                raise type(exc)(
                    f"{exc} (samples are numbered from 0 within this predict_udf batch of "
                    f"{len(items)} rows)"
                ) from exc
            columns = _columns(est, out, proba, fields)
            if scalar:
                return columns[0]
            return {name: column for (name, _), column in zip(fields, columns)}

        return predict

    return make


def predict_udf(model_path, *, proba=False, batch_size=DEFAULT_BATCH_SIZE, device="cpu"):
    """A Spark column function scoring one column with a model saved by :func:`sktransfer.save`.

    Parameters
    ----------
    model_path : str or path-like
        The safe ``.skt`` file. Read here once (for the output type) and once per
        executor Python worker (see the module docstring for clusters).
    proba : bool, default=False
        A struct of ``prediction`` and the class probabilities, one ``proba_<class>``
        field per class (in ``classes_`` order), from one ``predict_proba`` call, as
        ``sktransfer predict --proba`` writes them; classifiers only.
    batch_size : int, default=256
        Items per model call; the model splits each call into its own micro-batches.
    device : str, default="cpu"
        Where the workers run the model (``"cpu"``, ``"cuda"``, ``"auto"``).

    Returns
    -------
    pyspark UDF
        Apply it to a string column (texts, or image paths) or a binary column (encoded
        images). Its type is :func:`return_type`'s.

    Examples
    --------
    >>> from sktransfer.spark import predict_udf  # doctest: +SKIP
    >>> scores = predict_udf("model.skt", proba=True)  # doctest: +SKIP
    >>> df.select("id", scores("text").alias("p")).select("id", "p.*")  # doctest: +SKIP
    """
    try:
        from pyspark.ml.functions import predict_batch_udf
    except ImportError as exc:
        raise ImportError(_HINT) from exc
    import sktransfer

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    est = sktransfer.load(model_path, device="cpu")  # the type; checks the file before any job
    spark_type = return_type(est, proba)
    del est
    return predict_batch_udf(
        make_predict_fn(model_path, proba=proba, device=device),
        return_type=spark_type,
        batch_size=int(batch_size),
    )
