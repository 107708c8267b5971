"""regularizer="lwf" | "delta" | "bss" (issue 25 item 2): feature pulls toward the source model."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from conftest import make_cnn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from sktransfer import (
    PretrainedImageClassifier,
    PretrainedImageRegressor,
    PretrainedTextClassifier,
)
from sktransfer.cache import config_context
from sktransfer.freezing import TransferNet
from sktransfer.training.feature_regularizers import BSS, DELTA, LwF, source_copy
from sktransfer.training.regularization import L2SP, make_regularizer

NAMES = ("lwf", "delta", "bss")


def map_cnn(seed=0):
    """conftest's CNN without its final pooling and flatten: a (n, 16, 4, 4) feature map
    at image_size 8, which the backbone's pool averages."""
    cnn = make_cnn(seed)
    cnn[3] = cnn[3][:3]
    return cnn


def _clf(backbone, **kw):
    kw = {"image_size": 8, "random_state": 0, "batch_size": 32, "max_epochs": 2, "lr": 1e-2,
          "freeze_depth": 0, "lr_schedule": "constant", "early_stopping": False, **kw}  # fmt: skip
    return PretrainedImageClassifier(backbone, **kw)


def _features(fitted, source, X):
    """``(fitted maps, fitted pooled, source maps, source pooled)`` on ``X``: the fitted
    net's first-block input, pool input and pool output are captured during ``predict``
    (uncached), and the source net (a frozen estimator's ``module_``) runs on that input."""
    net, got = fitted.module_, {"in": [], "map": [], "pooled": []}

    def keep(module, args, out):
        got["map"].append(args[0])
        got["pooled"].append(out)

    hooks = [
        net.blocks[0].register_forward_pre_hook(lambda m, a: got["in"].append(a[0])),
        net.pool.register_forward_hook(keep),
    ]
    try:
        with config_context(cache=False):
            fitted.predict(X)
    finally:
        for h in hooks:
            h.remove()
    assert got["in"], "predict ran no forward pass"
    maps_s, pooled_s = [], []
    with torch.no_grad():
        src = source.module_.eval()
        for x in got["in"]:
            for block in src.blocks:
                x = block(x)
            maps_s.append(x)
            pooled_s.append(src.pool(x))

    def cat(parts):  # image maps: tensors; text maps: TextState (hidden states, mask)
        if isinstance(parts[0], torch.Tensor):
            return torch.cat([p.float() for p in parts])
        return torch.cat([p[0].float() for p in parts]), torch.cat([p[1] for p in parts])

    return cat(got["map"]), cat(got["pooled"]), cat(maps_s), cat(pooled_s)


def _pooled_distance(fitted, source, X):
    _, pooled_t, _, pooled_s = _features(fitted, source, X)
    return float((pooled_t - pooled_s).pow(2).sum(1).mean())


def _map_distance(fitted, source, X):
    map_t, _, map_s, _ = _features(fitted, source, X)
    return float((map_t - map_s).pow(2).mean())


def _smallest_share(fitted, X, n=8):
    """sigma_min^2 / sum sigma^2 of the fitted pooled features of ``X`` in batches of ``n``."""
    _, pooled, _, _ = _features(fitted, fitted, X)
    shares = []
    for i in range(0, len(pooled) - n + 1, n):
        s = torch.linalg.svdvals(pooled[i : i + n]).pow(2)
        shares.append(float(s[-1] / s.sum()))
    return float(np.mean(shares))


# ------------------------------------------------------------------ pulls toward the source
@pytest.fixture(scope="module")
def image_fits(digits_small):
    """One source and one plain fine-tune, shared by the pull tests."""
    X, y = digits_small
    X, y = X[:160], y[:160]
    cnn = map_cnn()
    source = _clf(cnn, freeze_depth="all").fit(X, y)  # its module_: the untrained backbone
    plain = _clf(cnn).fit(X, y)
    return X, y, cnn, source, plain


def test_lwf_pulls_pooled_features_toward_the_source(image_fits):
    X, y, cnn, source, plain = image_fits
    lwf = _clf(cnn, regularizer="lwf", regularizer_strength=10.0).fit(X, y)
    d_plain, d_lwf = _pooled_distance(plain, source, X), _pooled_distance(lwf, source, X)
    assert d_lwf < 0.5 * d_plain


def test_delta_pulls_feature_maps_toward_the_source(image_fits):
    X, y, cnn, source, plain = image_fits
    delta = _clf(cnn, regularizer="delta", regularizer_strength=10.0).fit(X, y)
    d_plain, d_delta = _map_distance(plain, source, X), _map_distance(delta, source, X)
    assert d_delta < 0.5 * d_plain


