"""One huge text line (issue 23, invariant 7): what ``sktransfer predict`` costs for it.

A frozen text classifier on the packaged all-MiniLM-L6-v2 is saved with
:func:`sktransfer.save`; ``sktransfer predict`` then scores a file of one short line and a
file of one 30 MB line, each in a fresh process, and reports the process's peak RSS and
wall time. Before texts were clipped before tokenising, the long line cost 5.3 GB and 94 s
(the tokenizer works on the whole string and truncates afterwards). Goal: the long line's
peak at most 300 MB above the short one's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks._harness import Result

NAME = "long_line"
LINE_MB = 30

_CHILD = """
import json, resource, sys, time
from sktransfer.cli import main
start = time.perf_counter()
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"status": status, "seconds": seconds, "peak_mb": peak}), file=sys.stderr)
"""


def _model(tmp):
    import sktransfer
    from sktransfer import PretrainedTextClassifier

    texts = ["a gripping, beautiful film", "dull and far too long", "I loved it", "a waste"] * 3
    labels = ["pos", "neg", "pos", "neg"] * 3
    clf = PretrainedTextClassifier(random_state=0).fit(texts, labels)
    return sktransfer.save(clf, os.path.join(tmp, "model.skt"))


def _predict(model, lines_file, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "predict", model, lines_file, "-o", out],
        capture_output=True, text=True, timeout=1800, env=env,
    )  # fmt: skip
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    if report["status"] not in (0, None):
        raise RuntimeError(f"predict exited {report['status']}: {proc.stderr[-2000:]}")
    return report


def run(quick: bool) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        model = str(_model(tmp))
        short = os.path.join(tmp, "short.txt")
        with open(short, "w") as fh:
            fh.write("a gripping, beautiful film\n")
        long = os.path.join(tmp, "long.txt")
        with open(long, "w") as fh:
            word = "wonderful "
            fh.write(word * (LINE_MB * 2**20 // len(word)) + "\n")
        rounds = 1 if quick else 3
        shorts, longs = [], []
        for r in range(rounds):
            shorts.append(_predict(model, short, os.path.join(tmp, f"s{r}.csv")))
            longs.append(_predict(model, long, os.path.join(tmp, f"l{r}.csv")))
        extra = min(x["peak_mb"] for x in longs) - min(x["peak_mb"] for x in shorts)
        slower = min(x["seconds"] for x in longs) - min(x["seconds"] for x in shorts)
    note = f"one {LINE_MB} MB line vs one short line, packaged MiniLM, frozen, {rounds} round(s)"
    return [
        Result(NAME, "long_line_extra_peak_rss", extra, "MB", goal="<= 300", notes=note),
        Result(NAME, "long_line_extra_seconds", slower, "s", notes="wall, fresh processes"),
    ]
