"""PretrainedImageClassifier on tiny in-code CNNs: behaviour, freezing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from sktransfer import ImageEmbedder, PretrainedImageClassifier


def bn_state(module):
    """Copies of ``module``'s buffers: in these CNNs, the BatchNorm running statistics."""
    return {name: b.detach().clone() for name, b in module.named_buffers()}


def _clf(cnn, **kw):
    kw.setdefault("image_size", 8)
    kw.setdefault("random_state", 0)
    kw.setdefault("batch_size", 64)
    kw.setdefault("early_stopping", True)  # (tests of the validation split: on at any n)
    return PretrainedImageClassifier(cnn, **kw)


def test_frozen_head_matches_logistic_regression(cnn, digits):
    X, y = digits
    Xtr, ytr, Xte, yte = X[:600], y[:600], X[600:1000], y[600:1000]
    clf = _clf(cnn).fit(Xtr, ytr)
    emb = ImageEmbedder(cnn, image_size=8, batch_size=64).fit(Xtr)
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(emb.transform(Xtr), ytr)
    ours, ref = clf.score(Xte, yte), lr.score(emb.transform(Xte), yte)
    assert ours > 0.3  # far above chance (0.1): the head really learned
    assert abs(ours - ref) <= 0.005, (ours, ref)
    assert clf.history_[0]["train_loss"] < np.log(10)


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["cat", "dog", "eel"])[np.arange(90) % 3],
        (np.arange(90) % 2).astype(bool),
        (np.arange(90) % 3) * 10 - 5,
    ],
    ids=["str", "bool", "int"],
)
def test_labels_of_any_dtype_round_trip(cnn, digits, labels):
    X, _ = digits
    clf = _clf(cnn).fit(X[:90], labels)
    pred = clf.predict(X[:90])
    assert set(np.unique(pred)) <= set(np.unique(labels))
    assert pred.dtype == clf.classes_.dtype
    np.testing.assert_array_equal(clf.classes_, np.unique(labels))
    proba = clf.predict_proba(X[:90])
    assert proba.shape == (90, len(clf.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], pred)
    assert clf.score(X[:90], labels) == np.mean(pred == labels)


@pytest.mark.parametrize("freeze_depth,n_frozen", [("all", 4), (3, 3), (0, 0), (-1, 3), (-4, 0)])
def test_freeze_depth_counts_blocks(cnn, digits_small, freeze_depth, n_frozen):
    X, y = digits_small
    clf = _clf(cnn, freeze_depth=freeze_depth, max_epochs=1, lr=1e-3).fit(X, y)
    assert clf.n_blocks_ == 4
    assert clf.n_frozen_blocks_ == n_frozen
    for i, block in enumerate(clf.module_.blocks):
        for p in block.parameters():
            assert p.requires_grad == (i >= n_frozen)


def test_frozen_blocks_frozen_for_real(cnn, digits_small):
    X, y = digits_small
    clf = _clf(cnn, freeze_depth=3, max_epochs=2, lr=1e-2, early_stopping=False, train_bn=True)
    ref = torch.nn.Sequential(*[m for m in cnn])  # the user's module is never mutated
    before_user = bn_state(ref)
    clf.fit(X, y)
    net = clf.module_
    # block 0 (conv + BN) is frozen: weights and BN running stats bit-identical
    for (k, v), (_, v0) in zip(bn_state(net.blocks[0]).items(), bn_state(cnn[0]).items()):
        assert torch.equal(v.cpu(), v0), k
    assert torch.equal(net.blocks[0][0].weight.cpu(), cnn[0][0].weight)
    # block 3 (trainable) has moved, and its BN statistics updated
    assert not torch.equal(net.blocks[3][0].weight.cpu(), cnn[3][0].weight)
    assert not torch.equal(net.blocks[3][1].running_mean.cpu(), cnn[3][1].running_mean)
    # train() keeps frozen blocks (incl. the dropout block 2) in eval mode
    net.train()
    assert not net.blocks[0].training and not net.blocks[2].training
    assert net.blocks[3].training
    for k, v in bn_state(ref).items():
        assert torch.equal(v, before_user[k])


def test_fine_tuning_learns_and_records_history(cnn, digits):
    X, y = digits
    clf = _clf(cnn, freeze_depth=0, lr=3e-3, max_epochs=4, n_iter_no_change=10)
    clf.fit(X[:500], y[:500])
    h = clf.history_
    assert [row["epoch"] for row in h] == [1, 2, 3, 4]
    assert {"train_loss", "valid_loss", "valid_acc"} <= set(h[0])
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    assert clf.score(X[1000:1400], y[1000:1400]) > 0.3


def test_sample_weight_changes_the_fit(cnn, digits_small):
    X, y = digits_small
    w = np.where(y == 3, 50.0, 1.0)
    plain = _clf(cnn).fit(X, y)
    weighted = _clf(cnn).fit(X, y, sample_weight=w)
    assert (weighted.predict(X) == 3).sum() > (plain.predict(X) == 3).sum()


