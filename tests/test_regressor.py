"""PretrainedImageRegressor / PretrainedTextRegressor: the regression target piece."""

from __future__ import annotations

import doctest
import pickle

import joblib
import numpy as np
import pytest
import torch
from conftest import make_cnn, make_texts
from sklearn.base import clone
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.utils import check_random_state

import sktransfer
from sktransfer import (
    ImageEmbedder,
    PretrainedImageClassifier,
    PretrainedImageRegressor,
    PretrainedTextRegressor,
    TextEmbedder,
    cache_info,
)
from sktransfer._estimator.targets.regression import LOO_GRID, Regression, loo_alpha
from sktransfer.training import heads

pytestmark = pytest.mark.usefixtures("fresh_cache")  # conftest.py


@pytest.fixture(scope="module")
def data(digits_small):
    """Digits images and two targets a CNN's features can explain: brightness, label."""
    X, labels = digits_small
    brightness = X.reshape(len(X), -1).mean(axis=1)
    y2 = np.column_stack([brightness / 10.0, labels.astype(float)])
    return X, y2


def _reg(**kw):
    kw = {"random_state": 0, "batch_size": 64, "early_stopping": True, **kw}
    return PretrainedImageRegressor(make_cnn(), image_size=8, **kw)


def _features(X):
    return ImageEmbedder(make_cnn(), image_size=8, batch_size=64).fit_transform(X)


