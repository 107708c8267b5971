"""adapter="lora" (issue 15, item 2): LoRA adapters on the unfrozen blocks, through peft."""

from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from torch import nn

import sktransfer
from sktransfer import (
    PretrainedImageClassifier,
    PretrainedImageRegressor,
    PretrainedTextClassifier,
    PretrainedTextRegressor,
)
from sktransfer._estimator import fit_paths as base_module
from sktransfer.training import lora as lora_module

lora_module.require_peft()  # (peft is a dev dependency: a missing one fails, not skips)


def _unwrapped(name):
    return name.replace(".base_layer", "")


@pytest.fixture
def capture(monkeypatch):
    """Deep copies of the net just before its adapters are merged (the trained LoRA net)."""
    nets = []
    real = base_module.merge_lora

    def spy(net, config, n_frozen):
        nets.append(copy.deepcopy(net).eval())
        return real(net, config, n_frozen)

    monkeypatch.setattr(base_module, "merge_lora", spy)
    return nets


def _text_batch(clf, texts):
    tok = clf.preprocessing_.tokenizer
    return dict(tok(list(texts), padding=True, truncation=True, max_length=64, return_tensors="pt"))


def test_lora_freezes_every_base_weight_and_trains_adapters_and_head(tiny_bert_dir, texts, capture):
    X, y = texts
    frozen = PretrainedTextClassifier(tiny_bert_dir).fit(X[:60], y[:60])
    pretrained = {k: v.clone() for k, v in frozen.module_.state_dict().items()}
    clf = PretrainedTextClassifier(
        tiny_bert_dir, freeze_depth=0, adapter="lora", lora_rank=4, max_epochs=3, lr=1e-2,
        early_stopping=False, random_state=0,
    ).fit(X[:60], y[:60])  # fmt: skip
    (trained,) = capture
    adapters, seen = 0, set()
    for name, p in trained.named_parameters():
        if lora_module.is_adapter_param(name):
            adapters += 1
            assert p.requires_grad, name
            continue
        assert p.requires_grad == name.startswith("head."), name
        if not name.startswith("head."):
            key = _unwrapped(name)
            seen.add(key)
            assert torch.equal(p.detach(), pretrained[key]), f"{key} moved"
    assert adapters > 0 and seen == {k for k in pretrained if not k.startswith("head.")}
    moved = [t for k, t in clf.lora_adapters_["tensors"].items() if "lora_B" in k]
    assert all(bool(t.abs().sum() > 0) for t in moved)  # B starts at 0: it really trained
    # merged: plain modules, the same function as the unmerged net
    assert not any("lora" in type(m).__name__.lower() for m in clf.module_.modules())
    assert not any(lora_module.is_adapter_param(n) for n, _ in clf.module_.named_parameters())
    batch = _text_batch(clf, X[60:80])
    with torch.no_grad():
        np.testing.assert_allclose(
            clf.module_(batch).numpy(), trained(batch).numpy(), rtol=0, atol=1e-5
        )
    changed = [k for k, v in clf.module_.state_dict().items() if not torch.equal(v, pretrained[k])]
    assert changed and all(k.endswith(".weight") for k in changed if not k.startswith("head."))
    assert clf.score(X[60:], y[60:]) >= 0.5


def test_lora_with_the_other_training_knobs(tiny_bert_dir, texts, capture, fresh_cache):
    """Gradual unfreezing, lr="auto", layer_decay and L2-SP keep the base weights frozen;
    the frozen prefix's activations come from the cache."""
    from sktransfer.cache import cache_info

    X, y = texts
    kw = dict(freeze_depth=-1, adapter="lora", max_epochs=1, random_state=0)
    first = PretrainedTextClassifier(tiny_bert_dir, **kw).fit(X[:40], y[:40])
    hits = cache_info()["hits"]
    clf = PretrainedTextClassifier(
        tiny_bert_dir, unfreeze_schedule=1, lr="auto", layer_decay=0.8, l2sp_alpha=0.1, **kw
    ).fit(X[:40], y[:40])
    assert cache_info()["hits"] > hits  # the boundary activations of the first fit
    assert [h.get("phase") for h in clf.history_] == ["head", "all"]
    for trained in capture:
        for name, p in trained.named_parameters():
            assert p.requires_grad == (lora_module.is_adapter_param(name) or "head." in name)
    assert first.lora_adapters_["target_modules"] == clf.lora_adapters_["target_modules"]


