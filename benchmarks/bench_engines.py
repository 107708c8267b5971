"""Scoring throughput per core in Spark, Ray and Dask against ``predict`` in this process.

Issue 27, item 4. One model, one core per engine, the same texts:

* the model: the packaged text default (all-MiniLM-L6-v2), frozen, fitted on 200 Rotten
  Tomatoes training texts and saved (``store_backbone="reference"``); every candidate
  loads that file; the scored items are the first N test texts (quick: 384, full: 2,000);
* in process: ``est.predict(texts)`` on 1 torch thread, the feature cache off;
* Spark: ``predict_udf``'s predict function (``make_predict_fn``, in ``predict_batch_udf``,
  each batch stamped with its times) on a ``local[1]`` session (one Python worker,
  ``OMP_NUM_THREADS=1``), warmed up first; each call is one job, collected. Spark ends a
  Python worker idle for a minute, as it is between two interleaved calls here, so a call
  may include a worker's start: the steady rate, from inside the worker, is what a long
  job gets;
* Ray: ``map_batches(Predictor, concurrency=1)`` on ``ray.init(num_cpus=1)``; every call
  is a new execution, so it starts a new actor which loads the model: the end-to-end rate
  includes that; the steady rate is measured from inside the actor (items after the first
  batch / time from the first batch's end to the last one's), what a long job gets;
* Ray, naive: ``map_batches`` with a function that loads the model per batch (issue 27's
  0.47x; tasks, so no actor start);
* Dask: ``predict_dask`` on ``LocalCluster(n_workers=1, threads_per_worker=1)``, warmed up;
  each call scatters the model to the worker.

Batches of 256 items in every engine; ``in_process_batched`` calls ``predict`` on the same
batches in this process, so ``*_vs_in_process_batched`` is the engine's own cost, apart from
what a whole-list ``predict`` gains by sorting all the texts by length (less padding). The
candidates are timed interleaved (``time_interleaved``): drift on a shared machine hits all
alike. The workers' torch thread counts are read from inside them and recorded in the notes.
Predictions of each engine are compared with the in-process ones (``*_agreement``).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from benchmarks._harness import Result, limit_threads, time_interleaved
from benchmarks.bench_baselines import rotten_tomatoes_data
from sktransfer.ray import Predictor

NAME = "engines"
RANDOM_STATE = 0
N_TRAIN = 200
BATCH = 256  # items per model call in every engine (predict_udf's default)
#: texts scored per call, timed rounds
SIZES = {True: (384, 1), False: (2000, 3)}
GOAL = ">= 0.9"


def _model(tmp):
    import sktransfer
    from sktransfer.cache import config_context

    X_tr, y_tr, X_te, _ = rotten_tomatoes_data(RANDOM_STATE)
    with config_context(cache=False):
        clf = sktransfer.PretrainedTextClassifier(random_state=RANDOM_STATE)
        clf.fit(list(X_tr[:N_TRAIN]), y_tr[:N_TRAIN])
    path = sktransfer.save(clf, os.path.join(tmp, "minilm.skt"), store_backbone="reference")
    return path, list(X_te)


# ----------------------------------------------------------------------------------- engines
def _stamped(path):
    """``make_predict_fn`` of ``predict_udf`` (labels), each batch's output stamped with its
    start and end (wall clock) and the worker's torch thread count."""
    from sktransfer.spark import make_predict_fn

    make = make_predict_fn(path)

    def make_stamped():
        import torch

        predict = make()

        def stamped(items):
            t_start = time.time()
            labels = predict(items)
            n, t_end, threads = len(labels), time.time(), torch.get_num_threads()
            return {"prediction": labels, "t_start": np.full(n, t_start),
                    "t_end": np.full(n, t_end), "threads": np.full(n, threads)}  # fmt: skip

        return stamped

    return make_stamped


