"""Scoring throughput per core in Spark, Ray and Dask against ``predict`` in this process.

Issue 27, item 4. One model, one core per engine, the same texts:

* the model: the packaged text default (all-MiniLM-L6-v2), frozen, fitted on 200 Rotten
  Tomatoes training texts and saved (``store_backbone="reference"``); every candidate
  loads that file; the scored items are the first N test texts (quick: 384, full: 2,000);
* in process: ``est.predict(texts)`` on 1 torch thread, the feature cache off;
* Spark: ``predict_udf`` on a ``local[1]`` session (one Python worker,
  ``OMP_NUM_THREADS=1``), warmed up first (the worker has imported torch and holds the
  model: Spark's ModelCache); each call is one job, collected;
* Ray: ``map_batches(Predictor, concurrency=1)`` on ``ray.init(num_cpus=1)``; every call
  is a new execution, so it starts a new actor which loads the model: the end-to-end rate
  includes that; the steady rate is measured from inside the actor (items after the first
  batch / time from the first batch's end to the last one's), what a long job gets;
* Ray, naive: ``map_batches`` with a function that loads the model per batch (issue 27's
  0.47x; tasks, so no actor start);
* Dask: ``predict_dask`` on ``LocalCluster(n_workers=1, threads_per_worker=1)``, warmed up;
  each call scatters the model to the worker.

Batches of 128 items in every engine. The candidates are timed interleaved
(``time_interleaved``): drift on a shared machine hits all alike. The workers' torch thread
counts are read from inside them and recorded in the notes. Predictions of each engine
are compared with the in-process ones (``*_agreement``).
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
BATCH = 128
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
def _spark(path, texts):
    """``(call, threads, stop)``: ``call()`` scores ``texts`` in one Spark job."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ImportError("Spark needs Java 17+")
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    from sktransfer.spark import predict_udf

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
    label = predict_udf(path, batch_size=BATCH)

    def call():
        return [row[0] for row in df.select(label("text")).collect()]

    @pandas_udf("long")
    def threads(col):
        import pandas as pd
        import torch

        return pd.Series([torch.get_num_threads()] * len(col))

    n_threads = df.limit(1).select(threads("text")).collect()[0][0]
    return call, n_threads, spark.stop


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
        rate, start_s = _steady_rate(out, start)
        if data is ds:
            state["steady"].append(rate)
            state["start"].append(start_s)
        state["threads"] = int(out["threads"].iloc[0])
        return list(out["prediction"])

    def naive_call():
        out = ds.map_batches(
            _naive, fn_kwargs={"path": path}, batch_size=BATCH, batch_format="pandas"
        ).to_pandas()
        return list(out["prediction"])

    call(ds.limit(BATCH))  # warm-up: Ray Data's first execution (each call starts an actor)
    return call, naive_call, state, ray.shutdown


def _steady_rate(out, start):
    """``(items/s after the first batch, seconds from the call to the first batch's start)``."""
    batches = out.groupby(["t_start", "t_end"]).size().reset_index(name="n")
    batches = batches.sort_values("t_end")
    first = batches.iloc[0]
    rest = int(batches["n"].iloc[1:].sum())
    span = float(batches["t_end"].iloc[-1] - first["t_end"])
    rate = rest / span if rest and span > 0 else float("nan")
    return rate, float(first["t_start"] - start)


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
def _ray_steady(state, base_rate):
    rates = [r for r in state["steady"] if r == r]  # (NaN: a single batch)
    steady = float(np.median(rates)) if rates else None
    note = "inside the actor: items after the first batch / time from its end to the last's"
    return [
        Result(NAME, "ray_steady_vs_in_process", steady / base_rate if steady else None, "x",
               GOAL, notes=note),
        Result(NAME, "ray_steady_rate", steady, "items/s"),
        Result(NAME, "ray_actor_start", float(np.median(state["start"])), "s",
               notes="from map_batches to the first batch's start: actor, torch, model"),
    ]  # fmt: skip


def _rows(t, preds, reference, n, notes):
    rows = []
    base = t["in_process"]["median_s"]
    rows.append(Result(NAME, "in_process_rate", n / base, "items/s", notes=notes["in_process"]))
    for name in ("spark", "ray", "ray_naive", "dask"):
        if name not in t:
            rows.append(Result(NAME, f"{name}_vs_in_process", None, notes=notes.get(name, "")))
            continue
        rate = n / t[name]["median_s"]
        goal = None if name in ("ray", "ray_naive") else GOAL
        rows.append(Result(NAME, f"{name}_vs_in_process", base / t[name]["median_s"], "x",
                           goal, notes=notes[name]))  # fmt: skip
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

        candidates["in_process"] = record("in_process", in_process)
        notes["in_process"] = f"{n} texts, MiniLM frozen, est.predict, 1 torch thread"
        try:
            try:
                call, threads, stop = _spark(path, texts)
                stops.append(stop)
                call()  # warm-up: the worker imports torch and loads the model once
                candidates["spark"] = record("spark", call)
                notes["spark"] = f"local[1], predict_udf batch {BATCH}, worker threads {threads}"
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
    if "ray" in candidates:
        notes["ray"] = (
            f"map_batches(Predictor, concurrency=1), batch {BATCH}, actor threads "
            f"{ray_state['threads']}; includes the actor's start"
        )
    rows += _rows(t, preds, reference, n, notes)
    if "ray" in candidates:
        rows += _ray_steady(ray_state, n / t["in_process"]["median_s"])
    rows.append(Result(NAME, "timed_section_duration", elapsed, "s"))
    return rows