# --------------------------------------------------------------------------- the ridge head
@pytest.mark.parametrize("n", [40, 160], ids=["dual n<d", "primal n>d"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("ndim", [1, 2])
def test_frozen_equals_ridge_on_embedder_features(data, n, weighted, ndim):
    X, y2 = data
    y = y2[:, 0] if ndim == 1 else y2
    sw = np.random.RandomState(1).uniform(0.2, 3.0, n) if weighted else None
    reg = _reg(alpha=0.01).fit(X[:n], y[:n], sample_weight=sw)  # (features: std ~0.02)
    feats = _features(X)
    assert feats.shape[1] == 64 and reg.n_features_out_ == 64  # n=40 < d=64 < n=160
    ridge = Ridge(alpha=0.01).fit(feats[:n].astype(np.float64), y[:n], sample_weight=sw)
    test = slice(160, None)
    pred = reg.predict(X[test])
    assert pred.shape == ((80,) if ndim == 1 else (80, 2))
    np.testing.assert_allclose(pred, ridge.predict(feats[test]), rtol=1e-5, atol=1e-5)
    assert abs(reg.score(X[test], y[test]) - ridge.score(feats[test], y[test])) < 0.005
    assert reg.score(X[:n], y[:n]) > 0.5  # the targets are learnable: the check has teeth
    # the head predicts standardised targets: Ridge's coefficients over y_scale_
    coef = np.atleast_2d(ridge.coef_)
    w = reg.module_.head.weight.detach().double().numpy()
    np.testing.assert_allclose(w * reg.y_scale_[:, None], coef, rtol=1e-4, atol=1e-6)
    assert reg.history_[0]["n_iter"] == 1 and np.isfinite(reg.history_[0]["train_loss"])


def test_fit_ridge_head_matches_ridge_and_is_memoised():
    rng = np.random.RandomState(0)
    for n, d, alpha in [(30, 50, 0.5), (80, 20, 2.0), (80, 20, 0.0)]:
        X = rng.standard_normal((n, d)).astype(np.float32) + 3.0
        Y = X[:, :3] @ rng.standard_normal((3, 2)) + rng.standard_normal((n, 2))
        w = rng.uniform(0, 2, n)
        w[:5] = 0.0  # zero-weight rows count for nothing
        heads.clear_memo()
        head, info = heads.fit_ridge_head(X, Y, w, alpha=alpha)
        ref = Ridge(alpha=alpha).fit(X.astype(np.float64), Y, sample_weight=w)
        with torch.no_grad():
            out = head(torch.from_numpy(X)).double().numpy()
        np.testing.assert_allclose(out, ref.predict(X), rtol=1e-4, atol=1e-4)
        resid = Y - ref.predict(X)
        assert info["train_loss"] == pytest.approx(w @ (resid**2).mean(axis=1) / w.sum())
        again, _ = heads.fit_ridge_head(X, Y, w, alpha=alpha)
        assert heads.STATS == {"head_solves": 1, "head_hits": 1}
        assert again is not head
        torch.testing.assert_close(again.weight, head.weight, rtol=0, atol=0)
        heads.fit_ridge_head(X, Y, w, alpha=alpha * 2 + 1)  # another alpha: another solve
        assert heads.STATS["head_solves"] == 2


def test_integer_weights_equal_repeated_samples(data):
    X, y2 = data
    X, y = X[:60], y2[:60, 0]
    sw = np.arange(60) % 3  # 0, 1 or 2 copies
    weighted = _reg(alpha=2.0).fit(X, y, sample_weight=sw)
    idx = np.repeat(np.arange(60), sw)
    repeated = _reg(alpha=2.0).fit(X[idx], y[idx])
    np.testing.assert_allclose(weighted.predict(X), repeated.predict(X), rtol=1e-5, atol=1e-5)


def test_output_shapes_and_attributes(data):
    X, y2 = data
    one = _reg().fit(X[:50], y2[:50, 1])
    assert one.predict(X[:7]).shape == (7,) and one.n_outputs_ == 1 and one.y_ndim_ == 1
    col = _reg().fit(X[:50], y2[:50, 1:])  # (n, 1) stays 2-D, as Ridge does
    assert col.predict(X[:7]).shape == (7, 1) and col.y_ndim_ == 2
    two = _reg().fit(X[:50], y2[:50])
    assert two.predict(X[:7]).shape == (7, 2) and two.n_outputs_ == 2
    assert two.y_mean_.dtype == np.float64 and two.y_scale_.shape == (2,)
    np.testing.assert_allclose(two.y_mean_, y2[:50].mean(axis=0))
    np.testing.assert_allclose(two.y_scale_, y2[:50].std(axis=0))
    assert two.target_type_ == "regression" and not hasattr(two, "classes_")
    const = _reg().fit(X[:50], np.column_stack([np.full(50, 7.0), y2[:50, 0]]))
    assert const.y_scale_[0] == 1.0  # a constant output is centred, not divided by 0
    np.testing.assert_allclose(const.predict(X[:5])[:, 0], 7.0, rtol=1e-6)


# --------------------------------------------------------------------------- fine-tuning
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
def test_default_alpha_auto_is_ridgecv_on_the_features(data, weighted):
    """``alpha="auto"`` (the default) is ``RidgeCV``'s exact leave-one-out pick over the
    documented grid, on the features the backbone gives; the fit equals that ridge."""
    from sklearn.linear_model import RidgeCV

    X, y2 = data
    n, y = 40, y2[:40, 1]  # 40 samples < 64 features: a fixed small alpha interpolates
    sw = np.random.RandomState(2).uniform(0.2, 3.0, n) if weighted else None
    reg = _reg().fit(X[:n], y, sample_weight=sw)
    assert reg.get_params()["alpha"] == "auto"
    feats = _features(X).astype(np.float64)
    w = np.ones(n) if sw is None else sw
    Fc = (feats[:n] - np.average(feats[:n], axis=0, weights=w)) * np.sqrt(w)[:, None]
    s2 = np.linalg.svd(Fc, compute_uv=False) ** 2
    grid = LOO_GRID * s2.sum() / len(s2)
    ref = RidgeCV(alphas=grid).fit(feats[:n], y, sample_weight=sw)
    np.testing.assert_allclose(reg.alpha_, ref.alpha_, rtol=1e-6)
    assert not np.isclose(reg.alpha_, 1.0)  # (the pick is not Ridge's default)
    np.testing.assert_allclose(reg.predict(X[160:]), ref.predict(feats[160:]), rtol=1e-4,
                               atol=1e-4)  # fmt: skip
    # a fixed alpha gives no alpha_ pick of its own but still reports what it used
    assert _reg(alpha=0.5).fit(X[:n], y).alpha_ == 0.5
    search = GridSearchCV(_reg(), {"alpha": ["auto", 0.01]}, cv=2).fit(X[:n], y)
    assert search.best_params_["alpha"] in ("auto", 0.01)
    assert clone(search.best_estimator_).get_params()["alpha"] == search.best_params_["alpha"]


def test_fine_tuned_regressor_has_no_alpha_(data):
    """``alpha_`` is the strength of a solved ridge head; a trained head has none."""
    X, y2 = data
    tuned = _reg(freeze_depth=-1, max_epochs=1).fit(X[:60], y2[:60, 0])
    assert not hasattr(tuned, "alpha_")


def _shifted(y):
    """Targets of mean 1000 and scale 50."""
    return 1000.0 + 50.0 * (y - y.mean()) / y.std()


def test_probe_head_strength_is_ridgecv_leave_one_out_pick():
    """The LP-FT head's ridge strength is the grid point RidgeCV's exact leave-one-out
    picks (weighted too); with more features than samples it is far above alpha=1."""
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 200)) * 5.0
    y = X[:, :3].sum(axis=1) + rng.normal(size=60) * 3
    w = rng.uniform(0.5, 2.0, size=60)
    for sw in (None, w):
        Xc = X - np.average(X, axis=0, weights=sw)
        s2 = np.linalg.svd(Xc * np.sqrt(sw if sw is not None else np.ones(60))[:, None],
                           compute_uv=False) ** 2  # fmt: skip
        grid = LOO_GRID * s2.sum() / len(s2)
        ref = RidgeCV(alphas=grid).fit(X, y, sample_weight=sw).alpha_
        np.testing.assert_allclose(loo_alpha(X, y[:, None], sw), ref, rtol=1e-9)
    assert loo_alpha(X, y[:, None]) > 10


