"""A recipe's data dir (sft/, preference/, prompts/, eval_prompts/, pretrain/) from its inputs, and `convert`'s one
converted file: each input read (`readers`), converted to canonical rows (`convert`), held out by prompt, checked
and written atomically with a report of every dropped row.
"""

from __future__ import annotations

import glob
import json
import random
from pathlib import Path

from datasets import Dataset, DatasetDict

from data_prep.config import ConvertConfig, DataConfig
from data_prep.convert import ASSISTANT_TURN, convert_rows, same_columns
from data_prep.readers import apply_column_mapping, is_file_like, load_rows, parse_column_mapping, read_text
from data_prep.validate import (
    DROPPED_FILE,
    DataSourceError,
    MissingColumnsError,
    RowReport,
    dropped_lines,
    dropped_note,
    write_dropped,
)
from pipeline.common.outputs import write_atomically, write_file_atomically


def read_and_convert(
    source: str,
    fmt: str,
    split: str = "train",
    data_dir: str | None = None,
    column_mapping: str | dict | None = None,
    max_rows: int | None = None,
    max_chars: int = 20000,
    strict: bool = False,
    margin: bool = True,
) -> tuple[list[dict], RowReport]:
    """Load one input and convert it to canonical rows; the report lists every dropped row and why."""
    label = source if is_file_like(source) else f"{source} [{split}]"
    report = RowReport(label, strict=strict)
    rows = load_rows(source, split, data_dir, max_rows, files=report.files)
    rows = apply_column_mapping(rows, parse_column_mapping(column_mapping), label)
    return convert_rows(rows, fmt, report, max_chars=max_chars, margin=margin), report