def test_only_the_last_block_with_freeze_depth_minus_one(tiny_bert_dir, texts):
    X, y = texts
    clf = PretrainedTextClassifier(
        tiny_bert_dir, freeze_depth=-1, adapter="lora", max_epochs=1, random_state=0
    ).fit(X[:40], y[:40])
    last = len(clf.module_.blocks) - 1
    targets = clf.lora_adapters_["target_modules"]
    assert targets and all(t.startswith(f"blocks.{last}.") for t in targets)
    # the attention and MLP projections: q, k, v, the attention output, intermediate, output
    assert len(targets) == 6
    assert all(k.startswith(f"blocks.{last}.") for k in clf.lora_adapters_["tensors"])


def _counts(net, n_frozen):
    blocks = sum(p.numel() for b in net.blocks[n_frozen:] for p in b.parameters())
    return blocks, sum(p.numel() for p in net.head.parameters())


def test_n_trainable_params_in_every_mode(tmp_path, tiny_bert_dir, texts):
    """Frozen: the head; full fine-tuning: blocks + head; LoRA: r * (in + out) per layer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(tmp_path)
    BertTokenizerFast.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    X, y = texts
    kw = dict(max_epochs=1, random_state=0)
    frozen = PretrainedTextClassifier(str(tmp_path), **kw).fit(X[:30], y[:30])
    assert frozen.n_trainable_params_ == 128 * 2 + 2
    full = PretrainedTextClassifier(str(tmp_path), freeze_depth=1, **kw).fit(X[:30], y[:30])
    blocks, head = _counts(full.module_, 1)
    assert full.n_trainable_params_ == blocks + head
    lora = PretrainedTextClassifier(
        str(tmp_path), freeze_depth=1, adapter="lora", lora_rank=2, **kw
    ).fit(X[:30], y[:30])
    shapes = [t.shape for k, t in lora.lora_adapters_["tensors"].items()]
    assert lora.n_trainable_params_ == head + sum(s.numel() for s in shapes)
    assert lora.n_trainable_params_ <= 0.03 * full.n_trainable_params_


def test_clone_and_grid_search_over_lora_rank(tiny_bert_dir, texts):
    X, y = texts
    est = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=-1, adapter="lora", max_epochs=1,
                                   early_stopping=False, random_state=0)  # fmt: skip
    assert clone(est).get_params()["adapter"] == "lora"
    search = GridSearchCV(est, {"lora_rank": [1, 4]}, cv=2).fit(X[:40], y[:40])
    best = search.best_estimator_
    assert best.lora_adapters_["r"] == best.lora_rank
    a = next(t for k, t in best.lora_adapters_["tensors"].items() if "lora_A" in k)
    assert a.shape[0] == best.lora_rank


def test_regressors_take_lora(tiny_bert_dir, texts):
    X, _ = texts
    values = np.arange(40, dtype=float) % 3
    reg = PretrainedTextRegressor(tiny_bert_dir, freeze_depth=-1, adapter="lora", max_epochs=1,
                                  random_state=0).fit(X[:40], values)  # fmt: skip
    assert reg.lora_adapters_["tensors"] and reg.predict(X[:3]).shape == (3,)


# --------------------------------------------------------------------------- images
def _cnn_with_depthwise():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    )


def test_image_cnn_conv_lora(digits_small, capture):
    X, y = digits_small
    cnn = _cnn_with_depthwise()
    pretrained = {f"blocks.{k}": v.clone() for k, v in cnn.state_dict().items()}
    clf = PretrainedImageClassifier(cnn, image_size=16, freeze_depth=1, adapter="lora",
                                    lora_rank=2, max_epochs=2, lr=1e-2, random_state=0)  # fmt: skip
    clf.fit(X[:80], y[:80] % 2)
    # the depthwise conv (groups=8) is skipped; the pointwise and full convs are adapted
    assert clf.lora_adapters_["target_modules"] == ["blocks.1.1", "blocks.2.0"]
    state = clf.module_.state_dict()
    assert torch.equal(state["blocks.1.0.weight"], pretrained["blocks.1.0.weight"])
    assert not torch.equal(state["blocks.2.0.weight"], pretrained["blocks.2.0.weight"])
    assert torch.equal(state["blocks.2.0.bias"], pretrained["blocks.2.0.bias"])  # biases frozen
    (trained,) = capture
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(clf.module_(x).numpy(), trained(x).numpy(), atol=1e-5)
    assert clf.predict(X[80:90]).shape == (10,)


class _Attention(nn.Module):
    """A vector block with torchvision ViT's attention layer (``nn.MultiheadAttention``)."""

    def __init__(self, d=16):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Linear(d, d)

    def forward(self, x):
        h = x.view(len(x), 2, -1)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.mlp(h).reshape(len(x), -1)


