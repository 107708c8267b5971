"""Shared fixtures: tiny in-code backbones and small real datasets (nothing downloaded)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# automatic CPU image micro-batches at the rule's size, not a timing-chosen one: the suite
# compares outputs exactly; tests/test_calibration.py turns the calibration on
os.environ.setdefault("SKTRANSFER_BATCH_CALIBRATION", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

POS = ["good", "great", "wonderful", "excellent", "lovely", "superb", "fun", "brilliant"]
NEG = ["bad", "awful", "terrible", "boring", "dull", "poor", "ugly", "weak"]
FILL = ["the", "movie", "film", "was", "plot", "acting", "a", "really", "quite", "and", "story"]


def make_cnn(seed=0, width=8):
    """A small CNN with BatchNorm and Dropout: 4 blocks (Sequential children)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU()),
        nn.Dropout(0.2),
        nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),  # keep a little spatial layout for the features
            nn.Flatten(),
        ),
    )


def assert_batch_invariant(actual, desired, ulps=32):
    """Equal up to float32 rounding: for outputs computed in batches of other sizes.

    oneDNN and BLAS pick their kernels (and so the order of a reduction's float32 sums)
    by CPU vendor and batch shape: outputs bit-identical across batch compositions on an
    Intel Xeon differ by ~6e-8 on an AMD EPYC. The tolerance is ``ulps`` float32 epsilons
    relative to the outputs' magnitude: rounding, not a different computation.
    """
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape
    eps = np.finfo(np.float32).eps * ulps
    scale = max(float(np.abs(desired).max()) if desired.size else 0.0, 1.0)
    np.testing.assert_allclose(actual, desired, rtol=eps, atol=eps * scale)


@pytest.fixture
def fresh_cache():
    """An empty in-memory feature cache (no disk tier) for the test, emptied after it."""
    from sktransfer import clear_cache
    from sktransfer.cache import config_context

    clear_cache()
    with config_context(cache=True, cache_dir="", cache_max_bytes=2**30):
        yield
    clear_cache()


@pytest.fixture
def cnn():
    return make_cnn()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as uint8 (n, 8, 8) grey images, 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images / 16.0 * 255).round().astype(np.uint8)
    return X, d.target


@pytest.fixture(scope="session")
def digits_small(digits):
    X, y = digits
    idx = np.random.RandomState(0).permutation(len(y))[:240]
    return X[idx], y[idx]


def make_texts(n=120, seed=0):
    rng = np.random.RandomState(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILL, 5)) + list(rng.choice(POS if label else NEG, 2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append("pos" if label else "neg")
    return texts, np.asarray(labels, dtype=object)


@pytest.fixture(scope="session")
def texts():
    return make_texts()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer random BERT with a real WordPiece tokenizer saved to a directory."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def save_tiny_bert(path, **config):
    """Save a 2-layer random BERT (``config`` overrides, e.g. no dropout) with a real
    WordPiece tokenizer for the :func:`make_texts` vocabulary into ``path``; returns it."""
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POS + NEG + FILL))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores BertTokenizerFast(vocab_file=...); from_pretrained(dir) reads it
    tok = BertTokenizerFast.from_pretrained(str(path))
    assert tok("good movie")["input_ids"][1] != tok.unk_token_id
    tok.save_pretrained(str(path))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        **config,
    )
    BertModel(config).save_pretrained(str(path))
    return str(path)


def make_vit_classifier(directory, digits_small):
    """A frozen image classifier on a tiny random ViT saved under ``directory / "vit"``."""
    from sktransfer import PretrainedImageClassifier
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, image_size=16, patch_size=8)  # fmt: skip
    ViTModel(config).save_pretrained(str(directory / "vit"))
    X, y = digits_small
    labels = np.array(["even", "odd"])[y[:40] % 2]
    return PretrainedImageClassifier(str(directory / "vit"), random_state=0).fit(X[:40], labels)


# --------------------------------------------------------------------------- the command line
#: ``sktransfer`` in a process of its own (signals, stdin, exit statuses)
CLI_CHILD = [sys.executable, "-m", "sktransfer.cli"]


def run_cli(argv, capsys):
    """``sktransfer ARGV`` in this process: ``(exit status, stdout, stderr)``."""
    from sktransfer.cli import commands

    code = commands.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def text_model(tiny_bert_dir, texts, tmp_path_factory):
    """A frozen text classifier on the tiny BERT and its safe file: ``(clf, path)``."""
    import sktransfer
    from sktransfer import PretrainedTextClassifier

    X, y = texts
    clf = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X, y)
    path = tmp_path_factory.mktemp("models") / "text.skt"
    sktransfer.save(clf, path)
    return clf, str(path)


@pytest.fixture(scope="module")
def image_model(digits_small, tmp_path_factory):
    """A frozen image classifier on a tiny CNN and its joblib file: ``(clf, path)`` (a user
    nn.Module backbone: joblib, not the safe format, hence --allow-pickle)."""
    import joblib

    from sktransfer import PretrainedImageClassifier

    X, y = digits_small
    labels = np.array(["even", "odd"])[y[:80] % 2]
    clf = PretrainedImageClassifier(make_cnn(), image_size=16, random_state=0).fit(X[:80], labels)
    path = tmp_path_factory.mktemp("models") / "image.joblib"
    joblib.dump(clf, path)
    return clf, str(path)
