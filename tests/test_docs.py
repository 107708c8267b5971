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


def _generated_block(text):
    import sys

    sys.path.insert(0, str(DOCS.parent))  # the repo root: `benchmarks` is not installed
    from benchmarks import report

    start, end = text.find(report.BEGIN), text.find(report.END)
    assert start != -1 and end > start, "docs/benchmarks.md lost its generated block"
    return report, text[start : end + len(report.END)] + "\n"


def test_benchmarks_page_is_generated_from_the_results():
    """The numbers in docs/benchmarks.md are those of benchmarks/results/*.json, not typed in.

    Out of sync after a benchmark run? ``python -m benchmarks.report`` rewrites it.
    """
    page = DOCS / "benchmarks.md"
    text = page.read_text()
    report, block = _generated_block(text)
    assert text.count(report.BEGIN) == 1
    images = {}
    for label, _ in report.result_dirs():
        prefix = f"{label}_" if label else ""
        found = {name: DOCS / "img" / f"{prefix}{name}.png" for name in report.plots.PLOTS}
        images[label] = {name: path for name, path in found.items() if path.exists()}
    assert block == report.render(report.RESULTS_DIR, images, DOCS)


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_doc_images_exist(page):
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (DOCS / page).read_text()):
        assert (DOCS / target).is_file(), f"{page} embeds a missing image: {target}"
