"""Spark scoring in its native shape: ``predict_udf`` on a string or binary column
(issue 27, item 2). One ``local[2]`` session for the module; its Python workers import
torch once and are reused (``spark.python.worker.reuse``) by the later tests."""

from __future__ import annotations

import io
import os
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("pyspark")
pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java (apt-get install default-jre-headless)", allow_module_level=True)

from conftest import make_vit_classifier  # noqa: E402

import sktransfer  # noqa: E402
from sktransfer.spark import make_predict_fn, predict_udf, return_type  # noqa: E402

N_IMAGES = 24


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers run this venv's Python
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("sktransfer-tests")
        .config("spark.driver.memory", "512m")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def vit_model(directory, digits_small):
    """A frozen image classifier on a tiny random ViT saved as a safe file: ``(clf, path)``."""
    clf = make_vit_classifier(directory, digits_small)
    return clf, sktransfer.save(clf, directory / "vit.skt")


def png_files(directory, images):
    from PIL import Image

    directory.mkdir()
    paths = []
    for i, image in enumerate(images):
        paths.append(str(directory / f"{i:03d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def image_model(digits_small, tmp_path_factory):
    return vit_model(tmp_path_factory.mktemp("vit"), digits_small)


def test_texts_predict_and_proba_equal_in_process(spark, text_model, texts):
    clf, path = text_model
    X = texts[0]
    df = spark.createDataFrame(list(enumerate(X)), "id long, text string").repartition(2)
    scores = predict_udf(path, proba=True, batch_size=16)
    out = df.select("id", scores("text").alias("p")).select("id", "p.*").orderBy("id").toPandas()
    assert list(out.columns) == ["id", "prediction", "proba_neg", "proba_pos"]
    assert list(out["prediction"]) == list(clf.predict(X))
    got = out[["proba_neg", "proba_pos"]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(got, clf.predict_proba(X), rtol=1e-5, atol=1e-6)
    labels = df.select("id", predict_udf(path)("text").alias("label")).orderBy("id").toPandas()
    assert list(labels["label"]) == list(clf.predict(X))


def test_image_bytes_from_binary_files_and_paths(spark, image_model, digits_small, tmp_path):
    clf, path = image_model
    paths = png_files(tmp_path / "png", digits_small[0][:N_IMAGES])
    files = spark.read.format("binaryFile").load(str(tmp_path / "png" / "*.png"))
    scores = predict_udf(path, proba=True, batch_size=8)
    out = files.select("path", scores("content").alias("p")).select("path", "p.*").toPandas()
    out["name"] = [os.path.basename(p) for p in out["path"]]
    out = out.sort_values("name")
    assert list(out["name"]) == [os.path.basename(p) for p in paths]
    expected = clf.predict_proba(paths)
    got = out[["proba_even", "proba_odd"]].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert list(out["prediction"]) == list(clf.classes_[expected.argmax(axis=1)])
    # a string column of image paths scores the same files
    named = spark.createDataFrame([(p,) for p in paths], "path string").repartition(2)
    labels = named.select("path", predict_udf(path)("path").alias("label")).toPandas()
    by_path = dict(zip(labels["path"], labels["label"]))
    assert [by_path[p] for p in paths] == list(clf.predict(paths))


def test_the_feature_cache_is_off_in_the_workers(spark, text_model, texts):
    """Observed in the workers: a worker that scored (its Spark ModelCache holds our
    predict function) has no cache entry; a plain predict there does fill the cache."""
    from pyspark.sql.functions import pandas_udf

    _, path = text_model
    X = texts[0]
    df = spark.createDataFrame([(t,) for t in X], "text string").repartition(2)
    df.select(predict_udf(path)("text")).collect()

    @pandas_udf("pid long, scored long, entries long, after long")
    def probe(col: pd.Series) -> pd.DataFrame:
        from pyspark.ml.model_cache import ModelCache

        import sktransfer as skt

        entries = skt.cache_info()["entries"]
        skt.load(path).predict(list(col[:3]))  # the cache's default state: on
        row = [os.getpid(), len(ModelCache._models), entries, skt.cache_info()["entries"]]
        return pd.DataFrame([row] * len(col), columns=["pid", "scored", "entries", "after"])

    many = spark.createDataFrame([(t,) for t in X], "text string").repartition(8)
    seen = many.select(probe("text").alias("s")).select("s.*").toPandas().drop_duplicates("pid")
    scored = seen[seen["scored"] > 0]
    assert len(scored) >= 1, seen  # the probe reached a worker that had scored
    assert (scored["entries"] == 0).all(), seen
    assert (seen["after"] > 0).all(), seen  # the probe can see entries


def test_predict_fn_loads_once_and_scores_arrays(text_model, texts):
    """What each worker runs, here: one load, then any number of batches, cache untouched."""
    clf, path = text_model
    X = texts[0]
    sktransfer.clear_cache()
    predict = make_predict_fn(path, proba=True)()
    first, second = predict(np.asarray(X[:50], dtype=object)), predict(np.asarray(X[50:]))
    assert sktransfer.cache_info()["entries"] == 0
    got = np.vstack([np.column_stack([b["proba_neg"], b["proba_pos"]]) for b in (first, second)])
    np.testing.assert_allclose(got, clf.predict_proba(X), rtol=1e-5, atol=1e-6)
    assert [*first["prediction"], *second["prediction"]] == list(clf.predict(X))
    labels = make_predict_fn(path)()(np.asarray(X))
    assert labels.dtype == object and list(labels) == list(clf.predict(X))
    with pytest.raises(TypeError, match="Sample 1: .* within this predict_udf batch of 3 rows"):
        predict(np.asarray(["good", None, "bad"], dtype=object))  # a null in the column


def test_return_types_follow_the_model(text_model, tiny_bert_dir, texts, tmp_path):
    from pyspark.sql import types

    from sktransfer import PretrainedTextClassifier, PretrainedTextRegressor

    clf, _ = text_model
    assert return_type(clf) == types.StringType()
    assert return_type(clf, proba=True).names == ["prediction", "proba_neg", "proba_pos"]
    X, y = texts
    ints = PretrainedTextClassifier(tiny_bert_dir).fit(X[:20], (y[:20] == "pos").astype(int))
    assert return_type(ints) == types.LongType()
    assert return_type(ints, proba=True).fields[0].dataType == types.LongType()
    multi = np.c_[y[:20] == "pos", y[:20] == "neg"].astype(int)
    ml = PretrainedTextClassifier(tiny_bert_dir).fit(X[:20], multi)
    assert return_type(ml).names == [f"prediction_{c}" for c in ml.classes_]
    assert return_type(ml, proba=True).fields[0].dataType == types.StringType()
    path = sktransfer.save(ml, tmp_path / "ml.skt")
    items = np.asarray(X[:20], dtype=object)
    indicators = make_predict_fn(path)()(items)
    assert np.array_equal(np.column_stack(list(indicators.values())), ml.predict(X[:20]))
    chosen = make_predict_fn(path, proba=True)()(items)["prediction"]
    expected = [";".join(str(c) for c, p in zip(ml.classes_, row) if p >= 0.5)
                for row in ml.predict_proba(X[:20])]  # fmt: skip
    assert list(chosen) == expected
    reg = PretrainedTextRegressor(tiny_bert_dir).fit(X[:20], np.c_[np.arange(20.0), -np.ones(20)])
    struct = return_type(reg)
    assert struct.names == ["prediction_0", "prediction_1"]
    assert all(f.dataType == types.DoubleType() for f in struct.fields)
    with pytest.raises(ValueError, match="needs a classifier"):
        return_type(reg, proba=True)


def test_bad_arguments_fail_before_any_job(text_model, tmp_path):
    _, path = text_model
    with pytest.raises(ValueError, match="batch_size"):
        predict_udf(path, batch_size=0)
    with pytest.raises((FileNotFoundError, ValueError), match="missing.skt"):
        predict_udf(tmp_path / "missing.skt")
    not_model = tmp_path / "notes.skt"
    not_model.write_bytes(io.BytesIO(b"not a zip").getvalue())
    with pytest.raises(ValueError, match="notes.skt"):
        predict_udf(not_model)
