"""Every ```python block of the README and the docs runs as a script, as a reader would run it.

Each block is written to ``block.py`` in a fresh temporary directory and run there by this
interpreter in a process of its own: no names from an earlier block, no files from the
repository's working directory, ``if __name__ == "__main__":`` honoured (Dask's workers
re-import the script). A block that cannot run here says why in an HTML comment on the line
just above its fence, which the reader sees in the source and the test reports as a skip::

    <!-- doc-block: skip needs a CUDA device -->

Pages: README.md and docs/*.md, except docs/mlflow.md and docs/scale.md, whose blocks their
own tests run (tests/test_mlflow.py, tests/test_scale*.py). A few blocks also have their
printed claims checked (:data:`CHECKS`): the README's "transfer wins here" and "here it does
not" examples must keep saying what the prose says about them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: pages whose blocks other tests run
EXCLUDED = {"mlflow.md", "scale.md"}
BLOCK = re.compile(
    r"(?:<!--\s*doc-block:\s*(?P<directive>[^>]*?)\s*-->[ \t]*\n)?"  # an optional directive
    r"^```python[ \t]*\n(?P<code>.*?)^```",
    re.S | re.M,
)
TIMEOUT_S = 300  # a hang guard, not a speed test: each block takes seconds


def pages():
    docs = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in EXCLUDED)
    return [ROOT / "README.md", *docs]


def blocks(text):
    """``[(line, directive or None, code)]`` of a page's python blocks."""
    return [
        (text.count("\n", 0, m.start("code")), m.group("directive"), m.group("code"))
        for m in BLOCK.finditer(text)
    ]


def _params():
    params = []
    for page in pages():
        for line, directive, code in blocks(page.read_text(encoding="utf-8")):
            name = page.relative_to(ROOT).as_posix()
            # only a marker for selecting tests (-m "not packaged"): a block that builds an
            # estimator without a network of its own loads the packaged weights
            packaged = ("Pretrained" in code or "Embedder" in code) and "torch.nn." not in code
            marks = [pytest.mark.packaged] if packaged else []
            params.append(
                pytest.param(name, line, directive, code, id=f"{name}:{line}", marks=marks)
            )
    return params


def _accuracies(out):
    return {m["name"].strip(): float(m["acc"]) for m in re.finditer(
        r"^(?P<name>[^:\n]+): (?P<acc>[01]\.\d+)$", out, flags=re.M
    )}  # fmt: skip


def _transfer_wins(out):
    acc = _accuracies(out)
    assert acc["sktransfer"] > acc["baseline"], out


def _transfer_loses(out):
    acc = _accuracies(out)
    assert acc["sktransfer"] < acc["baseline"], out


def _number_below(limit, line):
    """The first number on printed line ``line`` is below ``limit``."""

    def check(out):
        value = re.search(r"[-+]?\d[\d.]*(?:e[-+]?\d+)?", out.strip().splitlines()[line])
        assert value and float(value.group()) < limit, out

    return check


#: a substring that identifies a block -> a check of what it printed
CHECKS = {
    # ONNX Runtime's probabilities equal the model's to float32 rounding
    "ort.InferenceSession": _number_below(1e-4, line=-1),
    # store_backbone="reference": a frozen text classifier's file is kilobytes, not 90 MB
    'print(os.path.getsize("model.skt"), "bytes")': _number_below(100_000, line=0),
    "load_rotten_tomatoes(": _transfer_wins,
    "TextureDescriptors()": _transfer_wins,
    "load_digits_split(": _transfer_loses,
    'cache_info()["backbone_forwards"]': lambda out: (
        out.strip().splitlines()[-1] == "True" or pytest.fail(out)
    ),
    'set_output(transform="pandas")': lambda out: "embedding0" in out or pytest.fail(out),
}


def _run(code, cwd):
    (cwd / "block.py").write_text(code, encoding="utf-8")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("PYTHONPATH", None)  # the installed package, as a reader has it
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "block.py"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize(("page", "line", "directive", "code"), _params())
def test_doc_block_runs_as_a_script(page, line, directive, code, tmp_path):
    if directive:
        kind, _, reason = directive.partition(" ")
        assert kind == "skip" and reason.strip(), f"{page}:{line}: unknown directive {directive!r}"
        pytest.skip(f"{page}:{line}: {reason.strip()}")
    proc, seconds = _run(code, tmp_path)
    assert proc.returncode == 0, (
        f"{page}:{line} failed (exit {proc.returncode}, {seconds:.1f} s)\n--- stdout\n"
        f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
    for marker, check in CHECKS.items():
        if marker in code:
            check(proc.stdout)


def test_every_check_has_its_block():
    codes = [p.values[3] for p in _params()]
    for marker in CHECKS:
        assert sum(marker in code for code in codes) == 1, f"no single block holds {marker!r}"


def test_blocks_and_directives_are_found(tmp_path):
    text = (
        "x\n```python\nprint(1)\n```\n<!-- doc-block: skip needs a GPU -->\n"
        "```python\nimport torch\n```\n```bash\nls\n```\n"
    )
    assert blocks(text) == [(2, None, "print(1)\n"), (6, "skip needs a GPU", "import torch\n")]
    proc, _ = _run('if __name__ == "__main__":\n    open("here.txt", "w").write("ok")\n', tmp_path)
    assert proc.returncode == 0 and (tmp_path / "here.txt").read_text() == "ok"
    assert sorted(p.name for p in pages())[0] == "README.md"
    assert not EXCLUDED & {p.name for p in pages()}
