"""Fine-tuning knobs: early stopping, schedules, lr="auto", layer decay, gradual unfreezing,
L2-SP, class weights, precision, workers, compile, reproducibility, verbosity."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from conftest import make_cnn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

import sktransfer
from sktransfer import PretrainedImageClassifier, PretrainedTextClassifier
from sktransfer._estimator.targets.single_label import SingleLabel
from sktransfer.cache import config_context
from sktransfer.freezing import TransferNet
from sktransfer.training.loop import TrainConfig, param_groups
from sktransfer.training.regularization import L2SP
from sktransfer.training.schedules import suggest_lr, warmup_cosine


def _clf(cnn, **kw):
    kw.setdefault("image_size", 8)
    kw.setdefault("random_state", 0)
    kw.setdefault("batch_size", 64)
    kw.setdefault("max_epochs", 2)
    kw.setdefault("lr", 1e-3)
    kw.setdefault("early_stopping", True)  # (tests of the validation split: on at any n)
    return PretrainedImageClassifier(cnn, **kw)


def _backbone_distance(clf, cnn):
    """||w - w0|| over the backbone's parameters (fitted vs the user's pretrained module)."""
    fitted = [p for b in clf.module_.blocks for p in b.parameters()]
    source = [p for b in cnn for p in b.parameters()]
    return float(sum((a.detach().cpu() - b).pow(2).sum() for a, b in zip(fitted, source)) ** 0.5)


# ------------------------------------------------------------------ early stopping
def test_early_stopping_restores_the_best_epoch(cnn, digits_small):
    X, y = digits_small
    clf = _clf(
        cnn, freeze_depth=0, lr=0.03, lr_schedule="constant", max_epochs=8,
        n_iter_no_change=3, validation_fraction=0.25, train_bn=True,
    )  # fmt: skip
    clf.fit(X, y)
    h = clf.history_
    best = [row for row in h if row["best"]]
    assert len(best) == 1
    best = best[0]
    assert best["valid_loss"] == pytest.approx(min(row["valid_loss"] for row in h), rel=1e-3)
    assert best["epoch"] < h[-1]["epoch"]  # the run went on past its best epoch (then stopped)
    assert len(h) < 8 and h[-1]["valid_loss"] > best["valid_loss"]
    # the final weights are that epoch's: the validation loss recomputed now matches it
    _, valid_idx = clf._split(SingleLabel().encode(clf, y, len(y)), clf._seed())
    proba = clf.predict_proba(X[valid_idx])
    loss = -np.mean(np.log(proba[np.arange(len(valid_idx)), y[valid_idx]]))
    assert loss == pytest.approx(best["valid_loss"], abs=1e-5)


# ------------------------------------------------------------------ schedules and lr="auto"
def test_warmup_cosine_shape():
    f = [warmup_cosine(s, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # 10 warmup steps
    assert all(a < b for a, b in zip(f[:9], f[1:10]))
    assert all(a > b for a, b in zip(f[9:], f[10:]))  # then strictly decaying ...
    assert 0 < f[-1] < 0.01  # ... to (almost) 0


def test_suggest_lr_is_a_tenth_of_the_minimum_or_of_the_climb():
    lrs = np.logspace(-7, 1, 80)
    noise = np.random.RandomState(0).normal(0, 0.01, 80)
    falls = 2.0 - np.clip(np.log10(lrs) + 7, 0, 5) * 0.3  # falls until 1e-2 ...
    falls[lrs > 1e-2] = 0.5 + (np.log10(lrs[lrs > 1e-2]) + 2) * 3  # ... then explodes
    assert 3e-4 <= suggest_lr(lrs, falls + noise) <= 2e-3
    flat = np.where(lrs < 1e-3, 0.4, 0.4 * (1 + 10 * (np.log10(lrs) + 3)))  # warm start
    assert 5e-5 <= suggest_lr(lrs, flat + noise) <= 2e-4
    assert suggest_lr(lrs, np.linspace(1, 5, 80)) < 1e-6  # climbs from the start
    assert suggest_lr(lrs, [1.0, np.nan]) == pytest.approx(1e-8)


def test_schedules_drive_the_recorded_lr(cnn, digits_small):
    X, y = digits_small
    kw = dict(freeze_depth=2, max_epochs=4, lr=1e-2, early_stopping=False)
    const = _clf(cnn, lr_schedule="constant", **kw).fit(X, y).history_
    assert [row["lr"] for row in const] == [1e-2] * 4
    cos = [row["lr"] for row in _clf(cnn, **kw).fit(X, y).history_]  # the default
    assert cos[0] < 1e-2 and all(a > b for a, b in zip(cos, cos[1:])) and cos[-1] < 1e-3
    one = [row["lr"] for row in _clf(cnn, lr_schedule="onecycle", **kw).fit(X, y).history_]
    assert one[0] == pytest.approx(1e-2)  # the peak ends the first quarter (4 of 16 steps)
    assert all(a > b for a, b in zip(one, one[1:])) and one[-1] < 1e-6
    lin = [row["lr"] for row in _clf(cnn, lr_schedule="warmup_linear", **kw).fit(X, y).history_]
    assert all(a > b for a, b in zip(lin, lin[1:])) and lin[-1] < 1e-2 * 0.3
    # cosine decays slowly first, then fast: above linear early, below it late
    assert lin[0] < cos[0] and lin[2] > cos[2]


def test_lr_auto_runs_a_range_test_and_stores_lr_(cnn, digits_small):
    X, y = digits_small
    clf = _clf(cnn, freeze_depth=1, lr="auto").fit(X, y)
    assert 1e-7 < clf.lr_ < 10.0 and clf.lr == "auto"
    lrs = clf.lr_find_["lrs"]
    assert len(lrs) == len(clf.lr_find_["losses"]) and np.all(np.diff(lrs) > 0)
    assert lrs[0] < clf.lr_ < lrs[-1]
    assert max(row["lr"] for row in clf.history_) <= clf.lr_ + 1e-12
    assert _clf(cnn, freeze_depth=1, lr=3e-4).fit(X, y).lr_ == 3e-4
    # inside a search: "auto" is one more grid value, picked per fit
    search = GridSearchCV(_clf(cnn, freeze_depth=-1, max_epochs=1), {"lr": ["auto", 1e-3]}, cv=2)
    search.fit(X[:120], y[:120])
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


# ------------------------------------------------------------------ layer decay / unfreezing
def test_layer_decay_param_groups(cnn):
    net = TransferNet(list(cnn), ["a", "b", "c", "d"], torch.nn.Identity(), torch.nn.Linear(8, 2))
    net.set_frozen(1)
    cfg = TrainConfig(lr=1.0, max_epochs=1, batch_size=1, optimizer="adamw", weight_decay=0.1,
                      device="cpu", seed=0, target=SingleLabel(), layer_decay=0.5)  # fmt: skip
    groups = param_groups(net, 1e-2, cfg)
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 1e-2 * 0.5**3, 1e-2 * 0.5])
    assert groups[1]["params"][0] is cnn[1][0].weight  # block 1: 3 blocks below the head
    # L2-SP replaces weight decay everywhere
    assert {g["weight_decay"] for g in groups} == {0.1}
    cfg = dataclasses.replace(cfg, regularizer=L2SP([], [], 1.0, 0.0))
    assert {g["weight_decay"] for g in param_groups(net, 1e-2, cfg)} == {0.0}


def test_layer_decay_slows_the_lower_blocks(cnn, digits_small):
    X, y = digits_small
    kw = dict(freeze_depth=0, lr=1e-2, early_stopping=False)
    plain = _clf(cnn, **kw).fit(X, y)
    decayed = _clf(cnn, layer_decay=0.01, **kw).fit(X, y)

    def moved(clf, i):
        w = clf.module_.blocks[i][0].weight.detach().cpu()
        return float((w - cnn[i][0].weight).abs().max().detach())

    assert moved(plain, 0) > 1e-3
    assert moved(decayed, 0) < 1e-6 < moved(decayed, 3)  # lr * 0.01**4 at the bottom


def test_unfreeze_schedule_trains_head_first_then_the_blocks(cnn, digits_small):
    X, y = digits_small
    kw = dict(freeze_depth=2, unfreeze_schedule=2, lr=1e-2)
    clf = _clf(cnn, **kw).fit(X, y)
    assert [row["phase"] for row in clf.history_] == ["head", "head", "all", "all"]
    assert [row["epoch"] for row in clf.history_] == [1, 2, 3, 4]
    assert clf.module_.n_frozen == clf.n_frozen_blocks_ == 2
    for i in (0, 1):
        assert torch.equal(clf.module_.blocks[i][0].weight, cnn[i][0].weight)
    for i in (1, 3):  # blocks 1 (frozen) and 3 (trained after the head phase)
        moved = not torch.equal(clf.module_.blocks[i][0].weight, cnn[i][0].weight)
        assert moved == (i == 3)
    # the second phase trains from activations at the final boundary: cache on == off
    with config_context(cache=False):
        uncached = _clf(cnn, **kw).fit(X, y)
    np.testing.assert_allclose(uncached.predict_proba(X), clf.predict_proba(X), atol=1e-5)


# ------------------------------------------------------------------ L2-SP
def test_l2sp_gradient_is_the_penalty_gradient():
    torch.manual_seed(0)
    w, h = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))
    reg = L2SP([w], [h], alpha=0.7, beta=0.2)
    with torch.no_grad():
        w.add_(1.0)
    w.grad, h.grad = None, None
    reg.add_gradients()
    expected = [0.7 * (w - reg.anchor[0]), 0.2 * h]
    torch.testing.assert_close(w.grad, expected[0].detach())
    torch.testing.assert_close(h.grad, expected[1].detach())
    assert float(reg.penalty()) == pytest.approx(0.35 * 5 + 0.1 * float(h.pow(2).sum()))


def test_larger_l2sp_alpha_stays_closer_to_the_source(cnn, digits_small):
    X, y = digits_small
    kw = dict(freeze_depth=0, lr=1e-2, lr_schedule="constant", weight_decay=0.0,
              early_stopping=False, max_epochs=3)  # fmt: skip
    dist = [_backbone_distance(_clf(cnn, l2sp_alpha=a, **kw).fit(X, y), cnn) for a in (0, 1, 100)]
    assert dist[0] > dist[1] > dist[2]
    assert dist[2] < 0.5 * dist[0]


# ------------------------------------------------------------------ class weights
def test_class_weight_raises_minority_recall(cnn, digits_small):
    X, y = digits_small
    yb = np.where(y == 3, "three", "other")  # ~10% minority
    minority = yb == "three"

    def recall(clf):
        return np.mean(clf.predict(X[minority]) == "three")

    for kw in (dict(), dict(freeze_depth=2, lr=1e-2)):
        plain = recall(_clf(cnn, **kw).fit(X, yb))
        balanced = recall(_clf(cnn, class_weight="balanced", **kw).fit(X, yb))
        assert balanced > plain, kw
    # a dict is exactly a per-class sample weight (frozen head: a deterministic solver)
    by_dict = _clf(cnn, class_weight={"three": 5.0}).fit(X, yb).predict_proba(X)
    by_sw = _clf(cnn).fit(X, yb, sample_weight=np.where(minority, 5.0, 1.0)).predict_proba(X)
    np.testing.assert_allclose(by_dict, by_sw, rtol=1e-10)


# ------------------------------------------------------------------ runtime options
def test_precision_auto_is_fp32_on_cpu_and_bf16_is_applied(cnn, digits_small):
    X, y = digits_small
    if torch.cuda.is_available():
        pytest.skip("checks the CPU resolution of precision='auto'")
    auto = _clf(cnn, device="cpu").fit(X, y).predict_proba(X)
    fp32 = _clf(cnn, device="cpu", precision="fp32").fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(auto, fp32)
    # bf16 features get their own cache namespace (else the fp32 ones would be reused)
    bf16 = _clf(cnn, device="cpu", precision="bf16").fit(X, y).predict_proba(X)
    assert np.all(np.isfinite(bf16)) and not np.array_equal(bf16, fp32)
    np.testing.assert_allclose(bf16, fp32, atol=0.1)


def test_num_workers_gives_the_same_model(cnn, digits_small):
    X, y = digits_small
    kw = dict(freeze_depth=1, max_epochs=1)
    a = _clf(cnn, **kw).fit(X, y).predict_proba(X)
    b = _clf(cnn, num_workers=1, **kw).fit(X, y)
    np.testing.assert_array_equal(b.predict_proba(X), a)


def test_compile_wraps_the_trained_forward(cnn, digits_small, monkeypatch):
    X, y = digits_small
    calls = []

    def fake_compile(module, **kwargs):
        calls.append(module)

        def forward(*args, **kw):
            calls.append("forward")
            return module(*args, **kw)

        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    clf = _clf(cnn, freeze_depth=1, max_epochs=1, compile=True).fit(X, y)
    assert calls[0] is clf.module_ and "forward" in calls
    calls.clear()
    _clf(cnn, freeze_depth=1, max_epochs=1).fit(X, y)
    assert calls == []


def test_cpu_image_models_run_channels_last(cnn, digits_small, monkeypatch):
    X, y = digits_small
    frozen, tuned = _clf(cnn).fit(X, y), _clf(cnn, freeze_depth=1, max_epochs=1).fit(X, y)
    for clf in (frozen, tuned):
        conv = next(m for m in clf.module_.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    user_conv = cnn[0][0].weight  # the user's module is never converted
    assert not user_conv.is_contiguous(memory_format=torch.channels_last)
    # the layout is a speed choice only: NCHW gives the same model up to float rounding
    runtime = PretrainedImageClassifier._runtime
    monkeypatch.setattr(
        PretrainedImageClassifier, "_runtime", lambda self, d, k: (runtime(self, d, k)[0], False)
    )
    with sktransfer.cache.config_context(cache=False):
        nchw = _clf(cnn).fit(X, y)
        np.testing.assert_allclose(nchw.predict_proba(X), frozen.predict_proba(X), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_channels_last(cnn, digits_small):
    X, y = digits_small
    clf = _clf(cnn, device="cuda", freeze_depth=1).fit(X, y)
    conv = clf.module_.blocks[3][0].weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    fp32 = _clf(cnn, device="cuda", freeze_depth=1, precision="fp32").fit(X, y)
    assert np.mean(clf.predict(X) == fp32.predict(X)) > 0.8


# ------------------------------------------------------------------ reproducibility
def test_same_seed_bit_identical_with_augmentation_and_auto_lr(cnn, digits_small):
    X, y = digits_small
    kw = dict(freeze_depth=1, augment="standard", lr="auto", tta=2)
    a = _clf(cnn, **kw).fit(X, y)
    b = _clf(cnn, **kw).fit(X, y)
    assert a.lr_ == b.lr_
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = _clf(cnn, random_state=None, **kw).fit(X, y)
    d = _clf(cnn, random_state=None, **kw).fit(X, y)
    assert not np.array_equal(c.predict_proba(X), d.predict_proba(X))


# ------------------------------------------------------------------ verbosity
def test_verbose_zero_is_silent_and_one_shows_progress_and_table(cnn, digits_small, capsys):
    X, y = digits_small
    _clf(cnn, freeze_depth=1, verbose=0).fit(X, y).predict(X)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    sktransfer.clear_cache()  # so the features are extracted (with a bar) again
    _clf(cnn, freeze_depth=1, verbose=1, lr="auto").fit(X, y)
    out, err = capsys.readouterr()
    header = next(line for line in out.splitlines() if "train_loss" in line)
    for col in ("epoch", "train_loss", "valid_loss", "valid_acc", "lr", "dur"):
        assert col in header
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 2
    assert "LR range test" in out
    assert "fit: features" in err and "%|" in err  # tqdm bars on stderr, named
    assert "\x1b[" not in out  # no ANSI colour codes: captured stdout is not a terminal


def test_epoch_table_shows_small_learning_rates(cnn, digits_small, capsys):
    X, y = digits_small
    _clf(cnn, freeze_depth=1, verbose=1, lr=3e-5, max_epochs=1).fit(X, y)
    out, _ = capsys.readouterr()
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    header = next(line.split() for line in out.splitlines() if "train_loss" in line)
    lr = rows[0][header.index("lr")]
    assert float(lr) > 0 and "e-" in lr  # scientific notation, not 0.0000


# ------------------------------------------------------------------ text
def test_text_fine_tuning_with_the_new_knobs(tiny_bert_dir, texts):
    X, y = texts
    clf = PretrainedTextClassifier(
        tiny_bert_dir, freeze_depth=1, unfreeze_schedule=1, layer_decay=0.8, l2sp_alpha=0.1,
        class_weight="balanced", lr=1e-3, max_epochs=2, random_state=0,
    ).fit(X, y)  # fmt: skip
    assert [row["phase"] for row in clf.history_] == ["head", "all", "all"]
    assert clf.module_.n_frozen == 1
    assert clf.score(X, y) > 0.7


def test_probe_head_and_training_never_see_the_validation_split(digits):
    X, y = digits
    X, y = X[:300], np.random.RandomState(0).randint(0, 3, 300)  # labels unrelated to X
    kw = dict(freeze_depth=2, lr=1e-12, max_epochs=1, C=1e4, validation_fraction=0.3)
    clf = _clf(make_cnn(width=32), **kw).fit(X, y)
    # lr ~ 0: the head is the probe. It memorises its own training rows, and is at chance (1/3)
    # on held-out rows; had it seen the validation rows, valid_acc would be ~1.
    assert clf.score(X, y) > 0.7
    assert clf.history_[0]["valid_acc"] < 0.5


class _OneBlock(torch.nn.Module):
    """Not an nn.Sequential: sktransfer cannot split it, so it is one block."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("freeze_depth, warns", [(-1, True), (1, True), ("all", False), (0, False)])
