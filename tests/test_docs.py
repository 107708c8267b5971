"""Code blocks in docs/*.md run as tests, in order, one namespace per page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["guide.md"]


@pytest.mark.packaged
@pytest.mark.parametrize("page", PAGES)
def test_doc_code_blocks_run(page, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page} block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "True" in out  # the grid search ran the backbone once per sample
    assert "embedding0" in out