def test_linear_blocks_and_multihead_attention(capture):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), _Attention(), nn.Linear(32, 8))
    rng = np.random.RandomState(0)
    X = rng.randn(60, 6).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    reg = PretrainedImageRegressor(
        net, freeze_depth=0, adapter="lora", lora_rank=2, max_epochs=2, lr=1e-2, random_state=0
    ).fit(X, y * 1.0)
    # a block that is itself a Linear is replaced by its merged self; MHA is adapted whole
    assert reg.lora_adapters_["target_modules"] == [
        "blocks.0", "blocks.2.attn", "blocks.2.mlp", "blocks.3",
    ]  # fmt: skip
    assert type(reg.module_.blocks[0]) is nn.Linear
    assert type(reg.module_.blocks[2].attn) is nn.MultiheadAttention
    (trained,) = capture
    x = torch.from_numpy(X[:7])
    with torch.no_grad():
        np.testing.assert_allclose(reg.module_(x).numpy(), trained(x).numpy(), atol=1e-5)


# --------------------------------------------------------------------------- deploy
def test_onnx_and_int8_on_the_merged_model(tiny_bert_dir, texts, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from sktransfer.deploy import export_onnx, quantize_dynamic

    X, y = texts
    clf = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=0, adapter="lora", max_epochs=2,
                                   lr=1e-2, random_state=0).fit(X[:60], y[:60])  # fmt: skip
    sess = ort.InferenceSession(str(export_onnx(clf, tmp_path / "m.onnx")),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    enc = clf.preprocessing_.tokenizer(list(X[60:70]), padding=True, truncation=True,
                                       max_length=64, return_tensors="np")  # fmt: skip
    feeds = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    (out,) = sess.run(None, feeds)
    np.testing.assert_allclose(out, clf.predict_proba(X[60:70]), atol=1e-5)
    q = quantize_dynamic(clf)
    assert any("quantized" in type(m).__module__ for m in q.module_.blocks.modules())
    np.testing.assert_allclose(q.predict_proba(X[60:70]), clf.predict_proba(X[60:70]), atol=0.05)


# --------------------------------------------------------------------------- persistence
def test_saved_and_loaded_keeps_adapters(tiny_bert_dir, texts, tmp_path):
    X, y = texts
    clf = PretrainedTextClassifier(tiny_bert_dir, freeze_depth=-1, adapter="lora", max_epochs=1,
                                   random_state=0).fit(X[:40], y[:40])  # fmt: skip
    with pytest.raises(ValueError, match="packaged backbone"):
        sktransfer.save(clf, tmp_path / "r.skt", store_backbone="reference")
    loaded = sktransfer.load(sktransfer.save(clf, tmp_path / "e.skt"))
    np.testing.assert_array_equal(loaded.predict_proba(X[40:60]), clf.predict_proba(X[40:60]))
    assert loaded.n_trainable_params_ == clf.n_trainable_params_
    saved = loaded.lora_adapters_
    assert saved["target_modules"] == clf.lora_adapters_["target_modules"]
    assert all(
        torch.equal(saved["tensors"][k], v) for k, v in clf.lora_adapters_["tensors"].items()
    )
    back = pickle.loads(pickle.dumps(clf))  # joblib's way: the adapters travel as CPU tensors
    np.testing.assert_array_equal(back.predict_proba(X[40:60]), clf.predict_proba(X[40:60]))
    assert back.lora_adapters_["tensors"].keys() == clf.lora_adapters_["tensors"].keys()


@pytest.mark.packaged
def test_packaged_reference_file_holds_adapters_and_head_only(texts, tmp_path, monkeypatch):
    X, y = texts
    clf = PretrainedTextClassifier(freeze_depth=-1, adapter="lora", max_epochs=1, max_length=16,
                                   random_state=0).fit(X[:30], y[:30])  # fmt: skip
    embed = sktransfer.save(clf, tmp_path / "embed.skt")
    ref = sktransfer.save(clf, tmp_path / "ref.skt", store_backbone="reference")
    assert os.path.getsize(ref) < 0.02 * os.path.getsize(embed)
    expected = clf.predict_proba(X[30:50])
    for path in (embed, ref):
        loaded = sktransfer.load(path)
        np.testing.assert_array_equal(loaded.predict_proba(X[30:50]), expected)
        for k, v in clf.module_.state_dict().items():
            assert torch.equal(loaded.module_.state_dict()[k], v), k  # re-merged bit for bit
    # a changed adapter is caught by the digest of the re-merged weights
    from sktransfer.io import adapters

    real = adapters.merge_into

    def tampered(net, lora):
        lora = {**lora, "tensors": {k: v * 1.01 for k, v in lora["tensors"].items()}}
        real(net, lora)

    monkeypatch.setattr(adapters, "merge_into", tampered)
    with pytest.raises(ValueError, match="differ"):
        sktransfer.load(ref)


@pytest.mark.packaged
def test_packaged_cnn_reference_remerges_conv_adapters(digits, tmp_path):
    X, y = digits
    clf = PretrainedImageClassifier(image_size=32, freeze_depth=-1, adapter="lora", max_epochs=1,
                                    random_state=0).fit(X[:30], y[:30] % 2)  # fmt: skip
    ref = sktransfer.save(clf, tmp_path / "ref.skt", store_backbone="reference")
    assert os.path.getsize(ref) < 1_000_000
    loaded = sktransfer.load(ref)
    np.testing.assert_array_equal(loaded.predict_proba(X[30:40]), clf.predict_proba(X[30:40]))


# --------------------------------------------------------------------------- contrastive
def test_contrastive_with_lora(tiny_bert_dir, texts, capture):
    X, y = texts
    clf = PretrainedTextClassifier(
        tiny_bert_dir, objective="contrastive", num_iterations=2, freeze_depth=-1,
        adapter="lora", lora_rank=2, max_epochs=1, random_state=0,
    ).fit(X[:24], y[:24])  # fmt: skip
    assert len(capture) == 1  # one merge, as every fit path merges, before the exact head
    b = [t for k, t in clf.lora_adapters_["tensors"].items() if "lora_B" in k]
    assert b and all(bool(t.abs().sum() > 0) for t in b)
    head = sum(p.numel() for p in clf.module_.head.parameters())
    assert clf.n_trainable_params_ == head + sum(
        t.numel() for t in clf.lora_adapters_["tensors"].values()
    )
    assert clf.predict(X[24:30]).shape == (6,)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "params, match",
    [
        ({"adapter": "lora"}, "freeze_depth='all'"),
        ({"adapter": "qlora", "freeze_depth": 0}, "adapter"),
        ({"adapter": "lora", "freeze_depth": 0, "lora_rank": 0}, "lora_rank"),
        ({"adapter": "lora", "freeze_depth": 0, "lora_alpha": 0}, "lora_alpha"),
        ({"adapter": "lora", "freeze_depth": 0, "lora_dropout": 1.0}, "lora_dropout"),
    ],
)
def test_clear_errors(cnn, digits_small, params, match):
    X, y = digits_small
    with pytest.raises(ValueError, match=match):
        PretrainedImageClassifier(cnn, image_size=16, **params).fit(X[:20], y[:20] % 2)


