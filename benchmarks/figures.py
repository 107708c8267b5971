"""Figures in prose that come from the recorded results, never typed in.

A page (README.md, docs/*.md) writes a measured number as a marker::

    corrupt / clean: <!-- fig cli:corrupt_vs_clean_time_ratio .2f -->0.92<!-- /fig -->x

``python -m benchmarks.report`` (run after every benchmark run) rewrites the text between
the markers from ``benchmarks/results/<benchmark>.json`` (``<folder>/<benchmark>:<metric>``
for a sub-folder such as ``gpu/``); the format after the key is a Python format spec
(default ``.3g``).
``tests/test_docs.py`` fails when a page is out of sync with the results, and when a page
holds a figure outside a marker (:func:`unmarked_figures`), so a number a reader sees was
produced by ``benchmarks/`` (or is a design constant listed in :data:`CONSTANTS`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks._harness import RESULTS_DIR

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(
    r"<!-- fig (?P<key>[\w./:-]+)(?: (?P<fmt>[^ >]+))? -->(?P<value>.*?)<!-- /fig -->"
)
#: a number with a unit of time, size, speed or ratio (what a measurement looks like)
FIGURE = re.compile(
    r"(?<![\w.])[~≈]?\d[\d,]*(?:\.\d+)?\s?"
    r"(?:x|×|%|ms|s|MB|MiB|GB|GiB|KB|pt|img/s|texts/s|items/s|min|minutes|seconds|hours)(?![\w/])"
)
#: design constants and facts, not measurements: limits the code enforces, input sizes a
#: benchmark is configured with, sizes of the packaged weights
CONSTANTS = frozenset(
    {
        "64 MiB",  # the manifest cap (io/archive.py); the CLI's cheap-count limit
        "1 MiB",  # the safe loader's streaming piece
        "256 MiB",  # total inflation cap of a safe file
        "16x",  # inflation cap relative to the compressed size
        "24 hours",  # age after which an uncheckable temp file is stale
        "3 GiB",  # the zip-bomb member bench_load_safety builds
        "2 GiB",  # the feature cache's default memory bound
        "10 minutes",  # the quick benchmark run's goal
        "5 minutes",  # the demo's time budget
        "1.5%",  # the share of corrupt images bench_cli injects
        "19 MB",  # the packaged EfficientNet-Lite0 weights
        "88 MB",  # the packaged MiniLM weights
        "90 MB",
        "20-90 MB",
    }
)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def results_table(results_dir: str | Path | None = None) -> dict[str, float]:
    """``{"bench:metric": value}`` (and ``"folder/bench:metric"`` for sub-folders)."""
    root = Path(results_dir or RESULTS_DIR)
    table = {}
    for path in sorted(root.glob("*.json")) + sorted(root.glob("*/*.json")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(payload, dict) or "results" not in payload:
            continue
        prefix = "" if path.parent == root else f"{path.parent.name}/"
        for row in payload["results"]:
            table[f"{prefix}{row['benchmark']}:{row['metric']}"] = row["value"]
    return table


def render(value, fmt: str | None) -> str:
    """``value`` by the format spec ``fmt`` (default ``.3g``); ``n/a`` when not recorded."""
    return "n/a" if value is None else f"{float(value):{fmt or '.3g'}}"


def fill(text: str, table: dict[str, float]) -> str:
    """``text`` with every marker's value rewritten from ``table`` (KeyError: unknown key)."""

    def one(m):
        key = m.group("key")
        if key not in table:
            raise KeyError(f"no recorded result {key!r} for a figure marker")
        value = render(table[key], m.group("fmt"))
        fmt = f" {m.group('fmt')}" if m.group("fmt") else ""
        return f"<!-- fig {key}{fmt} -->{value}<!-- /fig -->"

    return MARKER.sub(one, text)


def unmarked_figures(text: str) -> list[str]:
    """Figures outside code blocks, markers and generated blocks that are not constants."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!-- BEGIN GENERATED.*?<!-- END GENERATED[^>]*-->", "", text, flags=re.S)
    text = MARKER.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code: parameter values, commands
    return [f for f in FIGURE.findall(text) if f.strip("~≈") not in CONSTANTS]


def fill_pages(results_dir: str | Path | None = None) -> list[Path]:
    """Rewrite the markers of every page; returns the pages that changed."""
    table = results_table(results_dir)
    changed = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = fill(text, table)
        if new != text:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed
