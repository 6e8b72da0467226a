"""Rankings made in other tools (`make rank ROUND=n FROM=file`), read into ranked rows keyed by prompt id.

Two shapes:
- `.jsonl`, the ranked format: `{"id": ..., "ranks": [...]}` or `{"id": ..., "scores": [...]}`, one per prompt and
  rater (`rater` optional; several raters may rank one prompt, each in their own row);
- `.csv` with a header and one row per ranked answer: `id,answer,rank[,rater]`, where `answer` is the answer's
  0-based position in the comparison's `responses` and `rank` 1 = best (ties share a rank).
Every row is checked against the round's comparisons (`check_rankings`): unknown ids, answers out of range and a
prompt ranked twice by one rater are listed by row, and nothing is imported unless every row is right.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.common.config import UserError
from pipeline.rounds.comparisons import check_rankings, fail, read_jsonl

CSV_COLUMNS = ("id", "answer", "rank")


def read_rankings_file(path: Path, comparisons: dict[str, dict], comparisons_path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        rows = read_csv_rankings(path, comparisons, comparisons_path)
    else:
        rows = read_jsonl(path, "Rankings file")
    for row in rows:
        row.setdefault("rater", f"file:{path.name}")
    return check_rankings(path, rows, comparisons, comparisons_path)


def read_csv_rankings(path: Path, comparisons: dict[str, dict], comparisons_path: Path) -> list[dict]:
    """CSV rows (one per answer) grouped into one ranked row per (id, rater), each remembering its first line."""
    if not path.is_file():
        raise UserError(f"Rankings file {path} does not exist.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(
                f"{path}: the header lacks {missing}; a rankings CSV has the columns id,answer,rank[,rater] "
                "(answer: the 0-based position in the comparison's responses; rank: 1 = best)."
            )
        lines = list(reader)
    if not lines:
        raise UserError(f"Rankings file {path} holds no rows.")
    problems, groups = [], {}
    for number, line in enumerate(lines, 2):  # line 1 is the header
        where = f"row {number}"
        prompt_id = (line.get("id") or "").strip()
        comparison = comparisons.get(prompt_id)
        if comparison is None:
            problems.append(f"{where}: id {prompt_id!r} is not among the comparisons in {comparisons_path}")
            continue
        k = len(comparison["responses"])
        answer, rank = as_int(line.get("answer")), as_int(line.get("rank"))
        if answer is None or not 0 <= answer < k:
            problems.append(
                f"{where}: answer {line.get('answer')!r} out of range; {prompt_id} has answers 0..{k - 1}"
            )
            continue
        if rank is None or not 1 <= rank <= k:
            problems.append(f"{where}: rank {line.get('rank')!r} is not a whole number from 1 (best) to {k}")
            continue
        rater = (line.get("rater") or "").strip() or f"file:{path.name}"
        group = groups.setdefault(
            (prompt_id, rater), {"id": prompt_id, "rater": rater, "_row": number, "ranks": {}}
        )
        if answer in group["ranks"]:
            problems.append(f"{where}: answer {answer} of {prompt_id} is ranked twice by {rater} (first in row "
                            f"{group['ranks'][answer][1]})")  # fmt: skip
            continue
        group["ranks"][answer] = (rank, number)
    for (prompt_id, rater), group in groups.items():
        k = len(comparisons[prompt_id]["responses"])
        unranked = [i for i in range(k) if i not in group["ranks"]]
        if unranked:
            problems.append(f"row {group['_row']}: {prompt_id} ({rater}) has no rank for answers {unranked}")
    fail(path, problems, "Nothing was imported; fix those rows and rank again.")
    return [
        {
            "id": g["id"],
            "rater": g["rater"],
            "_row": g["_row"],
            "ranks": [g["ranks"][i][0] for i in range(len(g["ranks"]))],
        }  # fmt: skip
        for g in groups.values()
    ]


def as_int(text) -> int | None:
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return int(value) if value.is_integer() else None
