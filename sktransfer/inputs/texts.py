"""Text input adapters: sequences of ``str`` -> a dataset -> padded token batches.

:func:`check_texts` validates (a missing value is named as such, with its sample
index); :class:`TextDataset` pairs texts with targets and :class:`TextCollate`
tokenises each batch with dynamic padding. Import these from :mod:`sktransfer.data`.
"""

from __future__ import annotations

import numpy as np
import torch

from sktransfer.inputs.containers import as_targets, to_list
from sktransfer.inputs.preprocessing import TextPreprocessing


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
    items = to_list(X, "strings")
    if not items:
        raise ValueError("X is empty: at least one text is required.")
    out = []
    for i, t in enumerate(items):
        if isinstance(t, (bytes, bytearray, memoryview)):  # (not its repr: maybe megabytes)
            raise TypeError(
                f"Sample {i}: expected a str, got {type(t).__name__} "
                f"({memoryview(t).nbytes} bytes); decode texts first (b.decode('utf-8')); "
                "encoded images go to an image estimator."
            )
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
        self.y = as_targets(y, len(self.texts))

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i], (0 if self.y is None else self.y[i])


#: characters per token allowed for before a text is clipped (real tokens average 3-5)
CLIP_CHARS_PER_TOKEN = 16


def clip_for_tokenizer(text, tokenizer, max_length):
    """``text``, or the prefix of it that tokenises to the same first ``max_length`` tokens.

    The tokenizer works on the whole string before it truncates: one 30 MB line cost
    5.3 GB and 94 s. A text longer than ``CLIP_CHARS_PER_TOKEN * max_length`` characters
    is cut at its last whitespace before that many characters; a prefix of whole words
    tokenises to the whole text's first tokens (pre-tokenizers split at whitespace), so if
    it already gives ``max_length`` tokens the result is the same. If not (very long
    tokens), the prefix doubles until it does or is the whole text. Exact for every
    whitespace-splitting tokenizer; a text with no whitespace in its prefix is cut there
    (WordPiece maps a word over 100 characters to [UNK] either way).
    """
    limit = CLIP_CHARS_PER_TOKEN * int(max_length)
    while len(text) > limit:
        cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit), text.rfind("\t", 0, limit))
        prefix = text[: cut if cut > 0 else limit]
        ids = tokenizer(prefix, add_special_tokens=False, truncation=True, max_length=max_length)
        n = len(ids["input_ids"])
        if n >= max_length:
            return prefix
        limit *= 2
    return text


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
        texts, targets = zip(*batch)
        enc = self.prep.tokenizer(
            [clip_for_tokenizer(t, self.prep.tokenizer, self.prep.max_length) for t in texts],
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