def test_bss_shrinks_the_smallest_singular_value(image_fits):
    X, y, cnn, source, plain = image_fits
    # batches of 8 < 16 channels, as in BSS's setting (n < d: no dead channel's zero)
    kw = dict(batch_size=8, max_epochs=1)
    bss = _clf(cnn, regularizer="bss", regularizer_strength=10.0, **kw).fit(X, y)
    plain = _clf(cnn, **kw).fit(X, y)
    assert _smallest_share(bss, X) < 0.8 * _smallest_share(plain, X)


@pytest.mark.parametrize("name", ["lwf", "delta"])
def test_text_regularizer_pulls_toward_the_source(tiny_bert_dir, texts, name):
    X, y = texts
    kw = dict(random_state=0, max_epochs=2, lr=3e-3, batch_size=16, freeze_depth=1,
              lr_schedule="constant", early_stopping=False)  # fmt: skip
    source = PretrainedTextClassifier(tiny_bert_dir, random_state=0).fit(X, y)  # frozen
    plain = PretrainedTextClassifier(tiny_bert_dir, **kw).fit(X, y)
    reg = PretrainedTextClassifier(
        tiny_bert_dir, regularizer=name, regularizer_strength=100.0, **kw
    ).fit(X, y)
    if name == "lwf":
        d_plain, d_reg = _pooled_distance(plain, source, X), _pooled_distance(reg, source, X)
    else:  # padding masked: only real tokens count
        (h_p, mask), _, (h_s, _), _ = _features(plain, source, X)
        (h_r, _), _, _, _ = _features(reg, source, X)
        m = mask.unsqueeze(-1).float()
        d_plain = float(((h_p - h_s).pow(2) * m).sum() / m.sum())
        d_reg = float(((h_r - h_s).pow(2) * m).sum() / m.sum())
    assert d_reg < 0.5 * d_plain


# ------------------------------------------------------------------ clone, search, strength 0
def test_clone_and_grid_search_over_regularizer(digits_small):
    X, y = digits_small
    X, y = X[:96], y[:96] % 2
    est = _clf(map_cnn(), max_epochs=1, regularizer="delta", regularizer_strength=0.5)
    params = clone(est).get_params()
    assert params["regularizer"] == "delta" and params["regularizer_strength"] == 0.5
    search = GridSearchCV(est, {"regularizer": [None, "lwf", "delta", "bss"]}, cv=2)
    search.fit(X, y)
    assert list(search.cv_results_["param_regularizer"]) == [None, "lwf", "delta", "bss"]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_estimator_.regularizer == search.best_params_["regularizer"]


@pytest.mark.parametrize("name", NAMES)
def test_strength_zero_is_no_regularizer(digits_small, name):
    X, y = digits_small
    X, y = X[:96], y[:96]
    cnn = map_cnn()
    plain = _clf(cnn, max_epochs=1).fit(X, y)
    zero = _clf(cnn, max_epochs=1, regularizer=name, regularizer_strength=0.0).fit(X, y)
    np.testing.assert_array_equal(zero.predict_proba(X), plain.predict_proba(X))
    assert zero.history_[0]["train_loss"] == plain.history_[0]["train_loss"]
    # a strength > 0 does change the fit (the test above is not vacuous)
    some = _clf(cnn, max_epochs=1, regularizer=name, regularizer_strength=10.0).fit(X, y)
    assert some.history_[0]["train_loss"] != plain.history_[0]["train_loss"]


def test_l2sp_by_name_equals_l2sp_alpha(digits_small):
    X, y = digits_small
    X, y = X[:96], y[:96]
    cnn = map_cnn()
    by_name = _clf(cnn, max_epochs=1, regularizer="l2sp", regularizer_strength=0.5).fit(X, y)
    by_alpha = _clf(cnn, max_epochs=1, l2sp_alpha=0.5).fit(X, y)
    np.testing.assert_array_equal(by_name.predict_proba(X), by_alpha.predict_proba(X))
    with pytest.raises(ValueError, match="l2sp_alpha=0.5 and regularizer='lwf'"):
        _clf(cnn, max_epochs=1, l2sp_alpha=0.5, regularizer="lwf").fit(X, y)
    with pytest.raises(ValueError, match="both ask for a regulariser"):
        _clf(cnn, max_epochs=1, l2sp_alpha=0.5, regularizer="l2sp").fit(X, y)
    net = _net(map_cnn(), n_frozen=2)
    assert isinstance(make_regularizer("l2sp", None, net), L2SP)
    assert make_regularizer(None, 1.0, net) is None


# ------------------------------------------------------------------ gradients, the source copy
def _net(cnn, n_frozen):
    net = TransferNet(list(cnn), ["a", "b", "c", "d"], _pool(), torch.nn.Linear(16, 3))
    net.set_frozen(n_frozen)
    return net


def _pool():
    from sktransfer.backbones.custom import AutoPool

    return AutoPool()