def _spark(est, path, texts):
    """``(call, state, stop)``: ``call()`` scores ``texts`` in one Spark job and records in
    ``state`` the worker's steady rate, its start time and its torch threads."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ImportError("Spark needs Java 17+")
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("bench-engines")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.OMP_NUM_THREADS", "1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.createDataFrame([(t,) for t in texts], "text string").coalesce(1).cache()
    df.count()
    from pyspark.sql.types import DoubleType, LongType, StructField, StructType

    from sktransfer.spark import return_type

    kind = StructType([StructField("prediction", return_type(est)),
                       StructField("t_start", DoubleType()), StructField("t_end", DoubleType()),
                       StructField("threads", LongType())])  # fmt: skip
    label = predict_batch_udf(_stamped(path), return_type=kind, batch_size=BATCH)
    state = {"steady": [], "start": [], "threads": None}

    def call(data=df):
        start = time.time()
        out = data.select(label("text").alias("p")).select("p.*").toPandas()
        if data is df:
            _record(state, out, start)
        return list(out["prediction"])

    call(df.limit(BATCH))  # warm-up: the worker imports torch and loads the model
    return call, state, spark.stop


def _ray(path, texts):
    """``(call, naive_call, state, stop)``; ``call()`` records in ``state`` the actor's steady
    rate, its start time and its torch threads."""
    import pandas as pd
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _Timed, _naive in workers
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False, object_store_memory=256 * 2**20)  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_pandas(pd.DataFrame({"text": texts})).materialize()
    state = {"steady": [], "start": [], "threads": None}

    def call(data=ds):
        start = time.time()
        out = data.map_batches(
            _Timed,
            fn_constructor_kwargs={"model_path": path, "column": "text"},
            concurrency=1,
            batch_size=BATCH,
            batch_format="pandas",
        ).to_pandas()
        if data is ds:
            _record(state, out, start)
        return list(out["prediction"])

    def naive_call():
        out = ds.map_batches(
            _naive, fn_kwargs={"path": path}, batch_size=BATCH, batch_format="pandas"
        ).to_pandas()
        return list(out["prediction"])

    call(ds.limit(BATCH))  # warm-up: Ray Data's first execution (each call starts an actor)
    return call, naive_call, state, ray.shutdown


def _record(state, out, start):
    """Add to ``state`` one call's steady rate (items after the first batch / time from the
    first batch's end to the last one's) and its start (call to the first batch's start)."""
    batches = out.groupby(["t_start", "t_end"]).size().reset_index(name="n")
    batches = batches.sort_values("t_end")
    first = batches.iloc[0]
    rest = int(batches["n"].iloc[1:].sum())
    span = float(batches["t_end"].iloc[-1] - first["t_end"])
    state["steady"].append(rest / span if rest and span > 0 else float("nan"))
    state["start"].append(float(first["t_start"] - start))
    state["threads"] = int(out["threads"].iloc[0])


def _naive(batch, path):
    """Issue 27's glue: a function that loads the model for every batch."""
    import sktransfer

    est = sktransfer.load(path, device="cpu")
    return {"prediction": est.predict(batch["text"].tolist())}


class _Timed(Predictor):
    """A Predictor stamping each batch with its start and end (wall clock) and the actor's
    torch thread count."""

    def __call__(self, batch):
        import torch

        t_start = time.time()
        out = super().__call__(batch)
        out["t_start"], out["t_end"] = t_start, time.time()
        out["threads"] = torch.get_num_threads()
        return out


def _dask(est, texts):
    import dask.bag as db
    from distributed import Client, LocalCluster

    from sktransfer.distributed import predict_dask

    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = Client(cluster)
    bag = db.from_sequence(texts, npartitions=math.ceil(len(texts) / BATCH))

    def call():
        return list(predict_dask(est, bag).compute())

    def threads():
        import torch

        return torch.get_num_threads()

    n_threads = next(iter(client.run(threads).values()))

    def stop():
        client.close()
        cluster.close()

    return call, n_threads, stop


# -------------------------------------------------------------------------------------- run
def _steady(name, state, base_rate, batched_rate, where, start_note):
    rates = [r for r in state["steady"] if r == r]  # (NaN: a single batch)
    steady = float(np.median(rates)) if rates else None
    note = f"inside the {where}: items after the first batch / time from its end to the last's"
    return [
        Result(NAME, f"{name}_steady_vs_in_process", steady / base_rate if steady else None,
               "x", GOAL, notes=note),
        Result(NAME, f"{name}_steady_vs_in_process_batched",
               steady / batched_rate if steady else None, "x"),
        Result(NAME, f"{name}_steady_rate", steady, "items/s"),
        Result(NAME, f"{name}_start", float(np.median(state["start"])), "s", notes=start_note),
    ]  # fmt: skip


def _rows(t, preds, reference, n, notes):
    rows = []
    base, batched = t["in_process"]["median_s"], t["in_process_batched"]["median_s"]
    rows.append(Result(NAME, "in_process_rate", n / base, "items/s", notes=notes["in_process"]))
    rows.append(Result(NAME, "in_process_batched_rate", n / batched, "items/s",
                       notes=f"est.predict on batches of {BATCH}, 1 torch thread"))  # fmt: skip
    for name in ("spark", "ray", "ray_naive", "dask"):
        if name not in t:
            rows.append(Result(NAME, f"{name}_vs_in_process", None, notes=notes.get(name, "")))
            continue
        rate = n / t[name]["median_s"]
        goal = GOAL if name == "dask" else None  # (Spark, Ray: the steady rate has it)
        rows.append(Result(NAME, f"{name}_vs_in_process", base / t[name]["median_s"], "x",
                           goal, notes=notes[name]))  # fmt: skip
        rows.append(Result(NAME, f"{name}_vs_in_process_batched", batched / t[name]["median_s"],
                           "x"))  # fmt: skip
        rows.append(Result(NAME, f"{name}_rate", rate, "items/s"))
        agree = float(np.mean(np.asarray(preds[name]) == reference))
        rows.append(Result(NAME, f"{name}_agreement", agree, "", ">= 0.999"))
    return rows


def run(quick: bool) -> list[Result]:
    import sktransfer
    from sktransfer.cache import config_context

    n, repeats = SIZES[quick]
    rows, stops, candidates, notes, preds = [], [], {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp, config_context(cache=False):
        path, test_texts = _model(tmp)
        texts = test_texts[:n]
        est = sktransfer.load(path, device="cpu")
        reference = np.asarray(est.predict(texts))

        def record(name, call):
            def fn():
                preds[name] = call()

            return fn

        def in_process():
            with limit_threads(1):
                return list(est.predict(texts))

        def in_process_batched():
            with limit_threads(1):
                return [p for i in range(0, n, BATCH) for p in est.predict(texts[i : i + BATCH])]

        candidates["in_process"] = record("in_process", in_process)
        candidates["in_process_batched"] = record("in_process_batched", in_process_batched)
        notes["in_process"] = f"{n} texts, MiniLM frozen, est.predict, 1 torch thread"
        try:
            try:
                call, spark_state, stop = _spark(est, path, texts)
                stops.append(stop)
                candidates["spark"] = record("spark", call)
            except ImportError as exc:
                notes["spark"] = f"skipped: {exc}"
            try:
                call, naive, ray_state, stop = _ray(path, texts)
                stops.append(stop)
                candidates["ray"] = record("ray", call)
                candidates["ray_naive"] = record("ray_naive", naive)
                notes["ray_naive"] = f"map_batches(function loading the model), batch {BATCH}"
            except ImportError as exc:
                notes["ray"] = notes["ray_naive"] = f"skipped: {exc}"
            try:
                call, threads, stop = _dask(est, texts)
                stops.append(stop)
                call()  # warm-up: the worker imports torch
                candidates["dask"] = record("dask", call)
                notes["dask"] = f"LocalCluster 1 worker x 1 thread, worker threads {threads}"
            except ImportError as exc:
                notes["dask"] = f"skipped: {exc}"
            start = time.perf_counter()
            t = time_interleaved(candidates, repeats=repeats, warmup=0)
            elapsed = time.perf_counter() - start
        finally:
            for stop in reversed(stops):
                stop()
    if "spark" in candidates:
        notes["spark"] = (
            f"local[1], predict_udf's predict function, batch {BATCH}, worker threads "
            f"{spark_state['threads']}; Spark ends a Python worker idle for 60 s (here: "
            "between two calls), so a call may include a new worker's start"
        )
    if "ray" in candidates:
        notes["ray"] = (
            f"map_batches(Predictor, concurrency=1), batch {BATCH}, actor threads "
            f"{ray_state['threads']}; includes the actor's start"
        )
    rows += _rows(t, preds, reference, n, notes)
    base, batched = n / t["in_process"]["median_s"], n / t["in_process_batched"]["median_s"]
    if "spark" in candidates:
        start_note = "from the job's start to the first batch's: a worker's start if any"
        rows += _steady("spark", spark_state, base, batched, "Python worker", start_note)
    if "ray" in candidates:
        start_note = "from map_batches to the first batch's start: actor, torch, model"
        rows += _steady("ray", ray_state, base, batched, "actor", start_note)
    rows.append(Result(NAME, "timed_section_duration", elapsed, "s"))
    return rows