@pytest.mark.parametrize("freeze_depth", [0, -1])
def test_fine_tuning_lowers_training_mse_in_original_units(data, freeze_depth):
    X, y2 = data
    X, y = X[:120], _shifted(y2[:120, 0])
    # the head fine-tuning starts from: ridge at max(1, the leave-one-out pick) = 1 here
    frozen = _reg(alpha=1.0).fit(X, y)
    tuned = _reg(freeze_depth=freeze_depth, lr=3e-3, max_epochs=6, early_stopping=False)
    tuned.fit(X, y)
    mse = [np.mean((m.predict(X) - y) ** 2) for m in (frozen, tuned)]
    assert mse[1] < mse[0], mse
    pred = tuned.predict(X)
    assert 800 < pred.mean() < 1200 and 10 < pred.std() < 100  # original units
    assert len(tuned.history_) == 6
    assert tuned.history_[-1]["train_loss"] < tuned.history_[0]["train_loss"]


def test_early_stopping_records_valid_r2(data):
    X, y2 = data
    y = _shifted(y2[:, 0])
    reg = _reg(freeze_depth=-1, lr=1e-3, max_epochs=4, validation_fraction=0.25).fit(X, y)
    assert all("valid_r2" in row for row in reg.history_)
    (best,) = [row for row in reg.history_ if row["best"]]
    # the recorded metric is R² in original units on the held-out split (the fit's own)
    seed = check_random_state(0).randint(np.iinfo(np.int32).max)
    _, valid = train_test_split(np.arange(len(X)), test_size=60, random_state=seed)
    assert reg.score(X[valid], y[valid]) == pytest.approx(best["valid_r2"], abs=1e-4)
    assert reg.score(X, y) > 0.1


