"""DeBERTa-v2, MPNet and ModernBERT text encoders split into blocks (issue 14, item 3).

Tiny random 3-layer models built from configs in code, saved with a word-level
WordPiece tokenizer to temporary directories: the chained blocks reproduce the
model's own ``forward``, ``freeze_depth`` reaches inside, the shared position
pieces belong to the ``embeddings`` block, and the safe format round-trips.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import FILL, NEG, POS, make_texts
from torch import nn

import sktransfer
from sktransfer import PretrainedTextClassifier
from sktransfer.backbones.base import Backbone, TextState, warn_if_unsplit
from sktransfer.backbones.compat import ensure_transformers_importable
from sktransfer.backbones.huggingface import backbone_from_hf_model, load_huggingface
from sktransfer.backbones.registry import list_sources, resolve_backbone

ensure_transformers_importable()
import transformers  # noqa: E402

WORDS = sorted(set(POS + NEG + FILL))
N_LAYERS = 3
BLOCKS = ["embeddings"] + [f"layer.{i}" for i in range(N_LAYERS)]
TEXTS = [
    "good film",
    "the movie was really quite boring and the plot was dull and the acting weak",
    "a lovely story",
]
# MPNet's embeddings treat id 1 as padding (hard-coded): its vocabulary puts [PAD] there
SPECIALS = {
    "mpnet": ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"],
    None: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}
# where each family's shared position pieces live (all in block 0, "embeddings")
SHARED_KEYS = {
    "deberta-v2": ["shared.rel_embeddings.weight", "shared.LayerNorm.weight"],
    "mpnet": ["shared.relative_attention_bias.weight"],
    "modernbert": [],  # the rotary embedding: buffers only
}


def _config(family, tok):
    common = dict(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
    )
    if family == "deberta-v2":  # v3-like: relative attention, buckets, no absolute positions
        return transformers.DebertaV2Config(
            **common,
            intermediate_size=37,
            relative_attention=True,
            position_buckets=8,
            max_relative_positions=16,
            norm_rel_ebd="layer_norm",
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            conv_kernel_size=3,  # v2's convolution after layer 0
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if family == "mpnet":
        return transformers.MPNetConfig(
            **common,
            intermediate_size=37,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    return transformers.ModernBertConfig(  # layers: global, sliding (window 4), global
        **common,
        intermediate_size=48,
        local_attention=4,
        global_attn_every_n_layers=2,
        bos_token_id=tok.cls_token_id,
        cls_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        sep_token_id=tok.sep_token_id,
    )


FAMILIES = ["deberta-v2", "mpnet", "modernbert"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """``{family: directory}``: tokenizer + random 3-layer model, as ``save_pretrained`` writes."""
    out = {}
    for i, family in enumerate(FAMILIES):
        path = tmp_path_factory.mktemp(family)
        vocab = SPECIALS.get(family, SPECIALS[None]) + WORDS
        (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tok = transformers.BertTokenizerFast.from_pretrained(str(path))
        tok.save_pretrained(str(path))
        torch.manual_seed(i)
        model = transformers.AutoModel.from_config(_config(family, tok))
        assert model.config.model_type == family
        model.save_pretrained(str(path))
        out[family] = str(path)
    return out


@pytest.fixture(scope="module")
def minus_two(dirs):
    """``{family: PretrainedTextClassifier(freeze_depth=-2)}`` fitted on 24 texts."""
    X, y = make_texts(24)
    return {
        family: PretrainedTextClassifier(
            backbone=path,
            freeze_depth=-2,
            lr=1e-2,
            max_epochs=1,
            batch_size=8,
            early_stopping=False,
            random_state=0,
        ).fit(X, y)  # fmt: skip
        for family, path in dirs.items()
    }


def _encode(backbone, texts):
    pre = backbone.preprocessing
    return pre.tokenizer(
        texts, padding=True, truncation=True, max_length=pre.max_length, return_tensors="pt"
    )


def _chain(backbone, batch):
    with torch.no_grad():
        state = dict(batch)
        for _, block in backbone.blocks:
            state = block.eval()(state)
            assert isinstance(state, TextState)
        return state


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_chain_equals_model_forward(dirs, family):
    backbone = load_huggingface(dirs[family])
    assert [n for n, _ in backbone.blocks] == BLOCKS and backbone.n_blocks == N_LAYERS + 1
    assert backbone.split and backbone.unsplit_reason is None
    enc = _encode(backbone, TEXTS)
    assert enc["attention_mask"].min() == 0  # the batch is padded
    assert (enc["input_ids"] == backbone.preprocessing.tokenizer.unk_token_id).sum() == 0
    impls = ["eager", "sdpa"] if family == "modernbert" else ["eager"]
    for attn in impls:
        backbone.blocks[1][1].config._attn_implementation = attn  # the shared config
        model = transformers.AutoModel.from_pretrained(dirs[family], attn_implementation=attn)
        with torch.no_grad():
            kwargs = {k: enc[k] for k in ("input_ids", "attention_mask")}
            hidden = model.eval()(**kwargs).last_hidden_state
        state = _chain(backbone, enc)
        assert (state.hidden - hidden).abs().max().item() <= 1e-5
        m = enc["attention_mask"].unsqueeze(-1).float()
        mean = (hidden * m).sum(1) / m.sum(1)
        assert (backbone.pool(state) - mean).abs().max().item() <= 1e-5


VARIANTS = {  # other configurations of the same families, split from model objects
    "deberta-v1": lambda v: transformers.DebertaConfig(
        vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, relative_attention=True, pos_att_type=["c2p", "p2c"],
        max_relative_positions=8,
    ),
    "deberta-v2-absolute": lambda v: transformers.DebertaV2Config(
        vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, type_vocab_size=2,
    ),
    "modernbert-global": lambda v: transformers.ModernBertConfig(
        vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, global_attn_every_n_layers=1, pad_token_id=0,
        bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
    ),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_other_configurations_split_exactly(dirs, variant):
    tok = transformers.AutoTokenizer.from_pretrained(dirs["deberta-v2"])
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(VARIANTS[variant](len(tok))).eval()
    backbone = backbone_from_hf_model(model, tok, variant)
    assert [n for n, _ in backbone.blocks] == ["embeddings", "layer.0", "layer.1"]
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    enc["token_type_ids"][1, 3:] = 1  # used by the absolute DeBERTa-v2 (type_vocab_size=2)
    with torch.no_grad():
        accepted = set(inspect.signature(model.forward).parameters)
        hidden = model(**{k: v for k, v in enc.items() if k in accepted}).last_hidden_state
    assert (_chain(backbone, enc).hidden - hidden).abs().max().item() <= 1e-5


def test_modernbert_last_block_runs_final_norm_and_sliding_mask(dirs):
    backbone = load_huggingface(dirs["modernbert"])
    layers = [block for _, block in backbone.blocks[1:]]
    assert [b.final_norm is not None for b in layers] == [False, False, True]
    assert [b.layer.attention_type for b in layers][:2] == ["full_attention", "sliding_attention"]
    enc = _encode(backbone, TEXTS)
    full = _chain(backbone, enc).hidden
    layers[1].layer.attention_type = "full_attention"  # the window matters for this batch
    assert (_chain(backbone, enc).hidden - full).abs().max().item() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_pieces_owned_by_embeddings_block(dirs, family):
    backbone = resolve_backbone(dirs[family], "text")  # a deep copy of the cached template
    first = backbone.blocks[0][1]
    keys = set(first.state_dict())
    assert set(SHARED_KEYS[family]) <= keys
    owned = {id(p) for p in first.parameters()}
    for _, block in backbone.blocks[1:]:
        assert block.shared is first.shared  # one object, not a copy per block
        assert not owned & {id(p) for p in block.parameters()}  # registered only in block 0
        assert not any(k.startswith("shared.") for k in block.state_dict())
    net = nn.ModuleList(m for _, m in backbone.blocks)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert all(block.shared is clone[0].shared for block in clone[1:])


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_depth_minus_two_trains_only_top_layers(dirs, minus_two, family):
    clf = minus_two[family]
    assert clf.n_blocks_ == 4 and clf.n_frozen_blocks_ == 2 and clf.block_names_ == BLOCKS
    loaded = load_huggingface(dirs[family])
    for i, block in enumerate(clf.module_.blocks):
        trainable = i >= 2
        assert all(p.requires_grad == trainable for p in block.parameters())
        assert _changed(_state(loaded.blocks[i][1]), block) == trainable, BLOCKS[i]
    assert all(block.shared is clf.module_.blocks[0].shared for block in clf.module_.blocks[1:])


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_depth_all_and_zero(dirs, family):
    X, y = make_texts(24)
    loaded = load_huggingface(dirs[family])
    first = _state(loaded.blocks[0][1])
    for depth, n_frozen in (("all", 4), (0, 0)):
        clf = PretrainedTextClassifier(
            backbone=dirs[family], freeze_depth=depth, lr=1e-2, max_epochs=1, batch_size=8,
            early_stopping=False, random_state=0,
        ).fit(X, y)  # fmt: skip
        assert clf.n_frozen_blocks_ == n_frozen
        changed = [
            _changed(_state(b), clf.module_.blocks[i]) for i, (_, b) in enumerate(loaded.blocks)
        ]
        assert changed == [n_frozen == 0] * 4
        block0 = clf.module_.blocks[0].state_dict()
        for key in SHARED_KEYS[family]:  # the shared pieces train with the embeddings block
            assert torch.equal(first[key], block0[key]) == (n_frozen > 0), key


def test_grid_search_over_freeze_depth(dirs):
    from sklearn.model_selection import GridSearchCV

    X, y = make_texts(16)
    for family in FAMILIES:
        est = PretrainedTextClassifier(
            backbone=dirs[family], max_epochs=1, batch_size=8, early_stopping=False, random_state=0
        )
        grid = {"freeze_depth": ["all", -2, 0]}
        search = GridSearchCV(est, grid, cv=2, refit=False, error_score="raise").fit(X, y)
        assert np.isfinite(search.cv_results_["mean_test_score"]).all()
        assert [p["freeze_depth"] for p in search.cv_results_["params"]] == grid["freeze_depth"]


@pytest.mark.parametrize("family", FAMILIES)
def test_safe_save_load_round_trip(minus_two, family, tmp_path):
    X, _ = make_texts(24)
    clf = minus_two[family]
    path = tmp_path / f"{family}.skt"
    sktransfer.save(clf, path)
    back = sktransfer.load(path)
    assert back.block_names_ == BLOCKS
    assert all(b.shared is back.module_.blocks[0].shared for b in back.module_.blocks[1:])
    np.testing.assert_allclose(back.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    assert list(back.predict(X)) == list(clf.predict(X))


def _gpt2_backbone(dirs):
    tok = transformers.AutoTokenizer.from_pretrained(dirs["mpnet"])
    config = transformers.GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2)
    model = transformers.AutoModel.from_config(config).eval()
    return backbone_from_hf_model(model, tok, "tiny-gpt2")


def test_unsplit_backbone_warns_on_partial_freeze(dirs, tmp_path):
    whole = _gpt2_backbone(dirs)
    assert [n for n, _ in whole.blocks] == ["model"] and not whole.split
    assert "gpt2" in whole.unsplit_reason and "deberta-v2" in whole.unsplit_reason
    for depth in (-1, 1, -2, 2):
        with pytest.warns(UserWarning, match=r"'tiny-gpt2' is one block .*cannot reach inside"):
            assert warn_if_unsplit(whole, depth)
    split = load_huggingface(dirs["mpnet"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for depth in ("all", 0):
            assert not warn_if_unsplit(whole, depth)
        for depth in ("all", 0, -2, 1):
            assert not warn_if_unsplit(split, depth)
    whole.blocks[0][1].model.save_pretrained(str(tmp_path))  # via the template cache
    whole.preprocessing.tokenizer.save_pretrained(str(tmp_path))
    copied = resolve_backbone(str(tmp_path), "text")
    assert copied.unsplit_reason == whole.unsplit_reason and not copied.split
    one = Backbone("m", "image", [("module", nn.Linear(2, 2))], nn.Identity(), 2, None)
    assert not one.split  # one block, whatever the reason
    with pytest.warns(UserWarning, match="'m' is one block"):
        warn_if_unsplit(one, -1)


def test_custom_single_module_records_why_it_is_one_block():
    backbone = resolve_backbone(nn.Linear(4, 3), "vector")
    assert backbone.n_blocks == 1 and "nn.Sequential" in backbone.unsplit_reason


def test_cli_lists_sources(capsys):
    from sktransfer.cli import commands as cli

    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out
    sources = list_sources()
    assert {s.kind for s in sources} >= {"huggingface", "packaged", "torchvision"}
    assert "\nSources (" in out
    for source in sources:
        assert source.kind in out and source.install in out and source.weights in out
    assert cli.main(["backbones", "--modality", "text"]) == 0
    text_out = capsys.readouterr().out
    assert "huggingface" in text_out and "torchvision" not in text_out


def test_layer_mask_built_once_per_forward(dirs):
    from transformers.masking_utils import create_bidirectional_mask

    from sktransfer.backbones import hf_text_blocks

    calls = []

    def builder(**kwargs):
        calls.append(kwargs["attention_mask"])
        return create_bidirectional_mask(**kwargs)

    backbone = load_huggingface(dirs["mpnet"])
    config = backbone.blocks[1][1].config
    hidden = torch.zeros(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    first = hf_text_blocks.layer_mask(builder, config, hidden, mask)
    assert hf_text_blocks.layer_mask(builder, config, hidden, mask) is first and len(calls) == 1
    other = mask.clone()  # equal values, another batch: built again
    hf_text_blocks.layer_mask(builder, config, hidden, other)
    with torch.no_grad():  # another grad mode: built again
        hf_text_blocks.layer_mask(builder, config, hidden, other)
    assert len(calls) == 3
    del other, calls[:]
    from sktransfer.backbones import _forward_memo

    assert not [s for s in _forward_memo._MEMO if s[0] == ("attention mask", builder)]
    # forgotten with its mask tensor (the last one built, for ``other``)


SHARED_COMPUTE = {  # what each family computes once per forward from its shared pieces
    "deberta-v2": "rel_embedding",
    "mpnet": "position_bias",
}


def _count_calls(monkeypatch, obj, name):
    calls = []
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, counted)
    return calls


@pytest.mark.parametrize("family", sorted(SHARED_COMPUTE))
def test_shared_weights_memo_only_without_grad(dirs, family, monkeypatch):
    """Memoised per forward in inference; recomputed per layer, with gradients, in training."""
    model = transformers.AutoModel.from_pretrained(dirs[family]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(dirs[family])
    backbone = backbone_from_hf_model(model, tok, family)  # shares model's modules
    shared = backbone.blocks[0][1].shared
    calls = _count_calls(monkeypatch, shared, SHARED_COMPUTE[family])
    enc = _encode(backbone, TEXTS)
    _chain(backbone, enc)
    assert len(calls) == 1  # no grad: once for all the layers of the forward
    weight = next(iter(shared.parameters()))  # relative_attention_bias / rel_embeddings
    grads = []
    for run in ("split", "split", "own"):  # the same mask tensor each time
        model.zero_grad()
        if run == "own":
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
        else:
            state = dict(enc)
            for _, block in backbone.blocks:
                state = block(state)
            hidden = state.hidden
        (hidden**2).mean().backward()  # a freed graph reused would raise here
        grads.append(weight.grad.clone())
    assert len(calls) == 1 + 2 * N_LAYERS  # with grad: recomputed in every layer
    assert grads[0].abs().sum() > 0
    for grad in grads[1:]:
        torch.testing.assert_close(grad, grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("family", sorted(SHARED_COMPUTE))
def test_shared_weights_memo_invalidated_by_in_place_update(dirs, family):
    model = transformers.AutoModel.from_pretrained(dirs[family]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(dirs[family])
    backbone = backbone_from_hf_model(model, tok, family)
    enc = _encode(backbone, TEXTS)
    kwargs = {k: enc[k] for k in ("input_ids", "attention_mask")}
    before = _chain(backbone, enc).hidden
    with torch.no_grad():
        for p in backbone.blocks[0][1].shared.parameters():  # an optimizer step's kind of update
            p.mul_(1.5).add_(0.25)
        want = model(**kwargs).last_hidden_state
    after = _chain(backbone, enc).hidden  # the same mask tensor: the memo's key
    assert (before - want).abs().max().item() > 1e-4  # the old value would be stale
    assert (after - want).abs().max().item() <= 1e-6


def test_modernbert_rotary_once_per_layer_type(dirs, monkeypatch):
    backbone = load_huggingface(dirs["modernbert"])
    rotary = backbone.blocks[0][1].shared
    calls = []
    original = type(rotary).forward

    def counted(self, x, position_ids, layer_type):
        calls.append(layer_type)
        return original(self, x, position_ids, layer_type)

    monkeypatch.setattr(type(rotary), "forward", counted)
    enc = _encode(backbone, TEXTS)
    _chain(backbone, enc)
    assert sorted(calls) == ["full_attention", "sliding_attention"]  # 3 layers, 2 types
    calls.clear()
    for _, block in backbone.blocks:
        block.train()
    state = dict(enc)
    for _, block in backbone.blocks:  # grad enabled: buffers only, so still memoised
        state = block(state)
    state.hidden.sum().backward()
    assert sorted(calls) == ["full_attention", "sliding_attention"]
    assert backbone.blocks[1][1].layer.attn.Wqkv.weight.grad is not None
