"""Text input adapters: sequences of ``str`` -> a dataset -> padded token batches.

:func:`check_texts` validates (a missing value is named as such, with its sample
index); :class:`TextDataset` pairs texts with targets and :class:`TextCollate`
tokenises each batch with dynamic padding. Import these from :mod:`sktransfer.data`.
"""

from __future__ import annotations

import numpy as np
import torch

from sktransfer.backbones._base import TextPreprocessing
from sktransfer.inputs.containers import _as_targets, _to_list
from sktransfer.training.heap import tune_heap_unless_cuda


def check_texts(X):
    """Validate text input and normalise it to a list of ``str``.

    Parameters
    ----------
    X : list, tuple, 1-D or (n, 1) array, Series or single-column DataFrame
        The texts.

    Returns
    -------
    texts : list of str

    Raises
    ------
    TypeError
        If ``X`` is a single string or a sample is not a ``str`` (index named).
    ValueError
        If ``X`` is empty or has more than one column, or a text is not valid
        Unicode (a lone surrogate, e.g. from ``errors="surrogateescape"``; index named).
    """
    items = _to_list(X, "strings")
    if not items:
        raise ValueError("X is empty: at least one text is required.")
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, str):
            missing = t is None or (isinstance(t, float) and np.isnan(t))
            hint = " (a missing value; fill or drop it)" if missing else ""
            raise TypeError(f"Sample {i}: expected a str, got {type(t).__name__} {t!r}{hint}.")
        out.append(str(t))
    _check_unicode(out)
    return out


def _check_unicode(texts):
    """Every text must encode as UTF-8 (the tokenizers' input); one C-speed pass."""
    try:
        "\x00".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"Sample {i}: text is not valid Unicode ({exc.reason} at position "
                    f"{exc.start}); decode the source with errors='replace' or fix it."
                ) from exc


class TextDataset(torch.utils.data.Dataset):
    """Texts and targets; pair with :func:`make_text_collate` in a DataLoader.

    Parameters
    ----------
    texts : list of str
        Output of :func:`check_texts`.
    y : array-like, optional
        Targets; ``y[i]`` is returned as given. When None the target is 0.
    """

    def __init__(self, texts, y=None):
        self.texts = list(texts)
        self.y = _as_targets(y, len(self.texts))

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i], (0 if self.y is None else self.y[i])


class TextCollate:
    """Tokenise a batch of ``(text, target)`` pairs with dynamic padding.

    Parameters
    ----------
    prep : TextPreprocessing
        Holds the tokenizer and ``max_length``.
    """

    keys = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, prep: TextPreprocessing):
        self.prep = prep

    def __call__(self, batch):
        tune_heap_unless_cuda()  # CPU forwards: keep activation pages mapped
        texts, targets = zip(*batch)
        enc = self.prep.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.prep.max_length,
            return_tensors="pt",
        )
        inputs = {k: enc[k] for k in self.keys if k in enc}
        t = np.asarray(targets)
        dtype = torch.int64 if t.dtype.kind in "iub" else torch.float32
        return inputs, torch.as_tensor(t, dtype=dtype)


def make_text_collate(prep: TextPreprocessing):
    """Return a picklable collate function for :class:`TextDataset` batches.

    Parameters
    ----------
    prep : TextPreprocessing
        Holds the tokenizer and ``max_length``.

    Returns
    -------
    collate : TextCollate
        Maps a list of ``(text, target)`` to ``(dict_of_tensors, targets)``.
    """
    return TextCollate(prep)
