"""People's rankings of a round: one file per rater, `<round>/labels/<rater>.jsonl`, one line per prompt.

    {"id": ..., "ranks": [1 = best, per collected answer; ties share a rank], "order": "B A=D C",
     "shown": [collected index of the answer shown as A, B, ...], "unusable": [collected indices], "note": "...",
     "rater": ..., "time": "2026-12-07T16:40:00+00:00", "seconds": 12.4}
    {"id": ..., "skipped": true, "rater": ..., "time": ...}

A line is appended in one `write` to a file opened for appending and synced before the page moves on, so a closed
tab, a killed server or a power cut loses at most the ranking in progress; a last line cut short by a crash is
ignored on reading and cut off before the next append. Each rater writes only their own file, so raters work at
once without overwriting each other. `merge` turns the files into one ranked row per prompt, and `agreement`
measures how often two raters order a pair of answers the same way (InstructGPT's inter-labeler agreement).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

from pipeline.common.config import UserError

LABELS = "labels"
RATER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# One server, many tabs: an append and its already-ranked check don't interleave.
_append_lock = threading.Lock()


def check_rater(name: str | None) -> str:
    name = (name or "").strip()
    if not RATER_NAME.fullmatch(name):
        raise UserError(
            f"Rater name {name!r} cannot name a file: use 1-40 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit (RATER=alice)."
        )
    return name


def rater_file(round_dir: Path, rater: str) -> Path:
    return Path(round_dir) / LABELS / f"{check_rater(rater)}.jsonl"


def shown_order(prompt_id: str, rater: str, k: int) -> list[int]:
    """The collected answers' indices in the order a rater sees them as A, B, ...: shuffled per prompt and rater
    (so position cannot favour an answer across prompts or raters) and the same after a restart."""
    seed = int(hashlib.sha256(f"{prompt_id}/{rater}".encode()).hexdigest()[:16], 16)
    order = list(range(k))
    random.Random(seed).shuffle(order)
    return order


def parse_order(text: str, shown: list[int], unusable: Iterable[int] = ()) -> list[int]:
    """'B A=D C' (best first, '=' joins a tie; spaces and case do not matter) -> ranks per collected answer.

    Every answer not flagged unusable is named once; unusable ones may be left out and then share the last rank.
    Ranks are competition ranks (1, 2, 2, 4): whole numbers 1..K, as the ranked format wants.
    """
    k = len(shown)
    letters = LETTERS[:k]
    tiers: list[list[int]] = []
    seen: set[int] = set()
    join = False
    for char in text.upper():
        if char in " \t,>":
            continue
        if char == "=":
            if not tiers or join:
                raise ValueError("'=' goes between two answers it ties (A=B)")
            join = True
            continue
        if char not in letters:
            raise ValueError(f"{char!r} is not an answer here; use the letters {', '.join(letters)}")
        index = shown[letters.index(char)]
        if index in seen:
            raise ValueError(f"{char} is named twice")
        seen.add(index)
        if join:
            tiers[-1].append(index)
        else:
            tiers.append([index])
        join = False
    if join:
        raise ValueError("'=' goes between two answers it ties (A=B)")
    unusable = set(unusable)
    missing = [LETTERS[shown.index(i)] for i in range(k) if i not in seen and i not in unusable]
    if missing:
        raise ValueError(f"{', '.join(sorted(missing))} not ranked; name every answer (or flag it unusable)")
    left_out = [i for i in range(k) if i not in seen]
    if left_out:
        tiers.append(left_out)
    ranks = [0] * k
    place = 1
    for tier in tiers:
        for i in tier:
            ranks[i] = place
        place += len(tier)
    return ranks


def append_record(path: Path, record: dict) -> bool:
    """Append one line, synced; False (and nothing written) when the rater already ranked or skipped that prompt
    (a second tab on the same prompt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with _append_lock:
        if record["id"] in done_ids(read_rater_file(path)):
            return False
        cut_partial_line(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    return True


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cut_partial_line(path: Path) -> None:
    """A crash mid-append leaves a last line without its newline: that ranking was in progress; drop it."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            os.fsync(f.fileno())


def read_rater_file(path: Path) -> list[dict]:
    """A rater's records in order; a cut-short last line is left out (see `cut_partial_line`)."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):  # the unfinished last line of a crash
                continue
            raise UserError(
                f"{path}: row {number} is not JSON; the labeling page writes whole lines only, so the file was "
                "edited by hand. Fix or remove that line."
            ) from None
    return records


def done_ids(records: list[dict]) -> set[str]:
    return {r["id"] for r in records}


def read_labels(round_dir: Path) -> dict[str, list[dict]]:
    """Every rater's records, by rater name (the file name)."""
    folder = Path(round_dir) / LABELS
    if not folder.is_dir():
        return {}
    return {p.stem: read_rater_file(p) for p in sorted(folder.glob("*.jsonl"))}


def people_rows(labels: dict[str, list[dict]]) -> list[dict]:
    """The raters' rankings as ranked rows (skips left out), for `check_rankings` like any other source."""
    return [
        {
            "id": r["id"],
            "ranks": r["ranks"],
            "rater": rater,
            "_row": number,
            **({"unusable": r["unusable"]} if r.get("unusable") else {}),
        }  # fmt: skip
        for rater, records in labels.items()
        for number, r in enumerate(records, 1)
        if not r.get("skipped")
    ]


def competition_ranks(keys: list[float]) -> list[int]:
    """1 + how many keys are lower (the lowest key is best): ties share a rank, the next rank skips (1, 2, 2, 4)."""
    return [1 + sum(other < key for other in keys) for key in keys]


def as_ranks(row: dict) -> list[float]:
    """A row's ranks (1 = best); scores become competition ranks, the highest score first."""
    if row.get("ranks") is not None:
        return list(row["ranks"])
    return competition_ranks([-score for score in row["scores"]])


def merge(rows: list[dict]) -> list[dict]:
    """One ranked row per prompt. A prompt one source ranked keeps that row (scores and all). Several raters' ranks
    are averaged and ranked again, so a pair two raters order oppositely becomes a tie (no preference pair) and
    one they agree on stays; each rater's own ranks are kept in `by_rater`."""
    by_id: dict[str, list[dict]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    merged = []
    for prompt_id, group in by_id.items():
        if len(group) == 1:
            merged.append(group[0])
            continue
        ranks = {row["rater"]: as_ranks(row) for row in group}
        k = len(group[0]["responses"])
        mean = [sum(r[i] for r in ranks.values()) / len(ranks) for i in range(k)]
        merged.append({"id": prompt_id, "prompt": group[0]["prompt"], "responses": group[0]["responses"],
                       "ranks": competition_ranks(mean),
                       "rater": "+".join(sorted(ranks)), "by_rater": ranks})  # fmt: skip
    return merged


def agreement(rows: list[dict]) -> dict:
    """How often two raters order a pair of answers the same way, over the prompts both ranked and the answer
    pairs both decided (a tie by either is no decision): the figure InstructGPT reports (72.6% +- 1.5% among its
    training labelers). Pooled over every pair of raters, and per pair."""
    rankings: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        rankings.setdefault(row["rater"], {})[row["id"]] = as_ranks(row)
    pooled_same = pooled_total = 0
    per_pair = {}
    for a, b in combinations(sorted(rankings), 2):
        shared = sorted(set(rankings[a]) & set(rankings[b]))
        same = total = 0
        for prompt_id in shared:
            ra, rb = rankings[a][prompt_id], rankings[b][prompt_id]
            for i, j in combinations(range(len(ra)), 2):
                if ra[i] != ra[j] and rb[i] != rb[j]:
                    total += 1
                    same += (ra[i] < ra[j]) == (rb[i] < rb[j])
        if shared:
            per_pair[f"{a}/{b}"] = {"prompts": len(shared), "pairs": total,
                                    "agreement": same / total if total else None}  # fmt: skip
        pooled_same += same
        pooled_total += total
    return {
        "agreement": pooled_same / pooled_total if pooled_total else None,
        "pairs": pooled_total,
        "rater_pairs": per_pair,
    }