def _hold_out_by_prompt(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split rows so that no prompt is in both halves (held-out prompts are then truly unseen)."""
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(seed).shuffle(prompts)
    test_prompts = set(prompts[: max(1, round(fraction * len(prompts)))])
    return [r for r in rows if r["prompt"] not in test_prompts], [
        r for r in rows if r["prompt"] in test_prompts
    ]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def convert_recipe_data(config: DataConfig) -> tuple[dict[str, Dataset | DatasetDict], dict, list[RowReport]]:
    """sft/, preference/, prompts/, eval_prompts/ (and with `pretrain_corpus`, pretrain/) from `preference_data`
    (+ optional `sft_data`, `rl_prompts_data`, `eval_prompts_data`), each read with its own column mapping."""
    reports: dict[str, RowReport] = {}

    def read(name, source, fmt, mapping_key, split="train", data_dir=None):
        # One mapping per input, the shared column_mapping where an input has none.
        mapping = getattr(config, mapping_key) or config.column_mapping
        try:
            rows, reports[name] = read_and_convert(
                source, fmt, split=split, data_dir=data_dir, column_mapping=mapping, max_rows=config.max_rows,
                max_chars=config.max_chars, strict=config.strict,
            )  # fmt: skip
        except MissingColumnsError as err:  # its hint names --column_mapping; a recipe sets a data.yaml key
            raise MissingColumnsError(f"{err} In data.yaml, set {mapping_key} (or column_mapping).") from None
        return _templated(rows, config.prompt_template)

    pref_source, pref_format = config.preference_data, config.preference_format
    pref_map = "preference_column_mapping"
    pref_train = read(
        "preference_train", pref_source, pref_format, pref_map, config.preference_train_split,
        config.preference_data_dir,
    )  # fmt: skip
    if config.preference_test_data or (config.preference_test_split and not is_file_like(pref_source)):
        pref_test = read(
            "preference_test", config.preference_test_data or pref_source, pref_format, pref_map,
            config.preference_test_split or "train", config.preference_data_dir,
        )  # fmt: skip
    else:  # a single file: hold out whole prompts
        pref_train, pref_test = _hold_out_by_prompt(pref_train, config.test_fraction, config.seed)

    if config.sft_data:
        sft_train = read(
            "sft_train", config.sft_data, config.sft_format, "sft_column_mapping", config.sft_train_split
        )
        if config.sft_test_split and not is_file_like(config.sft_data):
            sft_test = read(
                "sft_test", config.sft_data, config.sft_format, "sft_column_mapping", config.sft_test_split
            )
        else:
            random.Random(config.seed).shuffle(sft_train)
            n_test = max(1, round(config.test_fraction * len(sft_train)))
            sft_test, sft_train = sft_train[:n_test], sft_train[n_test:]
    else:  # the preferred response of each pair is a demonstration (common practice with HH-RLHF)
        sft_train = _unique_demos(pref_train)
        sft_test = _unique_demos(pref_test)

    notes = [n for n in [same_columns(pref_train, pref_test)] if n]
    rng = random.Random(config.seed)
    if config.rl_prompts_data:
        rows = read(
            "rl_prompts", config.rl_prompts_data, "prompts", "rl_prompts_column_mapping", config.rl_prompts_split
        )  # fmt: skip
        rl_prompts = [r["prompt"] for r in rows]
    else:
        rl_prompts = _unique([r["prompt"] for r in pref_train])
    rng.shuffle(rl_prompts)
    rl_prompts = rl_prompts[: config.num_rl_prompts]
    # Evaluation prompts are never trained on, by any stage.
    seen = {r["prompt"] for r in pref_train} | {r.get("prompt") for r in sft_train} | set(rl_prompts)
    if config.eval_prompts_data:
        rows = read(
            "eval_prompts", config.eval_prompts_data, "prompts", "eval_prompts_column_mapping",
            config.eval_prompts_split,
        )  # fmt: skip
        candidates = [r["prompt"] for r in rows]
    else:
        candidates = _unique([r["prompt"] for r in pref_test])
    eval_candidates = [p for p in candidates if p not in seen]
    rng.shuffle(eval_candidates)
    eval_prompts = eval_candidates[: config.num_eval_prompts]

    datasets = {
        "sft": DatasetDict(train=Dataset.from_list(sft_train), test=Dataset.from_list(sft_test)),
        "preference": DatasetDict(train=Dataset.from_list(pref_train), test=Dataset.from_list(pref_test)),
        "prompts": Dataset.from_dict({"prompt": rl_prompts}),
        "eval_prompts": Dataset.from_dict({"prompt": eval_prompts}),
    }
    info = {
        "source": "datasets",
        "eval_prompts_removed_as_seen_in_train": len(candidates) - len(eval_candidates),
        "reports": {name: report.to_dict() for name, report in reports.items()},
        "notes": notes,
    }
    if config.pretrain_corpus:
        heldout = {r["prompt"] for r in pref_test} | set(eval_prompts)
        texts = pretrain_texts(sft_train, pref_train, rl_prompts, heldout, config.prompt_template)
        extra = read_text_files(config.pretrain_text_files) if config.pretrain_text_files else []
        datasets["pretrain"] = Dataset.from_dict({"text": _unique(texts + extra)})
        info["pretrain_texts"] = {"train": len(texts), "text_files": len(extra)}
    return datasets, info, list(reports.values())


def _templated(rows: list[dict], template: str | None) -> list[dict]:
    """Each prompt wrapped in `template`; answers then start with one space, as in the HH format (`Assistant:`
    then ` answer`), so the prompt's last token never fuses with the answer's first."""
    if not template:
        return rows
    space = "" if template[-1:].isspace() else " "
    for row in rows:
        if "prompt" in row:
            row["prompt"] = template.replace("{prompt}", row["prompt"])
        for key in ("chosen", "rejected", "completion"):
            if key in row and not row[key][:1].isspace():
                row[key] = space + row[key]
    return rows


def _messages_text(messages: list[dict]) -> str:
    """A chat as the tiny base's chat template renders it (pipeline.base.CHAT_TEMPLATE), EOS aside."""
    turns = {"system": "{}", "user": "\n\nHuman: {}", "assistant": "\n\nAssistant: {}"}
    return "".join(turns[m["role"]].format(m["content"]) for m in messages)


def pretrain_texts(
    sft_train: list[dict],
    pref_train: list[dict],
    rl_prompts: list[str],
    heldout: set[str],
    template: str | None = None,
) -> list[str]:
    """The `make base` corpus of a converted recipe: its train texts only (each SFT demonstration, each distinct
    preference response after its prompt, each RL prompt), none whose prompt is held out (`heldout`)."""
    texts = [
        _messages_text(r["messages"]) if "messages" in r else r["prompt"] + r["completion"]
        for r in sft_train
        if r.get("prompt") not in heldout
    ]
    texts += [
        r["prompt"] + r[k] for r in pref_train if r["prompt"] not in heldout for k in ("chosen", "rejected")
    ]
    # An RL prompt alone ends at the generation cue ("Assistant:"); base.py appends EOS to every text, which would
    # teach the base to answer nothing, so the cue is cut off: the text is the question only.
    cue = template.split("{prompt}", 1)[1] if template else ASSISTANT_TURN
    texts += [p.removesuffix(cue) if cue else p for p in rl_prompts if p not in heldout]
    return _unique(texts)


def read_text_files(patterns: str) -> list[str]:
    """The non-blank lines of comma-separated .txt paths or globs, one text each."""
    texts = []
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise DataSourceError(
                f"pretrain_text_files: {pattern} matches no file (relative to {Path.cwd()})."
            )
        for path in paths:
            texts += [line for line in read_text(Path(path)).splitlines() if line.strip()]
    return texts


def _unique_demos(pairs: list[dict]) -> list[dict]:
    demos = {(p["prompt"], p["chosen"]): None for p in pairs}
    return [{"prompt": prompt, "completion": completion} for prompt, completion in demos]


def convert_to_disk(config: ConvertConfig) -> dict:
    """`python -m data_prep convert`: write one converted data set (save_to_disk folder, or .jsonl file)."""
    rows, report = read_and_convert(
        config.input,
        config.format,
        split=config.split,
        data_dir=config.data_dir,
        column_mapping=config.column_mapping,
        max_rows=config.max_rows,
        max_chars=config.max_chars,
        strict=config.strict,
        margin=config.margin,
    )
    note = same_columns(rows)
    output = Path(config.output)
    if output.suffix == ".jsonl":  # out.jsonl + out.dropped_rows.jsonl, each renamed into place
        dropped_file = output.with_name(f"{output.stem}.{DROPPED_FILE}")
        dropped = dropped_lines([report])
        write_file_atomically(dropped_file, "".join(dropped))
        write_file_atomically(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        n_dropped = len(dropped)
    else:  # the list inside the data set's folder, so one rename publishes both
        dropped_file = output / DROPPED_FILE

        def fill(tmp: Path) -> None:
            nonlocal n_dropped
            Dataset.from_list(rows).save_to_disk(str(tmp))
            n_dropped = write_dropped(tmp / DROPPED_FILE, [report])

        n_dropped = 0
        write_atomically(output, fill)
    print(report.summary())
    if note:
        print(f"Note: {note}.")
    print(f"Wrote {len(rows)} {config.format} rows to {output}. {dropped_note(n_dropped, dropped_file)}")
    return {**report.to_dict(), "dropped_rows_file": str(dropped_file), "notes": [note] if note else []}
