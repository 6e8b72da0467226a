"""Row-level validation: every bad row is reported by number and reason, never dropped silently.

A `RowReport` collects the problems of one input. In strict mode the first problem raises `BadRowError`;
otherwise the row is dropped and counted, and `summary()` says how many rows were dropped and why.
Row numbers are 1-based and count within each file: the line number for JSONL files, the data row (header
excluded; the line number - 1 when no cell spans lines) for CSV, and the index + 1 for JSON arrays, Parquet files
and hub data sets. Every dropped row is also written to `dropped_rows.jsonl` next to the output (`write_dropped`).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.config import UserError


class DataError(UserError):
    """A problem with input data (a file, a hub data set or one of its rows)."""


class MissingColumnsError(DataError):
    """The input lacks columns the chosen format needs."""


class BadRowError(DataError):
    """A bad row in --strict mode."""


class DataSourceError(DataError):
    """An input that cannot be read at all (missing file, unknown extension, hub set unreachable)."""


class NoRowsLeftError(DataError):
    """Every row of an input was bad (or it was empty)."""


class InvalidRow:
    """Placeholder a reader puts where it could not parse a row, so later row numbers stay right."""

    def __init__(self, kind: str, detail: str):
        self.kind, self.detail = kind, detail


DROPPED_FILE = "dropped_rows.jsonl"  # every dropped row, next to the output of `build` and of `convert`


@dataclass
class RowProblem:
    row: int  # within `file`
    kind: str  # short and stable, for counting: "empty", "not a string", "too long", ...
    detail: str  # the full sentence shown to the user
    file: str = ""
    field: str | None = None  # the column at fault, where one is


@dataclass
class RowReport:
    source: str
    strict: bool = False
    total: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    # (number of its first row among the rows read, path) of each file of a glob, whose rows are concatenated
    files: list[tuple[int, str]] = field(default_factory=list)

    def locate(self, row: int) -> tuple[str, int]:
        """(file, row within it) of a row number counted over all files read."""
        for first, path in reversed(self.files):
            if row >= first:
                return path, row - first + 1
        return self.source, row

    def reject(self, row: int, kind: str, detail: str, field: str | None = None) -> None:
        """Record a bad row (or, when strict, fail right away)."""
        file, row = self.locate(row)
        if self.strict:
            raise BadRowError(
                f"{file}: row {row}: {detail}. Fix or remove the row, or run without --strict to drop "
                "bad rows with a summary."
            )
        self.problems.append(RowProblem(row, kind, detail, file, field))

    @property
    def dropped(self) -> int:
        return len({(p.file, p.row) for p in self.problems})

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems).most_common())

    def summary(self, examples: int = 3) -> str:
        kept = self.total - self.dropped
        if not self.problems:
            return f"{self.source}: kept all {self.total} rows."
        parts = []
        for kind, n in self.counts().items():
            rows = [self._where(p) for p in self.problems if p.kind == kind][:examples]
            parts.append(f"{n} {kind} (rows {', '.join(rows)}{', ...' if n > examples else ''})")
        return (
            f"{self.source}: kept {kept} of {self.total} rows; dropped {self.dropped}: "
            + "; ".join(parts)
            + "."
        )

    def _where(self, problem: RowProblem) -> str:
        return f"{Path(problem.file).name}:{problem.row}" if len(self.files) > 1 else str(problem.row)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "total": self.total,
            "kept": self.total - self.dropped,
            "dropped": self.dropped,
            "counts": self.counts(),
            "summary": self.summary(),
        }  # the rows themselves are in DROPPED_FILE, which can be long


def dropped_lines(reports) -> list[str]:
    """Every problem of `reports` as a JSON line: the content of DROPPED_FILE."""
    return [
        json.dumps({"source": p.file, "row": p.row, "reason": p.kind, "field": p.field, "detail": p.detail},
                   ensure_ascii=False) + "\n"
        for report in reports for p in report.problems
    ]  # fmt: skip


def write_dropped(path: Path, reports) -> int:
    """Write every problem of `reports` to `path` (an empty file when there are none, so an old list is never left
    beside new data); returns how many lines it wrote."""
    lines = dropped_lines(reports)
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def dropped_note(n: int, path) -> str:
    """What the printed summary says about DROPPED_FILE (one entry per problem: a ranked row can have two)."""
    if not n:
        return f"No rows dropped ({path} is empty)."
    return f"Every dropped row is listed in {path} ({n} {'entry' if n == 1 else 'entries'})."


def require_columns(found: Iterable[str], expected: Sequence[str], source: str, fmt: str) -> None:
    """Raise MissingColumnsError naming what was expected, what was found and how to map it."""
    found = list(found)
    missing = [c for c in expected if c not in found]
    if missing:
        example = ",".join(f"{c}=<your column>" for c in missing)
        raise MissingColumnsError(
            f"{source}: format '{fmt}' needs column(s) {', '.join(expected)}; missing {', '.join(missing)}. "
            f"Found columns: {', '.join(found) or '(none)'}. Rename them in the data or pass "
            f"--column_mapping '{example}'."
        )


def check_text_fields(report: RowReport, row: int, record: dict, fields: Sequence[str]) -> bool:
    """Each field must be a non-empty string; reports the first that is not and returns False."""
    for name in fields:
        value = record.get(name)
        if not isinstance(value, str):
            report.reject(
                row,
                "not a string",
                f"field '{name}' is {type(value).__name__} {value!r:.40}, not a string",
                name,
            )
            return False
        if not value.strip():
            report.reject(row, "empty", f"field '{name}' is empty", name)
            return False
    return True


def check_pair(report: RowReport, row: int, pair: dict, max_chars: int, seen: dict) -> bool:
    """Checks of a canonical {prompt, chosen, rejected} row; `seen` maps pairs to their first row number."""
    if not check_text_fields(report, row, pair, ("prompt", "chosen", "rejected")):
        return False
    if pair["chosen"].strip() == pair["rejected"].strip():
        report.reject(row, "chosen equals rejected", "chosen and rejected are the same text (no preference)")
        return False
    longest = len(pair["prompt"]) + max(len(pair["chosen"]), len(pair["rejected"]))
    if longest > max_chars:
        report.reject(
            row, "too long", f"prompt+response has {longest} characters, over max_chars={max_chars}"
        )
        return False
    key = (pair["prompt"], pair["chosen"], pair["rejected"])
    if key in seen:
        file, first = report.locate(seen[key])
        where = f"row {first}" + (f" of {file}" if len(report.files) > 1 else "")
        report.reject(row, "duplicate pair", f"same prompt/chosen/rejected as {where}")
        return False
    seen[key] = row
    return True


def check_numbers(report: RowReport, row: int, name: str, values: Sequence) -> bool:
    """Each value a finite int or float (not a bool or a string); reports the first that is not. NaN compares
    false with everything, so it would invent an order of the answers, and a NaN/Inf margin reaches the loss."""
    for i, value in enumerate(values):
        at = f"field '{name}'" + (f" item {i}" if len(values) > 1 else "")
        if not isinstance(value, int | float) or isinstance(value, bool):
            report.reject(
                row, "not a number", f"{at} is {type(value).__name__} {value!r:.40}, not a number", name
            )
            return False
        if not math.isfinite(value):
            report.reject(row, "not finite", f"{at} is {value}; it must be a finite number", name)
            return False
    return True


def finish(report: RowReport, rows: list, hint: str = "") -> list:
    """No rows left is an error (training on nothing would fail later, less clearly)."""
    if not rows:
        reason = f" ({report.summary()})" if report.problems else ""
        raise NoRowsLeftError(f"{report.source}: no usable rows{reason}.{(' ' + hint) if hint else ''}")
    return rows
