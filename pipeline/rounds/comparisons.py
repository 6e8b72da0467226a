"""A round's two files, and the checks that keep a ranking tied to the answers it ranks.

`comparisons.jsonl`, one line per prompt, written by `collect`:
    {"id": "p-1c0ffee12345", "prompt": ..., "responses": [K' distinct answers], "ended": [...], "round": n,
     "policy": {"path": ..., "fingerprint": ...}, "sampling": {...}, "seed": ...}
`ranked.jsonl`, one line per ranked prompt, the `ranked` format data_prep converts (`python -m data_prep convert
--format ranked`), keyed by the comparison's id:
    {"id": ..., "prompt": ..., "responses": [...], "scores": [...] or "ranks": [1 = best, ...], "rater": ...}
Whoever ranked (the labeler, a person, another tool's export), the file is the same, so
nothing after ranking cares who did it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from pipeline.common.config import UserError
from pipeline.common.outputs import same_model_path, write_file_atomically

COMPARISONS = "comparisons.jsonl"
RANKED = "ranked.jsonl"
MAX_LISTED = 8  # problems listed in one error; the rest are counted


def prompt_id(prompt: str) -> str:
    """A stable id for a prompt: the same text gets the same id in every round, on every machine."""
    return "p-" + hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:12]


def read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist.")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise UserError(f"{path}: row {number} is not JSON ({err}); fix or remove the line.") from None
        if not isinstance(row, dict):
            raise UserError(
                f"{path}: row {number} is not a JSON object; each line must be one {{...}} record."
            )
        rows.append({**row, "_row": number})
    if not rows:
        raise UserError(f"{what} {path} holds no rows.")
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """All rows at once, renamed into place: a reader finds the old file or the new one, never half of one."""
    write_file_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def fail(path: Path, problems: list[str], fix: str) -> None:
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise UserError(f"{path}: {listed}{more}. {fix}")


def read_comparisons(path: Path, round_number: int, policy_path: str) -> dict[str, dict]:
    """The round's comparisons by id, each checked: the fields are there, the id is the prompt's, the answers are
    at least two distinct texts, and the round and policy are this recipe's round n (not a folder from elsewhere)."""
    rows = read_jsonl(path, "Comparisons file")
    problems, by_id = [], {}
    for row in rows:
        where = f"row {row['_row']}"
        missing = [k for k in ("id", "prompt", "responses", "round", "policy") if k not in row]
        if missing:
            problems.append(f"{where} lacks {missing}")
            continue
        if row["id"] != prompt_id(row["prompt"]):
            problems.append(
                f"{where}: id {row['id']!r} is not its prompt's id ({prompt_id(row['prompt'])!r})"
            )
        elif row["id"] in by_id:
            problems.append(f"{where}: id {row['id']!r} repeats row {by_id[row['id']]['_row']}")
        responses = row["responses"]
        if not isinstance(responses, list) or len(set(responses)) != len(responses) or len(responses) < 2:
            problems.append(f"{where}: 'responses' must be a list of at least 2 distinct answers")
        by_id.setdefault(row["id"], row)
    fail(path, problems, "The file is written by `make collect`; collect the round again (delete the file).")
    other = next((r for r in rows if r["round"] != round_number or not same_model_path(
        str(r["policy"].get("path", "")), policy_path)), None)  # fmt: skip
    if other is not None:
        raise UserError(
            f"{path} holds round {other['round']}'s answers from {other['policy'].get('path')}, but round "
            f"{round_number} of this recipe collects from {policy_path}: the folder belongs to another round or "
            "recipe. Point output_dir at this recipe's rounds folder, or delete the file to collect again."
        )
    return by_id


def check_rankings(
    path: Path, rows: list[dict], comparisons: dict[str, dict], comparisons_path: Path
) -> list[dict]:
    """Rankings (ranked format, keyed by id) checked against the comparisons they rank, row by row: the id is one
    of them, the answers are the collected ones, `ranks` are whole numbers 1..K' or `scores` finite numbers, one
    per answer, each id ranked once. Nothing is kept unless every row is right."""
    problems, seen, out = [], {}, []
    for row in rows:
        where = f"row {row.get('_row', '?')}"
        comparison = comparisons.get(row.get("id"))
        if comparison is None:
            problems.append(
                f"{where}: id {row.get('id')!r} is not among the comparisons in {comparisons_path}"
            )
            continue
        who = (row["id"], row.get("rater"))  # several raters may rank one prompt; one rater ranks it once
        if who in seen:
            by = f" by {row['rater']}" if row.get("rater") else ""
            problems.append(f"{where}: id {row['id']!r} is ranked twice{by} (first in row {seen[who]})")
            continue
        seen[who] = row.get("_row", "?")
        answers = comparison["responses"]
        if "responses" in row and row["responses"] != answers:
            problems.append(f"{where}: 'responses' differ from the collected answers of {row['id']!r}")
            continue
        key = "ranks" if row.get("ranks") is not None else "scores"
        values = row.get(key)
        if not isinstance(values, list) or len(values) != len(answers):
            count = len(values) if isinstance(values, list) else "no list of"
            problems.append(f"{where}: {count} {key} for {len(answers)} answers (field '{key}')")
            continue
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            problems.append(f"{where}: field '{key}' holds a value that is not a finite number: {values}")
            continue
        if key == "ranks" and not all(float(v).is_integer() and 1 <= v <= len(answers) for v in values):
            problems.append(f"{where}: ranks {values} out of range; each is a whole number from 1 (best) to "
                            f"{len(answers)} (ties share a rank)")  # fmt: skip
            continue
        out.append({"id": row["id"], "prompt": comparison["prompt"], "responses": answers, key: values,
                    "rater": row.get("rater", "unknown")})  # fmt: skip
        if row.get("unusable"):
            out[-1]["unusable"] = row["unusable"]
    fail(path, problems, "Nothing was kept; fix those rows and rank again.")
    return out
