"""Ray Data scoring in its native shape: ``map_batches(Predictor, ...)`` (issue 27, item 2).

One local Ray (2 CPUs) for the module; the actor-pool tests run one actor over several
batches and check from inside the actor that it loaded the model once and cached nothing.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pd = pytest.importorskip("pandas")

from conftest import make_vit_classifier  # noqa: E402

import sktransfer  # noqa: E402
from sktransfer.ray import Predictor, output_columns  # noqa: E402

BATCH = 20


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


class Probe(Predictor):
    """A Predictor that reports, per batch, the actor's pid, which loaded estimator scored
    it (every estimator it ever held is kept alive, so two loads never share an id) and
    the cache's entries after scoring."""

    held: list = []

    def __call__(self, batch):
        out = super().__call__(batch)
        type(self).held.append(self.estimator_)
        n = len(out["prediction"])
        out["pid"] = np.full(n, os.getpid())
        out["model_id"] = np.full(n, id(self.estimator_))
        out["entries"] = np.full(n, sktransfer.cache_info()["entries"])
        return out


def _by_value():
    """This test module is not importable in Ray's workers: ship ``Probe`` by value."""
    import sys

    from ray import cloudpickle  # Ray's own copy pickles the tasks

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_one_actor_loads_once_across_batches(local_ray, text_model, texts):
    clf, path = text_model
    X = texts[0]
    _by_value()
    ds = ray.data.from_pandas(pd.DataFrame({"id": range(len(X)), "text": X}))
    out = ds.map_batches(
        Probe,
        fn_constructor_kwargs={"model_path": path, "column": "text", "proba": True},
        concurrency=1,
        batch_size=BATCH,
        batch_format="pandas",
    ).to_pandas()
    out = out.sort_values("id")
    assert len(out) == len(X) > 2 * BATCH  # several batches
    assert out["pid"].nunique() == 1 and out["model_id"].nunique() == 1  # one actor, one load
    assert (out["entries"] == 0).all()  # the cache stayed empty in the actor
    assert list(out["prediction"]) == list(clf.predict(X))
    got = out[["proba_neg", "proba_pos"]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(got, clf.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_image_bytes_in_numpy_batches(local_ray, digits_small, tmp_path):
    from PIL import Image

    model = tmp_path / "vit.skt"
    vit = make_vit_classifier(tmp_path, digits_small)
    sktransfer.save(vit, model)
    paths = []
    for i, image in enumerate(digits_small[0][:16]):
        paths.append(str(tmp_path / f"{i:02d}.png"))
        Image.fromarray(image).save(paths[-1])
    ds = ray.data.read_binary_files(paths, include_paths=True)  # columns bytes, path
    out = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_path": str(model), "column": "bytes"},
        concurrency=1,
        batch_size=6,
        batch_format="numpy",
    ).take_all()
    by_path = {os.path.basename(row["path"]): row["prediction"] for row in out}
    assert [by_path[os.path.basename(p)] for p in paths] == list(vit.predict(paths))


# ------------------------------------------------------------------ in this process
def test_batches_of_either_format_without_ray_workers(text_model, texts):
    clf, path = text_model
    X = texts[0][:12]
    labels, proba = clf.predict(X), clf.predict_proba(X)
    sktransfer.clear_cache()
    pred = Predictor(path)
    frame = pred(pd.DataFrame({"text": X}))  # one column: no column= needed
    arrays = Predictor(path, column="text", proba=True)({"text": np.asarray(X), "k": np.arange(12)})
    assert sktransfer.cache_info()["entries"] == 0
    clf.predict(X)  # the same items outside a Predictor do fill the cache
    assert sktransfer.cache_info()["entries"] > 0
    assert list(frame.columns) == ["text", "prediction"]
    assert list(frame["prediction"]) == list(labels)
    assert set(arrays) == {"text", "k", "prediction", "proba_neg", "proba_pos"}
    got = np.c_[arrays["proba_neg"], arrays["proba_pos"]]
    np.testing.assert_allclose(got, proba, rtol=1e-5, atol=1e-6)
    assert list(arrays["prediction"]) == list(labels)


def test_column_and_batch_errors(text_model, texts):
    _, path = text_model
    pred = Predictor(path)
    with pytest.raises(ValueError, match=r"column=NAME"):
        pred(pd.DataFrame({"a": ["x"], "b": ["y"]}))
    with pytest.raises(ValueError, match="no column 'txt'"):
        Predictor(path, column="txt")({"text": np.asarray(["good"])})
    with pytest.raises(TypeError, match="pandas DataFrame or a dict"):
        pred(["good film"])
    with pytest.raises(TypeError, match=r"Sample 1: .*column 'text'.* within this batch of 2"):
        pred(pd.DataFrame({"text": ["good", None]}))


def test_output_columns_follow_the_model(text_model, tiny_bert_dir, texts):
    from sktransfer import PretrainedTextClassifier, PretrainedTextRegressor

    clf, _ = text_model
    assert output_columns(clf) == ["prediction"]
    assert output_columns(clf, proba=True) == ["prediction", "proba_neg", "proba_pos"]
    X, y = texts
    multi = np.c_[y[:20] == "pos", y[:20] == "neg", np.arange(20) % 2].astype(int)
    ml = PretrainedTextClassifier(tiny_bert_dir).fit(X[:20], multi)
    assert output_columns(ml) == [f"prediction_{c}" for c in ml.classes_]
    reg = PretrainedTextRegressor(tiny_bert_dir).fit(X[:20], np.c_[np.arange(20.0), -np.ones(20)])
    assert output_columns(reg) == ["prediction_0", "prediction_1"]
    with pytest.raises(ValueError, match="needs a classifier"):
        output_columns(reg, proba=True)