def test_partial_freeze_of_a_one_block_backbone_warns_at_the_callers_line(freeze_depth, warns):
    X = np.random.default_rng(0).random((20, 4), dtype=np.float32)
    y = np.arange(20) % 2
    clf = PretrainedImageClassifier(backbone=_OneBlock(), freeze_depth=freeze_depth, max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(X, y)  # the warning must point at this line
    ours = [w for w in caught if "is one block" in str(w.message)]
    assert bool(ours) == warns
    if warns:
        assert ours[0].filename == __file__
        assert f"freeze_depth={freeze_depth}" in str(ours[0].message)


# ------------------------------------------------------------------ early_stopping="auto"
def test_early_stopping_auto_threshold_is_100_validation_samples():
    from sktransfer._estimator.split import AUTO_MIN_VALID, early_stopping_enabled

    assert AUTO_MIN_VALID == 100
    assert not early_stopping_enabled("auto", 994, 0.1)  # round(99.4) = 99
    assert early_stopping_enabled("auto", 995, 0.1)  # round(99.5) = 100 (banker's: 100)
    assert early_stopping_enabled("auto", 200, 0.5) and not early_stopping_enabled("auto", 198, 0.5)
    assert early_stopping_enabled(True, 10, 0.1) and not early_stopping_enabled(False, 10**6, 0.1)


@pytest.mark.parametrize(
    "n, early_stopping, held_out",
    [(198, "auto", False), (200, "auto", True), (200, False, False), (60, True, True)],
)
def test_early_stopping_auto_holds_out_only_a_split_that_can_tell_epochs_apart(
    digits, n, early_stopping, held_out
):
    """The default "auto": a validation split (valid_loss, the best epoch restored) from 100
    held-out samples; below, every epoch trains on all samples and the last one is kept."""
    X, y = digits
    clf = PretrainedImageClassifier(
        make_cnn(), image_size=8, freeze_depth=1, max_epochs=2, lr=1e-3, random_state=0,
        validation_fraction=0.5, early_stopping=early_stopping,
    )  # fmt: skip
    assert PretrainedImageClassifier().get_params()["early_stopping"] == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "too few samples" warning on the way
        clf.fit(X[:n], y[:n])
    assert all(("valid_loss" in row) == held_out for row in clf.history_)
    assert any(row.get("best") for row in clf.history_) == held_out
    assert clone(clf).get_params()["early_stopping"] == early_stopping