@pytest.mark.parametrize(
    "params",
    [
        {"lr": "auto", "batch_size": 16, "max_epochs": 3},  # enough steps for a range test
        {"lr_schedule": "onecycle", "layer_decay": 0.5},
        {"unfreeze_schedule": 1},
        {"l2sp_alpha": 0.1},
        {"head_init": "random", "lr": 1e-2},
        {"optimizer": "sgd", "lr_schedule": "constant", "freeze_depth": 2},
    ],
    ids=["auto_lr", "onecycle+layer_decay", "unfreeze", "l2sp", "random_head", "sgd+partial"],
)
def test_shared_training_parameters_run(data, params):
    X, y2 = data
    y = _shifted(y2[:96, 0])
    params = {"freeze_depth": 0, "max_epochs": 2, "lr": 1e-3, **params}
    reg = _reg(**params).fit(X[:96], y)
    pred = reg.predict(X[:96])
    assert np.isfinite(pred).all() and 700 < pred.mean() < 1300
    assert all("valid_r2" in row for row in reg.history_)
    if params["lr"] == "auto":
        assert reg.lr_ > 0 and "losses" in reg.lr_find_
    if "unfreeze_schedule" in params:
        assert [row["phase"] for row in reg.history_][0] == "head"


# --------------------------------------------------------------------------- grid search cost
def test_grid_over_alpha_and_lr_runs_the_backbone_once_per_sample(data):
    X, y2 = data
    y = y2[:, 0]
    search = GridSearchCV(_reg(), {"alpha": [0.003, 0.03, 0.3], "lr": [1e-4, 1e-3]}, cv=3)
    search.fit(X, y)
    info = cache_info()
    assert info["backbone_forwards"] == len(X)
    # frozen: lr never reaches the head; 3 alphas x 3 folds, + 1 for the refit
    assert info["head_solves"] == 3 * 3 + 1
    assert info["head_hits"] == 3 * 3
    assert search.best_score_ > 0.2  # held-out R²
    search.predict(X)
    assert cache_info()["backbone_forwards"] == len(X)


# --------------------------------------------------------------------------- bad input
def test_bad_targets_name_their_index(data):
    X, y2 = data
    X, y = X[:20], y2[:20].copy()
    bad = y[:, 0].copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match=r"y\[5\] is nan"):
        _reg().fit(X, bad)
    y[3, 1] = np.inf
    with pytest.raises(ValueError, match=r"y\[3, 1\] is inf"):
        _reg().fit(X, y)
    with pytest.raises(TypeError, match=r"y\[2\] is 'x'"):
        _reg().fit(X, [1.0, 2.0, "x"] + [0.0] * 17)
    with pytest.raises(TypeError, match=r"y\[1\] is None"):
        _reg().fit(X, np.array([1.0, None] + [0.0] * 18, dtype=object))
    with pytest.raises(ValueError, match="20 samples but y has 19"):
        _reg().fit(X, np.zeros(19))
    with pytest.raises(ValueError, match="requires y"):
        _reg().fit(X, None)
    with pytest.raises(ValueError, match="shape"):
        _reg().fit(X, np.zeros((20, 2, 2)))
    with pytest.raises(ValueError, match="alpha"):
        _reg(alpha=-1.0).fit(X, y2[:20, 0])
    assert not hasattr(_reg(), "y_mean_")