def test_same_seed_same_predictions(cnn, digits_small):
    X, y = digits_small
    a = _clf(cnn, freeze_depth=1, max_epochs=2, lr=1e-3).fit(X, y).predict_proba(X)
    b = _clf(cnn, freeze_depth=1, max_epochs=2, lr=1e-3).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_image_files_of_mixed_sizes_and_modes(cnn, tmp_path):
    rng = np.random.RandomState(0)
    paths, labels = [], []
    for i in range(24):
        size = (10 + i % 5 * 7, 12 + i % 3 * 5)
        arr = rng.randint(0, 255, size[::-1] + (3,), dtype=np.uint8)
        arr[..., 0] = 200 if i % 2 else 30
        img = Image.fromarray(arr)
        img = img.convert(["RGB", "L", "RGBA", "P"][i % 4])
        path = tmp_path / f"img{i}.png"
        img.save(path)
        paths.append(str(path))
        labels.append("red" if i % 2 else "dark")
    clf = _clf(cnn, image_size=16).fit(paths, labels)
    assert clf.predict(paths).shape == (24,)
    pil = [Image.open(p) for p in paths[:3]]
    assert clf.predict(pil).shape == (3,)


# ---------------------------------------------------------------- errors and atomicity
def test_bad_input_errors_name_the_sample(cnn, digits_small, tmp_path):
    X, y = digits_small
    with pytest.raises(ValueError, match="empty"):
        _clf(cnn).fit([], [])
    with pytest.raises(ValueError, match="240 samples but y has 10"):
        _clf(cnn).fit(X, y[:10])
    with pytest.raises(ValueError, match="only one class"):
        _clf(cnn).fit(X[:5], [1] * 5)
    with pytest.raises(ValueError, match=r"y\[2\]"):
        _clf(cnn).fit(X[:4], np.array([0.0, 1.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="missing.png"):
        _clf(cnn).fit([str(tmp_path / "missing.png")] * 2, [0, 1])
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    with pytest.raises(ValueError, match="corrupt.png"):
        _clf(cnn).fit([str(good), str(bad)], [0, 1])
    with pytest.raises(TypeError, match="Sample 1"):
        _clf(cnn).fit([str(good), 3.5], [0, 1])
    with pytest.raises(ValueError, match="out of range for a backbone with 4 blocks"):
        _clf(cnn, freeze_depth=5).fit(X, y)
    with pytest.raises(ValueError, match="out of range"):
        _clf(cnn, freeze_depth=-5).fit(X, y)


def test_unknown_and_wrong_modality_backbones(digits_small):
    X, y = digits_small
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        PretrainedImageClassifier("efficientnet_lite").fit(X, y)
    with pytest.raises(ValueError, match="text backbone"):
        PretrainedImageClassifier("all-MiniLM-L6-v2").fit(X, y)
    with pytest.raises(TypeError, match="backbone must be"):
        PretrainedImageClassifier(backbone=3.0).fit(X, y)


def test_failed_fit_leaves_unfitted_estimator(cnn, digits_small):
    X, y = digits_small
    clf = _clf(cnn).fit(X, y)
    check_is_fitted(clf)
    with pytest.raises(ValueError):
        clf.fit(X[:5], [1] * 5)
    with pytest.raises(NotFittedError):
        check_is_fitted(clf)
    with pytest.raises(NotFittedError):
        clf.predict(X)


def test_device_is_resolved_not_stored(cnn, digits_small):
    X, y = digits_small
    clf = _clf(cnn, device="auto").fit(X, y)
    assert clf.device == "auto"
    assert clf.get_params()["device"] == "auto"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            _clf(cnn, device="cuda").fit(X, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fit_and_cpu_pickle(cnn, digits_small):
    import pickle

    X, y = digits_small
    kw = dict(device="cuda", freeze_depth=1, max_epochs=2, precision="fp32")
    clf = _clf(cnn, **kw).fit(X, y)
    assert next(clf.module_.parameters()).is_cuda
    blob = pickle.dumps(clf)
    loaded = pickle.loads(blob)
    assert not next(loaded.module_.parameters()).is_cuda
    loaded.set_params(device="cpu")
    # TF32 convolutions on the GPU vs fp32 on the CPU
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=5e-3)


def test_source_to_target_transfer(cnn, digits):
    X, y = digits
    source = _clf(cnn, freeze_depth=0, max_epochs=2, lr=3e-3).fit(X[:400], y[:400])
    mask = y >= 5
    target = _clf(source, freeze_depth=-1, max_epochs=1, lr=1e-3).fit(
        X[mask][:200], y[mask][:200] * 2
    )
    assert set(target.classes_) == {10, 12, 14, 16, 18}
    assert target.n_blocks_ == source.n_blocks_
    # the frozen prefix is the *fine-tuned* source backbone, not the original module
    assert torch.equal(target.module_.blocks[0][0].weight, source.module_.blocks[0][0].weight)
    assert not torch.equal(target.module_.blocks[0][0].weight.cpu(), cnn[0][0].weight)
    # and reusing it did not modify the source model
    assert target.module_.blocks[0][0].weight is not source.module_.blocks[0][0].weight


def test_train_bn_false_keeps_pretrained_bn_statistics(cnn, digits_small):
    X, y = digits_small
    clf = _clf(cnn, freeze_depth=0, max_epochs=2, lr=1e-2, early_stopping=False).fit(X, y)
    assert clf.train_bn is False
    net = clf.module_
    # block 3 is fine-tuned: its conv and BN affine weights move, its BN statistics do not
    assert not torch.equal(net.blocks[3][0].weight.cpu(), cnn[3][0].weight)
    assert not torch.equal(net.blocks[3][1].weight.cpu(), cnn[3][1].weight)
    for k, v in bn_state(net.blocks[3]).items():
        assert torch.equal(v.cpu(), bn_state(cnn[3])[k]), k
    net.train()
    assert not net.blocks[3][1].training and net.blocks[3][0].training
