"""torchvision backbones: block splits reproduce the models, weight loading, errors."""

from __future__ import annotations

import sys
import urllib.error

import pytest
import torch

from sktransfer.backbones import compat as _compat
from sktransfer.backbones.torchvision import (
    TORCHVISION_MODELS,
    backbone_from_torchvision_module,
    load_torchvision,
)

tv = _compat.import_torchvision()

TESTED = [
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
]


def _head(model):
    """The final Linear whose input is the backbone's pooled feature."""
    if hasattr(model, "fc"):
        return model.fc
    if hasattr(model, "heads"):
        return model.heads.head
    if isinstance(model, tv.models.MobileNetV3):
        return model.classifier[0]
    return model.classifier[-1]


def _reference_features(model, x):
    seen = {}
    handle = _head(model).register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen["x"]


def _features(backbone, x):
    for _, block in backbone.blocks:
        block.eval()
    backbone.pool.eval()
    with torch.no_grad():
        for _, block in backbone.blocks:
            x = block(x)
        return backbone.pool(x)


def _input(name, seed=1):
    gen = torch.Generator().manual_seed(seed)
    if name.startswith("vit"):
        return torch.randn(1, 3, 224, 224, generator=gen)
    return torch.randn(2, 3, 64, 64, generator=gen)


@pytest.mark.parametrize("name", TESTED)
def test_blocks_then_pool_equal_model_features(name):
    assert name in TORCHVISION_MODELS
    torch.manual_seed(0)
    backbone = load_torchvision(name)
    torch.manual_seed(0)
    ref = tv.models.get_model(name).eval()
    x = _input(name)
    expected = _reference_features(ref, x)
    got = _features(backbone, x)
    assert got.shape == (x.shape[0], backbone.feature_dim)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert backbone.modality == "image"
    assert backbone.source == {"kind": "torchvision", "name": name, "weights": None}
    assert backbone.preprocessing.image_size == 224
    assert backbone.preprocessing.resize_size == 256

    # Every non-head parameter sits in exactly one block or the pool.
    wrapped = backbone_from_torchvision_module(ref, name)
    owners = [m for _, m in wrapped.blocks] + [wrapped.pool]
    ids = [id(p) for m in owners for p in m.parameters()]
    assert len(ids) == len(set(ids))
    head_ids = {id(p) for p in _head(ref).parameters()}
    if isinstance(ref, tv.models.MobileNetV3):
        head_ids = {id(p) for p in ref.classifier.parameters()}
    assert set(ids) == {id(p) for p in ref.parameters()} - head_ids


def test_block_names():
    names = [n for n, _ in load_torchvision("resnet18").blocks]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    names = [n for n, _ in load_torchvision("efficientnet_b0").blocks]
    assert names == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head_conv"]
    names = [n for n, _ in load_torchvision("convnext_tiny").blocks]
    assert names[:3] == ["stem", "stage1", "downsample1"] and names[-1] == "stage4"
    assert len(names) == 8


def test_vit_blocks_and_image_size_error():
    backbone = load_torchvision("vit_b_16")
    names = [n for n, _ in backbone.blocks]
    assert names[0] == "embed" and len(names) == 13
    with pytest.raises(ValueError, match="224x224"):
        backbone.blocks[0][1](torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_state_dict_path_loading(tmp_path, suffix):
    torch.manual_seed(3)
    ref = tv.models.resnet18(num_classes=10).eval()  # another head: ignored
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    else:
        torch.save(ref.state_dict(), path)
    torch.manual_seed(99)  # a different random init must be overwritten
    backbone = load_torchvision("resnet18", weights=path)
    x = _input("resnet18")
    torch.testing.assert_close(
        _features(backbone, x), _reference_features(ref, x), atol=1e-6, rtol=0
    )
    assert backbone.source["weights"] == str(path)


def test_state_dict_wrapped_and_prefixed(tmp_path):
    torch.manual_seed(4)
    ref = tv.models.mobilenet_v3_small().eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    backbone = load_torchvision("mobilenet_v3_small", weights=str(path))
    x = _input("mobilenet_v3_small")
    torch.testing.assert_close(
        _features(backbone, x), _reference_features(ref, x), atol=1e-6, rtol=0
    )


def test_state_dict_key_mismatch_names_keys(tmp_path):
    path = tmp_path / "r18.pt"
    state = tv.models.resnet18().state_dict()
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \[layer1\.2\."):
        load_torchvision("resnet34", weights=path)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"unexpected keys \[extra\.weight\]"):
        load_torchvision("resnet18", weights=path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tv.models.resnet18(), path)
    with pytest.raises(ValueError, match="state dict"):
        load_torchvision("resnet18", weights=path)


def test_missing_path_names_it(tmp_path):
    path = tmp_path / "nope" / "weights.pth"
    with pytest.raises(ValueError, match="not found") as err:
        load_torchvision("resnet18", weights=str(path))
    assert str(path) in str(err.value)


def test_bad_weights_name():
    with pytest.raises(ValueError, match="IMAGENET1K_V1") as err:
        load_torchvision("resnet18", weights="IMAGENET_V9")
    assert "DEFAULT" in str(err.value)


def test_named_weights_offline_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tv.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(RuntimeError, match="network access") as err:
        load_torchvision("resnet18", weights="DEFAULT")
    msg = str(err.value)
    assert str(tmp_path) in msg and "state-dict path" in msg


def test_named_weights_set_preprocessing(monkeypatch):
    torch.manual_seed(5)
    fake = tv.models.efficientnet_b0().state_dict()
    monkeypatch.setattr(tv.models._api, "load_state_dict_from_url", lambda *a, **k: fake)
    backbone = load_torchvision("efficientnet_b0", weights="DEFAULT")
    pre = backbone.preprocessing
    assert (pre.image_size, pre.resize_size, pre.interpolation) == (224, 256, "bicubic")
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406))
    assert backbone.source == {
        "kind": "torchvision",
        "name": "efficientnet_b0",
        "weights": "DEFAULT",
    }
    ref = tv.models.efficientnet_b0().eval()
    ref.load_state_dict(fake)
    x = _input("efficientnet_b0")
    torch.testing.assert_close(
        _features(backbone, x), _reference_features(ref, x), atol=1e-5, rtol=0
    )


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="resnet18") as err:
        load_torchvision("resnet19")
    assert "Did you mean" in str(err.value)


def test_unrecognised_module_returns_none():
    assert backbone_from_torchvision_module(torch.nn.Sequential(torch.nn.Linear(2, 2)), "x") is None
    assert backbone_from_torchvision_module(tv.models.squeezenet1_1(), "squeezenet1_1") is None


def test_import_torchvision_not_installed_message(monkeypatch):
    monkeypatch.delitem(sys.modules, "torchvision")
    monkeypatch.setattr(_compat, "torchvision_installed", lambda: False)
    with pytest.raises(ImportError, match=r"sktransfer\[torchvision\]"):
        _compat.import_torchvision()


def test_import_torchvision_is_idempotent():
    assert _compat.import_torchvision() is tv
    assert hasattr(torch.ops.torchvision, "nms")
