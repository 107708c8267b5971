"""The layer contract in pyproject.toml (``[tool.importlinter]``) holds, and catches a break.

import-linter reads every import of the package, module-level and inside functions alike:
an upward one (a stage importing a stage above it) fails the contract, and so this test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")

pytestmark = pytest.mark.skipif(
    not os.path.exists(LINT), reason="import-linter is not installed (pip install -e .[dev])"
)


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # this tree's sktransfer, not the install
    return subprocess.run(
        [LINT, "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_package_keeps_its_layers():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    "module, upward",
    [
        ("inputs/containers.py", "sktransfer.cli.errors"),  # the lowest stage, the top one
        ("cache/lru.py", "sktransfer.training.loop"),
        ("runtime/microbatch.py", "sktransfer._estimator.params"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path, module, upward):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "sktransfer", tree / "sktransfer",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    path = tree / "sktransfer" / module
    path.write_text(path.read_text() + f"\n\ndef _late():\n    import {upward}  # noqa\n")
    proc = _lint(tree)
    assert proc.returncode != 0
    assert "BROKEN" in proc.stdout and upward in proc.stdout
