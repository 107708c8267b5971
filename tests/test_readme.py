"""The README's code blocks run as tests (with the real packaged weights)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(_blocks()) >= 3


@pytest.mark.packaged
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_readme_block_runs(index, capsys):
    namespace = {}
    exec(compile(_blocks()[index], f"README.md block {index}", "exec"), namespace)
    out = capsys.readouterr().out
    if index == 0:
        accuracy = float(re.search(r"accuracy: ([0-9.]+)", out).group(1))
        assert accuracy > 0.9, out
    if index == 1:
        clf = namespace["clf"]
        assert list(clf.predict(["what a wonderful story", "tedious and badly acted"])) == [
            "pos",
            "neg",
        ]
    if index == 2:
        assert namespace["reg"].predict(["a film"]).shape == (1,)
        assert namespace["clf"].predict(["a film"]).shape == (1, 2)
    if index == 3:
        assert namespace["search"].get_params()["estimator__max_epochs"] == 5
