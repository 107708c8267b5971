"""The result columns of a fitted estimator, named once for every scoring route.

``sktransfer predict`` (its CSV), :mod:`sktransfer.spark`, :mod:`sktransfer.ray` and
:func:`sktransfer.distributed.predict_dask` name their output columns by
:func:`output_columns`.
"""

from __future__ import annotations


def output_columns(est, proba=False):
    """The names of the result columns for the fitted ``est``.

    With ``proba`` (classifiers): ``prediction`` then ``proba_<class>`` per class, from
    one ``predict_proba`` call (as ``sktransfer predict --proba``). Else ``prediction``
    (a single-label classifier; a regressor fitted on 1-D ``y``), ``prediction_<label>``
    (multi-label: the indicator matrix of ``predict``) or ``prediction_0..k-1`` (a
    regressor's k outputs).
    """
    kind = getattr(est, "target_type_", None)
    if kind == "regression":
        if proba:
            raise ValueError(
                f"proba=True needs a classifier; {type(est).__name__} is a regressor "
                "(its predictions are the values)"
            )
        if est.y_ndim_ == 1:
            return ["prediction"]
        return [f"prediction_{j}" for j in range(int(est.n_outputs_))]
    if kind not in ("single_label", "multi_label"):
        raise ValueError(f"{type(est).__name__} is not a fitted classifier or regressor")
    if proba:
        return ["prediction"] + [f"proba_{c}" for c in est.classes_]
    if kind == "multi_label":
        return [f"prediction_{c}" for c in est.classes_]
    return ["prediction"]
