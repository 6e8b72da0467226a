"""Markdown tables, the one builder behind the report, the trackers' text tables, the sample tables and the
benchmarks' tables."""

from __future__ import annotations

from collections.abc import Callable


def cell(text: str, limit: int = 220) -> str:
    """Markdown-table-safe text: one line, pipes escaped, long answers cut."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "*(empty)*"


def number(value) -> str:
    """A number as the tables print it: 3 decimals, n/a for a missing value."""
    return "n/a" if value is None else f"{value:.3f}"


def plain_value(value) -> str:
    """A table cell: a float with 3 decimals, anything else as markdown-safe text."""
    return number(value) if isinstance(value, float) else cell(value)


def markdown_table(
    columns: list[str], rows: list[list], format_value: Callable[[object], str] = plain_value
) -> list[str]:
    """The lines of a markdown table, each value written by `format_value`; the trackers' text form of a table too."""
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(format_value(v) for v in row) + " |" for row in rows),
    ]
