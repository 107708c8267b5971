"""Hugging Face vision encoders (ViT, DINOv2, CLIP, SigLIP, ConvNeXt, Swin): exact split, fit,
safe save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sktransfer
from sktransfer import ImageEmbedder, PretrainedImageClassifier
from sktransfer.backbones.compat import ensure_transformers_importable
from sktransfer.backbones.hf_vision import (
    load_hf_vision,
    preprocessing_from_config,
    rebuild_hf_vision,
)
from sktransfer.backbones.registry import list_sources, resolve_backbone

ensure_transformers_importable()
import transformers  # noqa: E402

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    image_size=32,
    patch_size=8,
)
FAMILIES = {
    "vit": (transformers.ViTConfig, transformers.ViTModel),
    "dinov2": (transformers.Dinov2Config, transformers.Dinov2Model),
    "clip": (transformers.CLIPVisionConfig, transformers.CLIPVisionModel),
}


def _model(family, seed=0):
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(seed)
    return model_cls(config_cls(**TINY)).eval()


@pytest.fixture(scope="module")
def vision_dirs(tmp_path_factory):
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(f"tiny_{family}")
        _model(family).save_pretrained(str(path))
        out[family] = str(path)
    return out


@pytest.fixture(scope="module")
def small_digits(digits_small):
    X, y = digits_small
    keep = np.isin(y, [0, 1, 2])
    return X[keep][:45], y[keep][:45]


def _chain(backbone, x):
    with torch.no_grad():
        for _, block in backbone.blocks:
            x = block.eval()(x)
        return backbone.pool.eval()(x)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_chained_blocks_equal_model_forward(vision_dirs, family):
    backbone = load_hf_vision(vision_dirs[family])
    model = FAMILIES[family][1].from_pretrained(vision_dirs[family]).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pixel_values=x)
    expected = out.pooler_output if family == "clip" else out.last_hidden_state[:, 0]
    got = _chain(backbone, x)
    assert [n for n, _ in backbone.blocks] == ["embeddings", "layer.0", "layer.1"]
    assert got.shape == (3, 32) and backbone.feature_dim == 32
    assert (got - expected).abs().max().item() <= 1e-5
    got_cl = _chain(backbone, x.contiguous(memory_format=torch.channels_last))  # as fitted
    assert (got_cl - expected).abs().max().item() <= 1e-5
    if family == "dinov2":  # DINOv2's own pooler output is the normed CLS token
        assert (got - out.pooler_output).abs().max().item() <= 1e-5
    mean = load_hf_vision(vision_dirs[family], pooling="mean")
    got_mean = _chain(mean, x)
    if family == "clip":
        ref = model.post_layernorm(out.last_hidden_state[:, 1:].mean(1))
    else:
        ref = out.last_hidden_state[:, 1:].mean(1)
    assert (got_mean - ref.detach()).abs().max().item() <= 1e-5
    assert (got_mean - got).abs().max().item() > 1e-3  # really a different pooling


def test_whole_clip_directory_uses_its_vision_tower(tmp_path):
    config = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
        ),
        vision_config=TINY,
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(str(tmp_path))
    backbone = load_hf_vision(str(tmp_path))
    tower = transformers.CLIPVisionModel.from_pretrained(str(tmp_path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tower(pixel_values=x).pooler_output
    assert backbone.source["model_type"] == "clip_vision_model"
    assert (_chain(backbone, x) - expected).abs().max().item() <= 1e-5


def test_preprocessing_from_image_processor_config(vision_dirs, tmp_path):
    config = FAMILIES["dinov2"][0](**TINY)
    prep = preprocessing_from_config(None, config)
    assert prep.image_size == 32 and prep.mean == (0.485, 0.456, 0.406)
    processor = {
        "size": {"shortest_edge": 40},
        "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True,
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.25, 0.3],
        "resample": 3,
    }
    prep = preprocessing_from_config(processor, config)
    assert (prep.image_size, prep.resize_size, prep.interpolation) == (32, 40, "bicubic")
    assert prep.mean == (0.5, 0.4, 0.3) and prep.std == (0.2, 0.25, 0.3)
    vit = dict(size={"height": 32, "width": 32}, resample=2, image_mean=0.5, image_std=0.5)
    prep = preprocessing_from_config(vit, config)
    assert (prep.image_size, prep.resize_size, prep.interpolation) == (32, None, "bilinear")
    assert prep.mean == (0.5, 0.5, 0.5)
    # read from the directory itself
    import shutil

    path = tmp_path / "with_processor"
    shutil.copytree(vision_dirs["dinov2"], path)
    (path / "preprocessor_config.json").write_text(json.dumps(processor))
    assert load_hf_vision(str(path)).preprocessing.resize_size == 40


def test_text_and_unsupported_directories(vision_dirs, tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="'bert' model"):
        resolve_backbone(tiny_bert_dir, "image")
    text = resolve_backbone(tiny_bert_dir, "text")  # text directories keep working
    assert text.modality == "text" and text.source["kind"] == "huggingface"
    with pytest.raises(ValueError, match="pooling"):
        load_hf_vision(vision_dirs["vit"], pooling="max")
    assert any(s.kind == "hf_vision" and s.rebuild for s in list_sources())


@pytest.mark.parametrize("freeze_depth", ["all", -2, -1, 0])
def test_fit_at_each_depth(small_digits, vision_dirs, freeze_depth):
    X, y = small_digits
    clf = PretrainedImageClassifier(
        backbone=vision_dirs["vit"],
        freeze_depth=freeze_depth,
        max_epochs=1,
        batch_size=16,
        lr=1e-2,
        random_state=0,
    ).fit(X, y)
    assert clf.n_blocks_ == 3 and clf.block_names_[0] == "embeddings"
    assert clf.n_frozen_blocks_ == {"all": 3, -2: 1, -1: 2, 0: 0}[freeze_depth]
    assert clf.backbone_source_["kind"] == "hf_vision"
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(1), 1)
    ref = dict(load_hf_vision(vision_dirs["vit"]).blocks)
    for i, (name, block) in enumerate(zip(clf.block_names_, clf.module_.blocks)):
        mine, theirs = block.state_dict(), ref[name].state_dict()
        same = all(torch.equal(mine[k].cpu(), theirs[k]) for k in theirs)
        assert same == (i < clf.n_frozen_blocks_), name  # frozen: untouched; others trained


def test_embedder_and_model_object(small_digits, vision_dirs):
    X, _ = small_digits
    feats = ImageEmbedder(backbone=vision_dirs["dinov2"]).fit(X[:8]).transform(X[:8])
    assert feats.shape == (8, 32) and np.isfinite(feats).all()
    model = _model("clip")
    backbone = resolve_backbone(model, "image")
    assert backbone.source["kind"] == "hf_vision" and backbone.n_blocks == 3
    assert backbone.blocks[1][1].layer is not model.encoder.layers[0]  # deep-copied


@pytest.mark.parametrize(("family", "freeze_depth"), [("vit", -1), ("dinov2", "all"), ("clip", 0)])
def test_safe_save_load_round_trip(small_digits, vision_dirs, tmp_path, family, freeze_depth):
    X, y = small_digits
    X, y = X[:30], y[:30]
    clf = PretrainedImageClassifier(
        backbone=vision_dirs[family], freeze_depth=freeze_depth, max_epochs=1, random_state=0
    ).fit(X, y)
    path = sktransfer.save(clf, tmp_path / "m.skt")
    loaded = sktransfer.load(path)
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    assert loaded.block_names_ == clf.block_names_


def test_rebuild_refuses_bad_sources():
    with pytest.raises(ValueError, match="no supported vision encoder"):
        rebuild_hf_vision({"kind": "hf_vision", "model_type": "bert", "config": {}}, {})
    big = dict(TINY, hidden_size=512, intermediate_size=4096, num_hidden_layers=24)
    source = {"kind": "hf_vision", "model_type": "vit", "config": big}
    with pytest.raises(ValueError, match="refusing"):
        rebuild_hf_vision(source, {"weight_bytes": 1000})
    small = rebuild_hf_vision({"kind": "hf_vision", "model_type": "vit", "config": TINY}, {})
    assert small.n_blocks == 3


def test_grid_search_over_freeze_depth(small_digits, vision_dirs):
    from sklearn.model_selection import GridSearchCV

    X, y = small_digits
    est = PretrainedImageClassifier(backbone=vision_dirs["dinov2"], max_epochs=1, random_state=0)
    search = GridSearchCV(est, {"freeze_depth": ["all", -2, 0]}, cv=2, error_score="raise")
    search.fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.backbone == vision_dirs["dinov2"]


@pytest.mark.parametrize("family", ["vit", "clip"])
def test_other_image_size_interpolates_position_embeddings(small_digits, vision_dirs, family):
    X, _ = small_digits
    emb = ImageEmbedder(backbone=vision_dirs[family], image_size=48).fit(X[:4])
    feats = emb.transform(X[:4])
    native = ImageEmbedder(backbone=vision_dirs[family]).fit(X[:4]).transform(X[:4])
    assert feats.shape == native.shape == (4, 32) and np.isfinite(feats).all()
    assert not np.allclose(feats, native)  # 36 patches, not 16


def test_unsupported_vision_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "swinv2"}))
    with pytest.raises(ValueError, match="'swinv2' model"):
        resolve_backbone(str(tmp_path), "image")


# ---------------------------------------------------------------- SigLIP, ConvNeXt, Swin
CONV = dict(hidden_sizes=[8, 16, 24], depths=[1, 1, 1], num_stages=3, image_size=32, patch_size=4)
SWIN = dict(image_size=32, patch_size=4, embed_dim=8, depths=[2, 1], num_heads=[2, 2])
NEW = {  # family -> (config, model class, preprocessor_config.json, block names)
    "siglip": (
        transformers.SiglipVisionConfig(**TINY),
        transformers.SiglipVisionModel,
        dict(
            size={"height": 32, "width": 32}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),  # fmt: skip
        ["embeddings", "layer.0", "layer.1"],
    ),
    "convnext": (
        transformers.ConvNextConfig(**CONV),
        transformers.ConvNextModel,
        dict(size={"shortest_edge": 32}, crop_pct=0.875, resample=3),
        ["embeddings", "stages.0", "stages.1", "stages.2"],
    ),
    "swin": (
        transformers.SwinConfig(**SWIN, window_size=4, use_absolute_embeddings=True),
        transformers.SwinModel,
        dict(size={"height": 32, "width": 32}, resample=3, image_mean=[0.4] * 3),
        ["embeddings", "stages.0", "stages.1"],
    ),
}


@pytest.fixture(scope="module")
def new_dirs(tmp_path_factory):
    out = {}
    for family, (config, model_cls, processor, _) in NEW.items():
        path = tmp_path_factory.mktemp(f"tiny_{family}")
        torch.manual_seed(0)
        model = model_cls(config).eval()
        if family == "swin":  # zero-initialised: make the position embedding matter
            torch.nn.init.normal_(model.embeddings.position_embeddings, std=0.5)
        model.save_pretrained(str(path))
        (path / "preprocessor_config.json").write_text(json.dumps(processor))
        out[family] = str(path)
    return out


@pytest.mark.parametrize("family", sorted(NEW))
@pytest.mark.parametrize("size", [32, 40])
def test_new_families_split_exactly(new_dirs, family, size):
    backbone = load_hf_vision(new_dirs[family])
    model = NEW[family][1].from_pretrained(new_dirs[family]).eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    kwargs = {"interpolate_pos_encoding": True} if size != 32 and family != "convnext" else {}
    with torch.no_grad():
        expected = model(pixel_values=x, **kwargs).pooler_output
    assert [n for n, _ in backbone.blocks] == NEW[family][3]
    assert backbone.source["kind"] == "hf_vision" and expected.shape[1] == backbone.feature_dim
    for layout in (torch.contiguous_format, torch.channels_last):  # as the estimators run
        got = _chain(backbone, x.contiguous(memory_format=layout))
        assert (got - expected).abs().max().item() <= 1e-5, layout


def test_new_families_poolings_and_preprocessing(new_dirs, tmp_path):
    assert load_hf_vision(new_dirs["siglip"]).source["pooling"] == "head"
    x = torch.randn(2, 3, 32, 32)
    head = _chain(load_hf_vision(new_dirs["siglip"]), x)
    mean = _chain(load_hf_vision(new_dirs["siglip"], pooling="mean"), x)
    model = transformers.SiglipVisionModel.from_pretrained(new_dirs["siglip"]).eval()
    with torch.no_grad():
        tokens = model(pixel_values=x).last_hidden_state
    assert (mean - tokens.mean(1)).abs().max().item() <= 1e-5
    assert (mean - head).abs().max().item() > 1e-3
    for family, bad in [("siglip", "cls"), ("convnext", "cls"), ("swin", "head")]:
        with pytest.raises(ValueError, match="no class token"):
            load_hf_vision(new_dirs[family], pooling=bad)
    headless = transformers.SiglipVisionConfig(**TINY, vision_use_head=False)
    transformers.SiglipVisionModel(headless).save_pretrained(str(tmp_path))
    assert load_hf_vision(str(tmp_path)).source["pooling"] == "mean"
    with pytest.raises(ValueError, match="no class token"):
        load_hf_vision(str(tmp_path), pooling="head")
    prep = load_hf_vision(new_dirs["convnext"]).preprocessing  # crop_pct: 32 / 0.875
    assert (prep.image_size, prep.resize_size, prep.interpolation) == (32, 36, "bicubic")
    prep = load_hf_vision(new_dirs["siglip"]).preprocessing
    assert (prep.image_size, prep.resize_size, prep.mean) == (32, None, (0.5, 0.5, 0.5))
    big = dict(size={"shortest_edge": 384}, crop_pct=0.875)  # ConvNeXt: no crop from 384 on
    prep = preprocessing_from_config(big, NEW["convnext"][0])
    assert (prep.image_size, prep.resize_size) == (384, None)


def test_whole_siglip_directory_uses_its_vision_tower(tmp_path):
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    config = transformers.SiglipConfig(text_config=text, vision_config=TINY)
    torch.manual_seed(0)
    model = transformers.SiglipModel(config).eval()
    model.save_pretrained(str(tmp_path))
    backbone = load_hf_vision(str(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=x).pooler_output
    assert backbone.source["model_type"] == "siglip_vision_model"
    assert (_chain(backbone, x) - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", sorted(NEW))
def test_new_families_fit_save_load(small_digits, new_dirs, tmp_path, family):
    X, y = small_digits
    X, y = X[:30], y[:30]
    n = len(NEW[family][3])
    clf = PretrainedImageClassifier(
        backbone=new_dirs[family], freeze_depth=-2, max_epochs=1, batch_size=16, lr=1e-2,
        random_state=0,
    ).fit(X, y)  # fmt: skip
    assert clf.n_blocks_ == n and clf.n_frozen_blocks_ == n - 2
    ref = dict(load_hf_vision(new_dirs[family]).blocks)
    for i, (name, block) in enumerate(zip(clf.block_names_, clf.module_.blocks)):
        mine, theirs = block.state_dict(), ref[name].state_dict()
        same = all(torch.equal(mine[k].cpu(), theirs[k]) for k in theirs)
        assert same == (i < n - 2), name  # frozen: untouched; the top two trained
    loaded = sktransfer.load(sktransfer.save(clf, tmp_path / f"{family}.skt"))
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    assert loaded.backbone_source_["model_type"] == clf.backbone_source_["model_type"]


@pytest.mark.parametrize("family", sorted(NEW))
def test_new_families_grid_search(small_digits, new_dirs, family):
    """Fits at freeze_depth "all", -2 and 0 (each on both folds)."""
    from sklearn.model_selection import GridSearchCV

    X, y = small_digits
    est = PretrainedImageClassifier(
        backbone=new_dirs[family], max_epochs=1, batch_size=16, lr=1e-2, random_state=0
    )
    grid = {"freeze_depth": ["all", -2, 0]}
    search = GridSearchCV(est, grid, cv=2, error_score="raise", refit=False)
    search.fit(X[:24], y[:24])
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_new_families_model_objects_and_rebuild(new_dirs):
    for family, (config, model_cls, _, names) in NEW.items():
        model = model_cls(config).eval()
        backbone = resolve_backbone(model, "image")
        assert [n for n, _ in backbone.blocks] == names
        assert next(backbone.blocks[0][1].parameters()) is not next(model.parameters())
        rebuilt = rebuild_hf_vision(load_hf_vision(new_dirs[family]).source, {})
        assert [n for n, _ in rebuilt.blocks] == names
        x = torch.randn(1, 3, 32, 32)
        assert _chain(rebuilt, x).shape == (1, backbone.feature_dim)
