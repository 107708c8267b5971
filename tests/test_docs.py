"""Docs stay true: the generated page and the prose figures match the recorded results,
embedded images exist, help text holds no typed figure. (The code blocks run as scripts in
tests/test_doc_blocks.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


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


def test_strategies_table_is_generated_from_the_results():
    """docs/strategies.md's table is benchmarks/results/strategies.json's cells, not typed in.

    Out of sync? ``python -m benchmarks.strategies_table`` rewrites it.
    """
    import sys

    sys.path.insert(0, str(DOCS.parent))
    from benchmarks import strategies_table

    for page, make in (("strategies.md", strategies_table.block),
                       ("guide.md", strategies_table.guide_block)):  # fmt: skip
        text = (DOCS / page).read_text()
        start = text.index(strategies_table.BEGIN)
        stop = text.index(strategies_table.END) + len(strategies_table.END)
        assert text[start:stop] == make(), page


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_doc_images_exist(page):
    for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (DOCS / page).read_text()):
        assert (DOCS / target).is_file(), f"{page} embeds a missing image: {target}"


def _figures():
    import sys

    sys.path.insert(0, str(DOCS.parent))  # the repo root: `benchmarks` is not installed
    from benchmarks import figures

    return figures


@pytest.mark.parametrize("page", ["README.md"] + sorted(p.name for p in DOCS.glob("*.md")))
def test_prose_figures_come_from_the_results(page):
    """Every measured number in README/docs sits in a figure marker that matches the
    recorded results (``python -m benchmarks.report`` rewrites them); no hand-typed one."""
    figures = _figures()
    path = DOCS.parent / page if page == "README.md" else DOCS / page
    text = path.read_text()
    assert figures.unmarked_figures(text) == [], "type figures as <!-- fig bench:metric -->"
    assert figures.fill(text, figures.results_table()) == text, "run python -m benchmarks.report"


def test_the_figure_check_catches_typed_numbers():
    figures = _figures()
    assert figures.unmarked_figures("scoring took 3.2x longer, 41 ms, 12 MB, -0.5 pt") == [
        "3.2x", "41 ms", "12 MB", "0.5 pt",
    ]  # fmt: skip
    assert figures.unmarked_figures("`batch 64 at 1.5x`, ```\n9.9 s\n```, 64 MiB") == []
    marked = "<!-- fig cli:corrupt_vs_clean_time_ratio .2f -->9.99<!-- /fig -->x"
    table = {"cli:corrupt_vs_clean_time_ratio": 0.9229}
    assert figures.fill(marked, table) == marked.replace("9.99", "0.92")
    with pytest.raises(KeyError, match="no recorded result"):
        figures.fill(marked, {})


def test_cli_help_holds_no_typed_figures():
    """A measured number in ``--help`` went stale (2.8x there, 4.13x in the README): help
    text states no measurement; README.md quotes the benchmark's."""
    from sktransfer.cli.commands import build_parser

    figures = _figures()
    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:
        texts += [sub.format_help() for sub in action.choices.values()]
    assert len(texts) == 4  # sktransfer, predict, backbones, demo
    for text in texts:
        assert figures.unmarked_figures(" ".join(text.split())) == [], text
    assert figures.unmarked_figures("2 threads scored 2.8x slower than 1") == ["2.8x"]
