"""The ``python_function`` model of the flavour (:mod:`sktransfer.mlflow`): what
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` call ``predict`` on."""

from __future__ import annotations

import base64
import binascii
import os

from sktransfer.mlflow import COLUMNS, _default_method, _methods, _modality


class PyfuncModel:
    """The ``python_function`` face of a fitted sktransfer estimator.

    ``predict(model_input, params=None)`` takes a DataFrame (one column; with several, the
    signature's named column, else ``text`` / ``image``), a Series, a list or an ndarray (an
    image model also an ``(n, h, w[, c])`` pixel array). Text items are strings; image items
    encoded bytes, base64 strings of them, or paths: a string is a path when that file
    exists, else base64 when it decodes as base64, else a path (reported missing).
    ``params["method"]``: ``"predict"`` (the estimator's output), ``"predict_proba"`` (a
    DataFrame of ``proba_<class>`` columns, as ``sktransfer predict --proba`` names them) or
    ``"transform"``. Errors name the item's position.
    """

    def __init__(self, estimator, column=None):
        self.estimator = estimator
        self.modality = _modality(estimator)
        self.column = column or COLUMNS[self.modality]

    def get_raw_model(self):
        return self.estimator

    def predict(self, model_input, params=None):
        method = (params or {}).get("method") or _default_method(self.estimator)
        if method not in _methods(self.estimator):
            raise ValueError(
                f"params['method'] must be one of {_methods(self.estimator)} for this "
                f"{type(self.estimator).__name__}, got {method!r}"
            )
        items = self._items(model_input)
        if self.modality == "image" and isinstance(items, list):
            items = [_image_item(item) for item in items]
        elif self.modality == "text":
            _check_texts(items)
        out = getattr(self.estimator, method)(items)
        if method == "predict_proba":
            import pandas as pd

            columns = [f"proba_{c}" for c in self.estimator.classes_]
            return pd.DataFrame(out, columns=columns)
        return out

    def _items(self, model_input):
        import numpy as np
        import pandas as pd

        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if isinstance(model_input, pd.DataFrame):
            names = [str(c) for c in model_input.columns]
            if len(names) == 1:
                model_input = model_input.iloc[:, 0]
            elif self.column in names:
                model_input = model_input[self.column]
            else:
                raise ValueError(
                    f"this {self.modality} model takes one column, or a column named "
                    f"{self.column!r}; got columns {names}"
                )
        if isinstance(model_input, pd.Series):
            return model_input.tolist()
        if isinstance(model_input, np.ndarray):
            if self.modality == "image" and model_input.dtype != object and model_input.ndim > 1:
                return model_input  # pixel arrays, as the estimator takes them
            if model_input.ndim == 2 and model_input.shape[1] == 1:
                model_input = model_input[:, 0]
            if model_input.ndim != 1:
                raise ValueError(
                    f"a {self.modality} model takes a 1-D array of items (or one column); "
                    f"got shape {model_input.shape}"
                )
            return model_input.tolist()
        if isinstance(model_input, (str, bytes)):
            raise TypeError(
                f"model_input is one {type(model_input).__name__}; pass a list, a Series or "
                "a one-column DataFrame of items"
            )
        if isinstance(model_input, (list, tuple)):
            return list(model_input)
        raise TypeError(
            f"model_input must be a DataFrame, Series, list or ndarray; got "
            f"{type(model_input).__name__}"
        )


def _check_texts(items):
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"item {i}: a text model takes strings, got {type(item).__name__}")


def _image_item(item):
    """A base64 string as its bytes; a path, bytes or an array as it is."""
    if not isinstance(item, str) or os.path.exists(item):
        return item
    text = "".join(item.split())  # base64.encodebytes breaks lines
    if len(text) < 8 or len(text) % 4:
        return item
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return item
