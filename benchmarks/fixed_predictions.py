"""Predictions of fixed configurations, to show a refactoring changes no number.

``python -m benchmarks.fixed_predictions record FILE`` fits every configuration below (tiny
in-code backbones from ``tests/conftest.py``, fixed seeds, one torch thread) and stores
their outputs; ``... compare FILE`` refits them and reports, per configuration, whether the
outputs are bit-identical to the recorded ones (exit 1 if any is not). Bit-identity holds
on one machine only (oneDNN/BLAS kernels differ between CPU vendors), so the file is a
local record, not a committed reference.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _configs(bert_dir):
    from conftest import make_cnn, make_texts

    from sktransfer import (
        ImageEmbedder,
        PretrainedImageClassifier,
        PretrainedImageRegressor,
        PretrainedTextClassifier,
        PretrainedTextRegressor,
        TextEmbedder,
    )

    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, (48, 12, 12, 3), dtype=np.uint8)
    X_new = rng.randint(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    y = np.arange(48) % 3
    values = rng.standard_normal((48, 2))
    Y = (rng.rand(48, 3) > 0.5).astype(int)
    texts, labels = make_texts(60)
    new_texts, _ = make_texts(10, seed=1)
    img = dict(image_size=12, random_state=0)
    tune = dict(freeze_depth=-2, max_epochs=2, batch_size=8)
    txt = dict(random_state=0)

    def image(cls, y_fit, **kw):
        est = cls(make_cnn(), **img, **kw).fit(X, y_fit)
        return est.predict_proba(X_new) if hasattr(est, "predict_proba") else est.predict(X_new)

    def text(cls, y_fit, **kw):
        est = cls(bert_dir, **txt, **kw).fit(texts, y_fit)
        return (
            est.predict_proba(new_texts)
            if hasattr(est, "predict_proba")
            else est.predict(new_texts)
        )

    return {
        "image_clf_frozen": lambda: image(PretrainedImageClassifier, y),
        "image_clf_partial": lambda: image(PretrainedImageClassifier, y, **tune),
        "image_clf_full_augment": lambda: image(
            PretrainedImageClassifier, y, freeze_depth=0, max_epochs=2, augment="light"
        ),
        "image_clf_multilabel": lambda: image(PretrainedImageClassifier, Y, **tune),
        "image_reg_frozen": lambda: image(PretrainedImageRegressor, values),
        "image_reg_partial": lambda: image(PretrainedImageRegressor, values, **tune),
        "image_embedder": lambda: ImageEmbedder(make_cnn(), image_size=12).fit(X).transform(X_new),
        "text_clf_frozen": lambda: text(PretrainedTextClassifier, labels),
        "text_clf_partial": lambda: text(PretrainedTextClassifier, labels, **tune),
        "text_clf_contrastive": lambda: text(
            PretrainedTextClassifier,
            labels,
            objective="contrastive",
            freeze_depth=-1,
            max_epochs=1,
        ),  # fmt: skip
        "text_reg_partial": lambda: text(PretrainedTextRegressor, np.linspace(0, 1, 60), **tune),
        "text_embedder": lambda: TextEmbedder(bert_dir).fit(texts).transform(new_texts),
    }


def _bert_dir(tmp):
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    import torch
    from conftest import FILL, NEG, POS
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(POS + NEG + FILL))
    with open(os.path.join(tmp, "vocab.txt"), "w") as fh:
        fh.write("\n".join(vocab) + "\n")
    BertTokenizerFast.from_pretrained(tmp).save_pretrained(tmp)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(tmp)
    return tmp


def outputs() -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.join(_ROOT, "tests"))
    os.environ.setdefault("SKTRANSFER_BATCH_CALIBRATION", "0")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        configs = _configs(_bert_dir(tmp))
        return {name: np.asarray(fn()) for name, fn in configs.items()}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("record", "compare"):
        print(__doc__)
        return 2
    action, path = argv
    got = outputs()
    if action == "record":
        np.savez(path, **got)
        print(f"recorded {len(got)} configurations in {path}")
        return 0
    ref = np.load(path)
    bad = 0
    for name in sorted(set(ref.files) | set(got)):
        if name not in ref.files or name not in got:
            print(f"{name:28s} MISSING")
            bad += 1
            continue
        same = ref[name].shape == got[name].shape and np.array_equal(ref[name], got[name])
        diff = "" if same else f" max |diff| {np.abs(ref[name] - got[name]).max():.3g}"
        print(f"{name:28s} {'bit-identical' if same else 'DIFFERENT'}{diff}")
        bad += not same
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
