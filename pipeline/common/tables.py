"""Markdown tables, the one builder behind the report, the trackers' text tables and the sample tables."""

from __future__ import annotations


def cell(text: str, limit: int = 220) -> str:
    """Markdown-table-safe text: one line, pipes escaped, long answers cut."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "*(empty)*"


def markdown_table(columns: list[str], rows: list[list]) -> list[str]:
    """A markdown table of plain values (numbers with 3 decimals); the trackers' text form of a table too."""
    cells = [[number(v) if isinstance(v, float) else cell(v) for v in row] for row in rows]
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(r) + " |" for r in cells),
    ]


def number(value) -> str:
    """A number as the tables print it: 3 decimals, n/a for a missing value."""
    return "n/a" if value is None else f"{value:.3f}"