def test_regression_target_score_and_loss_match_sklearn():
    rng = np.random.RandomState(0)
    t = rng.standard_normal((30, 3))
    o = t + 0.5 * rng.standard_normal((30, 3))
    t[:, 2] = 1.0  # constant output: 1 if predicted exactly, else 0 (r2_score's rule)
    target = Regression()
    for out in (o, np.column_stack([o[:, :2], t[:, 2]])):
        got = target.score(torch.from_numpy(out).float(), torch.from_numpy(t).float())
        assert got == pytest.approx(r2_score(t, out), abs=1e-6)
    w = torch.tensor(rng.uniform(0.5, 2, 30))
    loss = target.loss(torch.from_numpy(o), torch.from_numpy(t), w)
    expected = (w.numpy() * ((o - t) ** 2).mean(axis=1)).sum() / w.numpy().sum()
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- sklearn surface
def test_clone_get_params_and_constraints():
    reg = PretrainedImageRegressor(make_cnn(), alpha=0.3, lr=1e-3)
    params = reg.get_params()
    assert params["alpha"] == 0.3 and "C" not in params and "class_weight" not in params
    twin = clone(reg)
    assert twin.get_params()["alpha"] == 0.3 and twin.backbone is not reg.backbone
    assert clone(reg.set_params(alpha=5.0)).alpha == 5.0
    text = PretrainedTextRegressor(alpha=2.0)
    assert text.get_params()["alpha"] == 2.0 and "C" not in text.get_params()
    assert set(PretrainedImageRegressor().get_params()) - {"alpha"} == set(
        PretrainedImageClassifier().get_params()
    ) - {"C", "class_weight"}


def test_docstring_examples_run():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(verbose=False)
    for cls in (PretrainedImageRegressor, PretrainedTextRegressor):
        for test in finder.find(cls, cls.__name__, globs={})[:1]:
            runner.run(test)
    assert runner.failures == 0 and runner.tries >= 5


def test_pickle_and_joblib_roundtrip(data, tmp_path):
    X, y2 = data
    reg = _reg(freeze_depth=-1, max_epochs=1).fit(X[:80], _shifted(y2[:80, 0]))
    joblib.dump(reg, tmp_path / "m.joblib")
    for back in (joblib.load(tmp_path / "m.joblib"), pickle.loads(pickle.dumps(reg))):
        assert type(back) is PretrainedImageRegressor and back.get_params()["alpha"] == "auto"
        np.testing.assert_allclose(back.predict(X[80:]), reg.predict(X[80:]), rtol=1e-6)
        assert back.predict(X[80:]).shape == (len(X) - 80,)


def test_source_to_target_transfer_from_a_regressor(data):
    X, y2 = data
    source = _reg(freeze_depth=0, lr=3e-3, max_epochs=2, early_stopping=False)
    source.fit(X[:120], _shifted(y2[:120, 0]))
    tuned_feats = ImageEmbedder(source, image_size=8).fit_transform(X)
    assert not np.allclose(tuned_feats, _features(X))  # the fine-tuned weights travel
    target = PretrainedImageRegressor(source, image_size=8, alpha=2.0).fit(X[:120], y2[:120, 1])
    ridge = Ridge(alpha=2.0).fit(tuned_feats[:120].astype(np.float64), y2[:120, 1])
    np.testing.assert_allclose(target.predict(X[120:]), ridge.predict(tuned_feats[120:]), atol=1e-4)
    clf = PretrainedImageClassifier(source, image_size=8).fit(X[:120], y2[:120, 1].astype(int))
    assert clf.predict(X[:3]).shape == (3,)
    assert source.module_.head.out_features == 1  # the source is untouched


# --------------------------------------------------------------------------- text
@pytest.fixture(scope="module")
def text_data():
    texts, labels = make_texts(100)
    rng = np.random.RandomState(0)
    y = np.column_stack([(labels == "pos") * 2.0 - 1.0, rng.standard_normal(100)])
    return list(texts), y


def test_text_regressor_frozen_equals_ridge_and_fine_tunes(tiny_bert_dir, text_data):
    X, y = text_data
    reg = PretrainedTextRegressor(tiny_bert_dir, alpha=0.5, random_state=0).fit(X[:70], y[:70])
    feats = TextEmbedder(tiny_bert_dir).fit_transform(X).astype(np.float64)
    ridge = Ridge(alpha=0.5).fit(feats[:70], y[:70])
    np.testing.assert_allclose(reg.predict(X[70:]), ridge.predict(feats[70:]), atol=1e-5)
    assert reg.predict(X[70:]).shape == (30, 2)
    tuned = PretrainedTextRegressor(
        tiny_bert_dir,
        freeze_depth=1,
        max_epochs=2,
        lr=1e-3,
        random_state=0,
        early_stopping=True,
    ).fit(X[:70], y[:70, 0])
    assert tuned.predict(X[70:]).shape == (30,)
    assert "valid_r2" in tuned.history_[-1]


@pytest.fixture(scope="module")
def text_reg(tiny_bert_dir, text_data):
    X, y = text_data
    reg = PretrainedTextRegressor(tiny_bert_dir, freeze_depth=1, max_epochs=1, random_state=0)
    return reg.fit(X[:70], 1000.0 + 50.0 * y[:70, 0]), X[70:]


def test_text_regressor_save_load(tiny_bert_dir, text_data, text_reg, tmp_path):
    reg, X = text_reg
    sktransfer.save(reg, tmp_path / "m.skt")
    back = sktransfer.load(tmp_path / "m.skt")
    assert type(back) is PretrainedTextRegressor and back.get_params() == reg.get_params()
    np.testing.assert_array_equal(back.predict(X), reg.predict(X))
    assert back.y_mean_.dtype == np.float64 and back.y_ndim_ == 1
    assert back.history_ == reg.history_
    X2, y2 = text_data  # 2-D targets round-trip their shape
    two = PretrainedTextRegressor(tiny_bert_dir, random_state=0).fit(X2[:40], y2[:40])
    sktransfer.save(two, tmp_path / "two.skt")
    back = sktransfer.load(tmp_path / "two.skt")
    np.testing.assert_array_equal(back.predict(X), two.predict(X))
    assert back.alpha_ == two.alpha_ and two.get_params()["alpha"] == "auto"  # (the pick)


def test_text_regressor_quantize_dynamic(text_reg):
    from sktransfer.deploy import is_quantized, quantize_dynamic

    reg, X = text_reg
    q = quantize_dynamic(reg)
    assert is_quantized(q) and not is_quantized(reg) and q.device == "cpu"
    p, p_q = reg.predict(X), q.predict(X)
    assert not np.array_equal(p, p_q)  # int8 arithmetic really ran
    np.testing.assert_allclose(p_q, p, atol=0.05 * reg.y_scale_[0])


# --------------------------------------------------------------------------- ONNX
def _session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_onnx_image_regressor_matches_predict(data, tmp_path):
    pytest.importorskip("onnx")
    from sktransfer.data import load_rgb, preprocess_image

    X, y2 = data
    reg = _reg().fit(X[:100], 1000.0 + 50.0 * y2[:100])
    path = reg.export_onnx(tmp_path / "reg.onnx")
    sess = _session(path)
    assert [o.name for o in sess.get_outputs()] == ["predictions"]
    pixels = np.stack(
        [preprocess_image(load_rgb(x), reg.preprocessing_).numpy() for x in X[100:120]]
    )
    for n in (1, 20):
        (out,) = sess.run(None, {"pixel_values": pixels[:n]})
        assert out.shape == (n, 2)
        np.testing.assert_allclose(out, reg.predict(X[100 : 100 + n]), rtol=1e-5, atol=1e-3)
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["sktransfer_target"] == "regression" and meta["sktransfer_n_outputs"] == "2"


def test_export_onnx_text_regressor_matches_predict(text_reg, tmp_path):
    pytest.importorskip("onnx")
    reg, X = text_reg
    sess = _session(reg.export_onnx(tmp_path / "text.onnx"))
    assert [o.name for o in sess.get_outputs()] == ["predictions"]
    names = [i.name for i in sess.get_inputs()]
    enc = reg.preprocessing_.tokenizer(
        X[:9], padding=True, truncation=True, max_length=64, return_tensors="np"
    )
    (out,) = sess.run(None, {k: enc[k].astype(np.int64) for k in names})
    assert out.shape == (9, 1)  # predict ravels a 1-D target; the graph keeps the axis
    np.testing.assert_allclose(out[:, 0], reg.predict(X[:9]), rtol=1e-5, atol=1e-3)