def _start(reg, net):
    """``on_train_begin`` as the loop calls it (a stand-in for the skorch net)."""
    reg.on_train_begin(types.SimpleNamespace(module_=net, config=None, device="cpu"))


@pytest.mark.parametrize("cls", [LwF, DELTA, BSS])
def test_loss_term_gradient_reaches_only_trainable_params(cls):
    net = _net(map_cnn(), n_frozen=2)
    reg = make_regularizer(cls.__name__.lower(), 1.0, net)
    assert type(reg) is cls
    x = torch.randn(6, 3, 8, 8)
    _start(reg, net)
    if cls is not BSS:  # the copy's forward is the net's: zero penalty before any step
        net.eval()
        net(x)
        assert float(reg.loss_term(net, x).detach()) == 0.0
    with torch.no_grad():  # a "trained" step: the target moves away from the source
        for p in net.blocks[3].parameters():
            p.add_(0.1 * torch.randn_like(p))
    net.train()
    net(x)
    term = reg.loss_term(net, x)
    assert term.dim() == 0 and float(term) > 0
    term.backward()
    for i, block in enumerate(net.blocks):
        for p in block.parameters():
            assert (p.grad is not None) == (i == 3), (i, p.shape)  # block 2: a Dropout
    assert any(float(p.grad.abs().sum()) > 0 for p in net.blocks[3].parameters())
    if reg.source_ is not None:
        assert all(p.grad is None and not p.requires_grad for p in reg.source_.parameters())
        assert len(reg.source_) == 3  # blocks 2, 3 and the pool: the frozen prefix not copied
    # nothing is kept for the next batch; validation passes (no grad) are not captured
    assert reg.captured_ == {}
    with torch.no_grad():
        net(x)
    assert reg.captured_ == {}
    reg.on_train_end(None)
    assert not net.pool._forward_hooks and not net.blocks[2]._forward_pre_hooks


def test_head_only_phase_adds_a_zero_term_without_hooks():
    net = _net(map_cnn(), n_frozen=2)
    reg = make_regularizer("lwf", 1.0, net)
    net.set_frozen(len(net.blocks))  # unfreeze_schedule's head phase
    _start(reg, net)
    assert not net.pool._forward_hooks
    x = torch.randn(4, 16)  # the cached pooled features the head phase reads
    net.input_block = len(net.blocks)
    net(x)
    assert float(reg.loss_term(net, x).detach()) == 0.0


def test_source_copy_equals_the_net_with_lora_adapters():
    from sktransfer.training.lora import add_lora

    net = _net(map_cnn(), n_frozen=1)
    add_lora(net, 1, rank=2, alpha=4.0, dropout=0.0)
    with torch.no_grad():  # B != 0: the adapters now change the output
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    source = source_copy(net, 1)
    x = torch.randn(5, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        h = net.blocks[0](x)
        expected = net.features(x)
        for block in source[:-1]:
            h = block(h)
        torch.testing.assert_close(source[-1](h), expected, rtol=0, atol=0)
        for name, p in net.named_parameters():  # the copy is a copy: training moves only net
            if "lora_B" in name:
                p.add_(0.05)
        assert not torch.equal(net.features(x), expected)


# ------------------------------------------------------------------ training modes
def test_cached_boundary_and_unfreeze_schedule(digits_small):
    X, y = digits_small
    X, y = X[:96], y[:96]
    kw = dict(freeze_depth=2, unfreeze_schedule=1, regularizer="lwf", regularizer_strength=1.0)
    cached = _clf(map_cnn(), **kw).fit(X, y)
    assert [row["phase"] for row in cached.history_] == ["head", "all", "all"]
    with config_context(cache=False):  # the frozen prefix recomputed: the same pull
        uncached = _clf(map_cnn(), **kw).fit(X, y)
    np.testing.assert_allclose(uncached.predict_proba(X), cached.predict_proba(X), atol=1e-5)
    plain = _clf(map_cnn(), **{**kw, "regularizer": None}).fit(X, y)
    assert plain.history_[1]["train_loss"] != cached.history_[1]["train_loss"]


@pytest.mark.parametrize("name", NAMES)
def test_regression_and_multilabel_targets(digits_small, name):
    X, y = digits_small
    X, y = X[:64], y[:64]
    reg = PretrainedImageRegressor(
        map_cnn(), image_size=8, random_state=0, max_epochs=1, freeze_depth=-1,
        regularizer=name, lr=1e-3,
    ).fit(X, np.stack([y, y % 3], 1).astype(float))  # fmt: skip
    assert np.all(np.isfinite(reg.predict(X)))
    multi = np.stack([y % 2, (y > 4)], 1).astype(int)
    clf = _clf(map_cnn(), max_epochs=1, freeze_depth=-1, regularizer=name).fit(X, multi)
    assert clf.predict(X).shape == multi.shape
