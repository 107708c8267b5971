"""timm backbones: exact block splits, preprocessing, fitting at every depth, safe save/load."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("timm") is None:  # not importorskip: timm needs _compat first
    pytest.skip("timm is not installed", allow_module_level=True)

import sktransfer  # noqa: E402
from sktransfer import PretrainedImageClassifier  # noqa: E402
from sktransfer.backbones.registry import list_sources, rebuild_backbone  # noqa: E402
from sktransfer.backbones.timm import (  # noqa: E402
    backbone_from_timm_module,
    import_timm,
    load_timm,
)

timm = import_timm()

# timm's own tiny test architectures (random init: nothing is downloaded)
FAMILIES = {
    "test_resnet": ["stem", "layer1", "layer2", "layer3", "layer4"],
    "test_efficientnet": ["stem"] + [f"blocks.{i}" for i in range(5)] + ["head_conv"],
    "mobilenetv3_small_050": ["stem"] + [f"blocks.{i}" for i in range(6)],
    "test_vit": ["embed"] + [f"blocks.{i}" for i in range(6)],
    "test_convnext": ["stem"] + [f"stages.{i}" for i in range(4)],
    "test_maxvit": ["stem"] + [f"stages.{i}" for i in range(4)] + ["final"],
}


def _chain(backbone, x):
    for _, block in backbone.blocks:
        block.eval()
    backbone.pool.eval()
    with torch.no_grad():
        for _, block in backbone.blocks:
            x = block(x)
        return backbone.pool(x)


def _own_forward(model, x):
    model.eval()
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_block_split_equals_timm_forward(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    backbone = backbone_from_timm_module(copy.deepcopy(model))
    assert [n for n, _ in backbone.blocks] == FAMILIES[name]
    size = backbone.preprocessing.image_size
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    expected = _own_forward(model, x)
    got = _chain(backbone, x)
    assert got.shape == (3, backbone.feature_dim)
    assert (got - expected).abs().max().item() <= 1e-5
    assert expected.abs().max().item() > 1e-3  # not a comparison of zeros


def test_blocks_share_parameters_without_duplicates():
    backbone = load_timm("timm:test_vit", weights=None)
    modules = [m for _, m in backbone.blocks] + [backbone.pool]
    ids = [id(p) for m in modules for p in m.parameters()]
    assert len(ids) == len(set(ids))  # each parameter lives in exactly one block or the pool
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    assert len(ids) == len(list(model.parameters()))


def test_preprocessing_from_resolve_data_config():
    backbone = load_timm("timm:resnet10t", weights=None)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("resnet10t"))
    prep = backbone.preprocessing
    assert prep.image_size == cfg["input_size"][-1] == 176
    assert prep.resize_size == int(176 / cfg["crop_pct"])
    assert prep.mean == tuple(cfg["mean"]) and prep.std == tuple(cfg["std"])
    assert prep.interpolation == cfg["interpolation"] == "bicubic"


def test_weights_from_local_file_and_errors(tmp_path):
    torch.manual_seed(3)
    trained = timm.create_model("test_resnet", pretrained=False)  # with its classifier
    path = tmp_path / "w.pth"
    torch.save(trained.state_dict(), path)
    backbone = load_timm("timm:test_resnet", weights=str(path))
    assert backbone.source == {
        "kind": "timm",
        "name": "test_resnet",
        "weights": str(path),
        "kwargs": {},
    }
    x = torch.randn(2, 3, 32, 32)
    trained.reset_classifier(0)
    torch.testing.assert_close(_chain(backbone, x), _own_forward(trained, x), atol=1e-5, rtol=0)
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    with pytest.raises(ValueError, match="do not"):
        load_timm("timm:test_resnet", weights=str(other))
    with pytest.raises(ValueError, match="unknown timm model 'test_resnett'.*timm:test_resnet"):
        load_timm("timm:test_resnett", weights=None)
    tagged = load_timm("timm:vit_tiny_patch16_224.augreg_in21k", weights=None)  # tag: no fetch
    assert tagged.source["name"] == "vit_tiny_patch16_224.augreg_in21k"
    assert tagged.n_blocks == 13


def test_pretrained_weights_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="HF_HOME") as err:
        load_timm("timm:resnet10t", weights="default")
    assert "weights=None" in str(err.value)


def test_source_listed():
    timm_source = {s.kind: s for s in list_sources()}["timm"]
    assert "sktransfer[timm]" in timm_source.install and timm_source.modality == "image"


@pytest.fixture(scope="module")
def small_digits(digits_small):
    X, y = digits_small
    keep = np.isin(y, [0, 1, 2])
    return X[keep][:60], y[keep][:60]


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("timm") / "test_resnet.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(path))
    return str(path)


@pytest.mark.parametrize("freeze_depth", ["all", -2, 0])
def test_fit_at_each_depth(small_digits, resnet_file, freeze_depth):
    X, y = small_digits
    clf = PretrainedImageClassifier(
        backbone="timm:test_resnet",
        weights=resnet_file,
        image_size=32,
        freeze_depth=freeze_depth,
        max_epochs=1,
        batch_size=16,
        lr=1e-2,
        random_state=0,
    ).fit(X, y)
    assert clf.n_blocks_ == 5 and clf.block_names_[0] == "stem"
    assert clf.n_frozen_blocks_ == {"all": 5, -2: 3, 0: 0}[freeze_depth]
    assert clf.backbone_source_["kind"] == "timm"
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(1), 1)
    ref = dict(load_timm("timm:test_resnet", weights=resnet_file).blocks)
    for i, (name, block) in enumerate(zip(clf.block_names_, clf.module_.blocks)):
        mine, theirs = block.state_dict(), ref[name].state_dict()
        same = all(torch.equal(mine[k].cpu(), theirs[k]) for k in theirs)
        assert same == (i < clf.n_frozen_blocks_), name  # frozen: untouched; others trained


def test_grid_search_over_freeze_depth(small_digits):
    from sklearn.model_selection import GridSearchCV

    X, y = small_digits
    est = PretrainedImageClassifier(
        backbone="timm:test_resnet", weights=None, image_size=32, max_epochs=1, random_state=0
    )
    search = GridSearchCV(est, {"freeze_depth": ["all", -2, 0]}, cv=2, error_score="raise")
    search.fit(X, y)
    assert len(search.cv_results_["mean_test_score"]) == 3
    assert search.best_estimator_.backbone == "timm:test_resnet"


@pytest.mark.parametrize(
    ("name", "freeze_depth", "image_size"),
    [("test_resnet", -2, 32), ("test_efficientnet", "all", 32), ("test_vit", -2, None)],
)
def test_safe_save_load_round_trip(small_digits, tmp_path, name, freeze_depth, image_size):
    X, y = small_digits
    X, y = X[:30], y[:30]
    clf = PretrainedImageClassifier(
        backbone=f"timm:{name}",
        weights=None,
        image_size=image_size,
        freeze_depth=freeze_depth,
        max_epochs=1,
        random_state=0,
    ).fit(X, y)
    path = sktransfer.save(clf, tmp_path / "m.skt")
    loaded = sktransfer.load(path)
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)
    assert loaded.block_names_ == clf.block_names_


def test_timm_model_object_backbone(small_digits):
    X, y = small_digits
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clf = PretrainedImageClassifier(
        backbone=model, image_size=32, freeze_depth=-1, max_epochs=1, random_state=0
    ).fit(X, y)
    assert clf.n_blocks_ == 5  # timm's stages, not one opaque block
    assert model.num_classes == 7  # the user's model is not modified
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert clf.backbone_source_ == {
        "kind": "timm",
        "name": "test_resnet",
        "weights": None,
        "kwargs": {},
    }
    rebuilt = rebuild_backbone(clf.backbone_source_, {})
    assert [n for n, _ in rebuilt.blocks] == clf.block_names_


def test_vit_object_with_other_image_size_records_it():
    model = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=64)
    backbone = backbone_from_timm_module(copy.deepcopy(model))
    assert backbone.source["kwargs"] == {"img_size": 64}
    rebuilt = rebuild_backbone(backbone.source, {})
    assert [n for n, _ in rebuilt.blocks] == [n for n, _ in backbone.blocks]
    assert [p.shape for _, b in rebuilt.blocks for p in b.parameters()] == [
        p.shape for _, b in backbone.blocks for p in b.parameters()
    ]
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(_chain(backbone, x), _own_forward(model, x), atol=1e-5, rtol=0)


def test_fixed_size_vit_preprocessing_and_size_error():
    model = timm.create_model(
        "test_vit", pretrained=False, num_classes=0, img_size=64, dynamic_img_size=False
    )
    backbone = backbone_from_timm_module(model)
    assert backbone.preprocessing.image_size == 64  # the model's size, not the config's 160
    assert _chain(backbone, torch.randn(1, 3, 64, 64)).shape == (1, 64)
    with pytest.raises(ValueError, match="takes 64x64 images.*image_size=64"):
        _chain(backbone, torch.randn(1, 3, 160, 160))


def test_changed_architecture_is_not_claimed_as_rebuildable():
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    model.layer4 = torch.nn.Identity()
    backbone = backbone_from_timm_module(model)
    assert backbone.source["kind"] == "module"


@pytest.mark.parametrize(
    "source",
    [
        {"kind": "timm", "name": "hf-hub:someone/model"},
        {"kind": "timm", "name": "test_resnet", "kwargs": {"pretrained_cfg_overlay": {}}},
        {"kind": "timm", "name": "test_vit", "kwargs": {"img_size": 10**6}},
    ],
)
def test_rebuild_refuses_what_a_file_could_abuse(source):
    with pytest.raises(ValueError):
        rebuild_backbone(source, {})


def test_rebuild_refuses_oversized_architecture():
    with pytest.raises(ValueError, match="refusing"):
        rebuild_backbone({"kind": "timm", "name": "vit_large_patch16_224"}, {"weight_bytes": 10})
