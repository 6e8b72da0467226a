"""Converters from common input formats to the canonical ones (library functions).

Each takes `rows` (a list of dicts, columns already renamed by the column mapping) and a `RowReport`, and
returns canonical rows; bad rows go to the report with their row number (`first_row` is the number of rows[0]).

    convert_hh_rlhf   {chosen, rejected} full transcripts       -> {prompt, chosen, rejected}
    convert_pairs     {prompt, chosen, rejected}                -> {prompt, chosen, rejected}
    convert_ranked    {prompt, responses, ranks | scores}       -> {prompt, chosen, rejected[, margin]}
    convert_sft       {prompt, completion} or {messages}        -> the same, validated
    convert_prompts   {prompt}                                  -> the same, validated (PPO and eval prompts)
"""

from __future__ import annotations

import json
import os

from data_prep.validate import (
    InvalidRow,
    RowReport,
    check_numbers,
    check_pair,
    check_text_fields,
    finish,
    require_columns,
)
from pipeline.common.pairs import pairs_from_ranks, pairs_from_scores

ASSISTANT_TURN = "\n\nAssistant:"
ROLES = ("system", "user", "assistant")

# Columns each format needs (after the column mapping); checked before any row is read.
REQUIRED_COLUMNS = {
    "hh_rlhf": ("chosen", "rejected"),
    "pairs": ("prompt", "chosen", "rejected"),
    "ranked": ("prompt", "responses"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "prompts": ("prompt",),
}


def numbered_records(rows: list, report: RowReport, first_row: int = 1):
    """Yield (row number, record) for each dict row; rows the reader could not parse, or that are not objects,
    are reported; None (a blank JSONL line) is skipped without counting as a row."""
    for row, record in enumerate(rows, start=first_row):
        if record is None:
            continue
        report.total += 1
        if isinstance(record, dict):
            yield row, record
        elif isinstance(record, InvalidRow):
            report.reject(row, record.kind, record.detail)
        else:
            report.reject(
                row, "not an object", f"the row is a {type(record).__name__}, not an object of columns"
            )


def split_transcript(transcript: str) -> tuple[str, str] | None:
    """("...\\n\\nAssistant:", " response") split at the last Assistant turn; None when there is none."""
    cut = transcript.rfind(ASSISTANT_TURN)
    if cut < 0:
        return None
    cut += len(ASSISTANT_TURN)
    return transcript[:cut], transcript[cut:]


def convert_hh_rlhf(
    rows: list[dict], report: RowReport, max_chars: int = 20000, first_row: int = 1
) -> list[dict]:
    """HH-RLHF transcripts -> the shared prompt (up to the last Assistant turn) and the two final responses.

    Rows whose two transcripts differ before their last Assistant turn (so there is no shared prompt), rows
    without an Assistant turn and rows with an empty final response are reported, never patched up.
    """
    out, seen = [], {}
    for row, record in numbered_records(rows, report, first_row):
        if not check_text_fields(report, row, record, ("chosen", "rejected")):
            continue
        chosen, rejected = split_transcript(record["chosen"]), split_transcript(record["rejected"])
        if chosen is None or rejected is None:
            which = "chosen" if chosen is None else "rejected"
            report.reject(
                row, "no assistant turn", f"the {which} transcript has no '\\n\\nAssistant:' turn", which
            )
            continue
        if chosen[0] != rejected[0]:
            at = len(os.path.commonprefix([chosen[0], rejected[0]]))
            turns = (chosen[0].count(ASSISTANT_TURN), rejected[0].count(ASSISTANT_TURN))
            report.reject(
                row,
                "transcripts diverge",
                f"chosen and rejected differ before their last Assistant turn (at character {at}; "
                f"{turns[0]} vs {turns[1]} Assistant turns), so they share no prompt",
            )
            continue
        for name, response in (("chosen", chosen[1]), ("rejected", rejected[1])):
            if not response.strip():
                report.reject(row, "empty response", f"the final {name} response is empty", name)
                break
        else:
            pair = {"prompt": chosen[0], "chosen": chosen[1], "rejected": rejected[1]}
            if check_pair(report, row, pair, max_chars, seen):
                out.append(pair)
    return finish(report, out)


def convert_pairs(
    rows: list[dict], report: RowReport, max_chars: int = 20000, first_row: int = 1
) -> list[dict]:
    """Plain {prompt, chosen, rejected} rows, validated; a `margin` is kept when it is a finite number (a numeric
    string too: CSV cells are strings); a null or empty one counts as no margin."""
    out, seen = [], {}
    for row, record in numbered_records(rows, report, first_row):
        pair = {k: record.get(k) for k in ("prompt", "chosen", "rejected")}
        if not check_pair(report, row, pair, max_chars, seen):
            continue
        margin = record.get("margin")
        if isinstance(margin, str):
            margin = _number(margin.strip()) if margin.strip() else None
        if margin is not None:
            if not check_numbers(report, row, "margin", [margin]):
                continue
            pair["margin"] = float(margin)
        out.append(pair)
    return finish(report, out)


def convert_ranked(
    rows: list[dict], report: RowReport, max_chars: int = 20000, margin: bool = True, first_row: int = 1
) -> list[dict]:
    """K ranked answers per prompt -> every ordered pair (ties skipped), InstructGPT style.

    `ranks`: 1 is best. `scores`: higher is better; with `margin`, pairs hold the score difference.
    """
    columns = set().union(*(r.keys() for r in rows[:100] if isinstance(r, dict)))
    if columns and not columns & {"ranks", "scores"}:
        require_columns(sorted(columns), ("prompt", "responses", "ranks or scores"), report.source, "ranked")
    out, seen = [], {}
    for row, record in numbered_records(rows, report, first_row):
        if not check_text_fields(report, row, record, ("prompt",)):
            continue
        responses = record.get("responses")
        if isinstance(responses, str) and responses.lstrip().startswith("["):  # a JSON list in a CSV cell
            responses = _json_list(responses)
        # Either column may be absent from a row: null (JSON, Parquet) or an empty cell (CSV).
        given = {k: record[k] for k in ("scores", "ranks") if record.get(k) not in (None, "")}
        key = "scores" if "scores" in given or "ranks" not in given else "ranks"
        given = {k: _json_list(v) if isinstance(v, str) else v for k, v in given.items()}
        values = given.get(key)
        if not isinstance(responses, list) or not isinstance(values, list):
            which = "responses" if not isinstance(responses, list) else key
            report.reject(row, "not a list", f"'responses' and '{key}' must be lists", which)
            continue
        if len(responses) != len(values):
            report.reject(row, "length mismatch", f"{len(responses)} responses but {len(values)} {key}", key)
            continue
        if len(responses) < 2:
            report.reject(
                row,
                "too few responses",
                f"{len(responses)} response(s); a ranking needs at least 2",
                "responses",
            )
            continue
        bad = [i for i, r in enumerate(responses) if not isinstance(r, str) or not r.strip()]
        if bad:
            report.reject(
                row,
                "empty",
                f"response {bad[0]} ({responses[bad[0]]!r:.40}) is empty or not a string",
                "responses",
            )
            continue
        # Both columns when a row has both: the unused one must not hide a broken value either.
        if not all(
            check_numbers(report, row, k, v if isinstance(v, list) else [v]) for k, v in given.items()
        ):
            continue
        if key == "scores":
            pairs = pairs_from_scores(record["prompt"], responses, values, margin=margin)
        else:
            pairs = pairs_from_ranks(record["prompt"], responses, values)
        if not pairs:
            report.reject(row, "all tied", f"all {key} are equal, so the row holds no preference", key)
            continue
        longest = len(record["prompt"]) + max(len(r) for r in responses)
        if longest > max_chars:
            report.reject(
                row, "too long", f"prompt+response has {longest} characters, over max_chars={max_chars}"
            )
            continue
        # A pair repeated from an earlier row is reported (and dropped) on its own; the row's others stay.
        out += [p for p in pairs if check_pair(report, row, p, max_chars, seen)]
    return finish(report, out)


def convert_sft(
    rows: list[dict],
    report: RowReport,
    fmt: str = "prompt_completion",
    max_chars: int = 20000,
    first_row: int = 1,
) -> list[dict]:
    """SFT demonstrations: {prompt, completion} strings, or {messages} lists of {role, content} ending with the
    assistant's turn. Duplicates and over-long rows are reported like pairs."""
    out, seen = [], set()
    for row, record in numbered_records(rows, report, first_row):
        if fmt == "prompt_completion":
            if not check_text_fields(report, row, record, ("prompt", "completion")):
                continue
            example = {"prompt": record["prompt"], "completion": record["completion"]}
            size, key = (
                len(example["prompt"]) + len(example["completion"]),
                (example["prompt"], example["completion"]),
            )
        else:
            problem = _messages_problem(record.get("messages"))
            if problem:
                report.reject(row, "bad messages", problem, "messages")
                continue
            example = {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}
            size = sum(len(m["content"]) for m in example["messages"])
            key = tuple((m["role"], m["content"]) for m in example["messages"])
        if size > max_chars:
            report.reject(
                row, "too long", f"the example has {size} characters, over the limit max_chars={max_chars}"
            )
            continue
        if key in seen:
            report.reject(row, "duplicate", "the same demonstration occurs in an earlier row")
            continue
        seen.add(key)
        out.append(example)
    return finish(report, out)


def convert_prompts(
    rows: list[dict], report: RowReport, max_chars: int = 20000, first_row: int = 1
) -> list[dict]:
    """{prompt} rows (other columns are ignored); empty, over-long and repeated prompts are reported."""
    out, seen = [], set()
    for row, record in numbered_records(rows, report, first_row):
        if not check_text_fields(report, row, record, ("prompt",)):
            continue
        prompt = record["prompt"]
        if len(prompt) > max_chars:
            report.reject(
                row, "too long", f"the prompt has {len(prompt)} characters, over max_chars={max_chars}"
            )
        elif prompt in seen:
            report.reject(row, "duplicate", "the same prompt occurs in an earlier row")
        else:
            seen.add(prompt)
            out.append({"prompt": prompt})
    return finish(report, out)


def _json_list(text: str):
    try:
        return json.loads(text)  # reads NaN and Infinity too, which check_numbers then reports
    except json.JSONDecodeError:
        return text  # reported below as "not a list"


def _number(text: str):
    try:
        return float(text)  # "nan" and "inf" included, reported by check_numbers
    except ValueError:
        return text  # reported as "not a number"


def _messages_problem(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        return f"'messages' must be a non-empty list of {{role, content}}, got {type(messages).__name__}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"message {i} needs a role in {', '.join(ROLES)}, got {message!r:.60}"
        if not isinstance(message.get("content"), str) or not message["content"].strip():
            return f"message {i} ({message['role']}) has empty or non-string content"
    if messages[-1]["role"] != "assistant":
        return f"the last message must be the assistant's (the demonstration), got '{messages[-1]['role']}'"
    return None


def same_columns(*splits: list[dict]) -> str | None:
    """Keep `margin` only if every pair of every split has one (pairs from `ranks`, or pair rows without a margin,
    have none): `Dataset.from_list` takes its columns from the first row, so the splits would otherwise differ by
    chance, and TRL's RewardTrainer reads the margin of every pair once the column exists. Strips it in place
    otherwise and returns a note saying so."""
    rows = [r for split in splits for r in split]
    n = sum("margin" in r for r in rows)
    if not 0 < n < len(rows):
        return None
    for r in rows:
        r.pop("margin", None)
    return f"margin dropped: only {n} of {len(rows)} pairs have one (pairs from ranks have none)"


def convert_rows(rows: list[dict], fmt: str, report: RowReport, max_chars: int = 20000, margin: bool = True):
    """Dispatch on the format name (see REQUIRED_COLUMNS)."""
    columns = set().union(*(r.keys() for r in rows[:100] if isinstance(r, dict)))
    if columns:
        require_columns(sorted(columns), REQUIRED_COLUMNS[fmt], report.source, fmt)
    if fmt == "hh_rlhf":
        return convert_hh_rlhf(rows, report, max_chars)
    if fmt == "pairs":
        return convert_pairs(rows, report, max_chars)
    if fmt == "ranked":
        return convert_ranked(rows, report, max_chars, margin=margin)
    if fmt == "prompts":
        return convert_prompts(rows, report, max_chars)
    return convert_sft(rows, report, fmt, max_chars)