def test_no_adaptable_layer_and_no_peft(digits_small, monkeypatch):
    X, y = digits_small
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    with pytest.raises(ValueError, match="no layer it can adapt.*'1'"):
        PretrainedImageClassifier(net, image_size=8, freeze_depth=-1, adapter="lora").fit(
            X[:20], y[:20] % 2
        )
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "peft" else real(n))
    with pytest.raises(ImportError, match=r"sktransfer\[peft\]"):
        PretrainedImageClassifier(net, image_size=8, freeze_depth=0, adapter="lora").fit(
            X[:20], y[:20] % 2
        )


def test_a_file_cannot_make_load_allocate_a_larger_adapter():
    """The manifest's rank must be the saved tensors' (load allocates the adapters first)."""
    from sktransfer.io import adapters

    tensors = {"lora/blocks.1.q.lora_A.weight": torch.zeros(2, 8),
               "lora/blocks.1.q.lora_B.weight": torch.zeros(8, 2)}  # fmt: skip
    entry = {"r": 2, "lora_alpha": 16.0, "lora_dropout": 0.0, "target_modules": ["blocks.1.q"]}
    lora, rest = adapters.from_file({"lora_adapters": entry}, {**tensors, "head.weight": 1})
    assert lora["r"] == 2 and set(rest) == {"head.weight"}
    two = ["blocks.1.q", "blocks.2.k"]
    for bad in ({"r": 10**9}, {"target_modules": two}, {"lora_dropout": 1}):
        with pytest.raises(ValueError, match="malformed lora_adapters"):
            adapters.from_file({"lora_adapters": {**entry, **bad}}, tensors)
    with pytest.raises(ValueError, match="no lora_adapters entry"):
        adapters.from_file({}, tensors)
