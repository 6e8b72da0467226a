"""Reading inputs (local files or hub data sets) and building a recipe's data dir from them.

Local JSONL/JSON/CSV/Parquet files are read with json/csv/pyarrow rather than `datasets.load_dataset`: the
latter casts a column to one Arrow type and fails on the whole file (with an Arrow error naming no row) when a
single row holds a number instead of a string, while we want that row reported by number. Hub ids go through
the real `datasets.load_dataset` path. A file that cannot be read at all (not UTF-8, empty, corrupt) is one
DataSourceError naming it and the fix; a CSV row with more or fewer fields than the header is a dropped row.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import random
import zlib
from pathlib import Path

from datasets import Dataset, DatasetDict

from data_prep.config import ConvertConfig, DataConfig
from data_prep.convert import ASSISTANT_TURN, convert_rows, same_columns
from data_prep.validate import (
    DROPPED_FILE,
    DataSourceError,
    InvalidRow,
    MissingColumnsError,
    RowReport,
    dropped_note,
    write_dropped,
)
from data_prep.write import write_atomically

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".json.gz")


# --- reading ------------------------------------------------------------------------------------------------


def is_file_like(source: str) -> bool:
    return source.endswith(FILE_SUFFIXES) or any(ch in source for ch in "*?") or Path(source).exists()


def _read_text(path: Path) -> str:
    """The whole file as text. A UTF-8 BOM (Excel, Notepad) is skipped; other encodings are one clear error
    rather than a UnicodeDecodeError (or, with pandas' fallbacks, silently garbled text)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataSourceError(
                f"{path} is not a readable gzip file ({err}); it may be truncated. Compress it again or use "
                "the uncompressed file."
            ) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataSourceError(
            f"{path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at byte offset {err.start} (line {line})"
            f"{' of the uncompressed data' if path.suffix == '.gz' else ''} is not valid UTF-8 (the file is "
            "probably latin-1/cp1252). Re-save it as UTF-8, e.g. `iconv -f cp1252 -t utf-8 IN > OUT`."
        ) from None


def _jsonl_rows(text: str) -> list:
    rows: list = []
    for line in io.StringIO(text, newline=None):  # \n, \r\n or \r ends a line, never \u2028 inside a string
        if not line.strip():
            rows.append(None)  # a blank line is no row, but keeps the numbering equal to line numbers
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            rows.append(
                InvalidRow("invalid JSON", f"line is not valid JSON ({err.msg} at column {err.colno})")
            )
    return rows


def _read_json(path: Path) -> list:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON lines in a .json file
            return _jsonl_rows(text)
        raise DataSourceError(f"{path} is not valid JSON: {err}. Fix the file or save it as JSONL.") from err
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):  # {column: [values]}
        n = len(next(iter(data.values()), []))
        return [{k: v[i] if i < len(v) else None for k, v in data.items()} for i in range(n)]
    if not isinstance(data, list):
        raise DataSourceError(
            f"{path} holds a JSON {type(data).__name__}; expected a list of row objects, "
            "a {column: [values]} object, or JSON lines."
        )
    return data


def _read_csv(path: Path) -> list:
    """Every cell as a string (an empty cell stays "", reported as empty). The csv module rather than pandas:
    a row with more fields than the header is then a reported row, not a ParserError for the whole file."""
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) would fail the file on one long transcript
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise DataSourceError(
                f"{path} is empty: a CSV file needs a header line of column names, then one line per row."
            )
        if len(set(header)) < len(header):
            twice = sorted({c for c in header if header.count(c) > 1})
            raise DataSourceError(
                f"{path}: column(s) {', '.join(twice)} occur twice in the header; rename them."
            )
        rows: list = []
        for fields in reader:
            if not fields:
                rows.append(None)  # a blank line, like in JSONL
            elif len(fields) != len(header):
                rows.append(InvalidRow("wrong field count", f"the row has {len(fields)} fields but the header "
                                       f"has {len(header)} (an unquoted comma?)"))  # fmt: skip
            else:
                rows.append(dict(zip(header, fields)))
    except csv.Error as err:
        raise DataSourceError(
            f"{path}: line {reader.line_num} is not valid CSV ({err}). Fix the file."
        ) from None
    return rows


def _read_parquet(path: Path) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataSourceError(
            f"{path} is not a readable Parquet file ({str(err).splitlines()[0][:200]}); it may be truncated or "
            "not Parquet at all. Write it again (e.g. pandas.DataFrame.to_parquet) or convert it to JSONL."
        ) from None


def _read_file(path: Path) -> list:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        rows = _jsonl_rows(_read_text(path))
    elif name.endswith((".json", ".json.gz")):
        rows = _read_json(path)
    elif name.endswith(".csv"):
        rows = _read_csv(path)
    elif name.endswith(".parquet"):
        rows = _read_parquet(path)
    else:
        raise DataSourceError(f"{path}: unknown file type; use one of {', '.join(FILE_SUFFIXES)}.")
    if all(r is None for r in rows):
        header = " (only a header line)" if name.endswith(".csv") else ""
        raise DataSourceError(f"{path} holds no rows{header}. Add rows to it or point to the right file.")
    return rows


def _load_hub(source: str, split: str, data_dir: str | None) -> list:
    import datasets

    try:
        ds = datasets.load_dataset(source, data_dir=data_dir, split=split)
    except Exception as err:  # network, offline mode, unknown id or split: all end here with a clear message
        offline = (
            " HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set, so only cached data sets load." if _offline() else ""
        )
        raise DataSourceError(
            f"Could not load hub data set '{source}' (split '{split}'"
            f"{f', data_dir {data_dir!r}' if data_dir else ''}): {type(err).__name__}: {str(err)[:300]}.{offline} "
            "Check the id and split, run once with network access to cache it, or point to a local "
            ".jsonl/.json/.csv/.parquet file instead."
        ) from err
    return ds.to_list()


def _offline() -> bool:
    import os

    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_rows(
    source: str,
    split: str = "train",
    data_dir: str | None = None,
    max_rows: int | None = None,
    files: list | None = None,
) -> list:
    """Rows of a local file (or glob of files, concatenated) or of a hub data set, as a list of dicts. `files`
    gets (number of its first row, path) for each file read, to report rows by file (RowReport.files)."""
    if is_file_like(source):
        paths = sorted(glob.glob(source)) if any(ch in source for ch in "*?") else [source]
        if not paths or not all(Path(p).is_file() for p in paths):
            raise DataSourceError(
                f"Data file {source} does not exist. Check the path (relative to {Path.cwd()})."
            )
        rows: list = []
        for path in paths:
            if files is not None:
                files.append((len(rows) + 1, path))
            rows += _read_file(Path(path))
    else:
        rows = _load_hub(source, split, data_dir)
    return rows[:max_rows] if max_rows else rows


def parse_column_mapping(mapping: str | dict | None) -> dict[str, str]:
    """'prompt=question,chosen=good' (or a dict) -> {"question": "prompt", "good": "chosen"} (source -> canonical)."""
    if not mapping:
        return {}
    if isinstance(mapping, dict):
        pairs = list(mapping.items())
    else:
        pairs = []
        for item in mapping.split(","):
            canonical, sep, column = (s.strip() for s in item.partition("="))
            if not sep or not canonical or not column:
                raise DataSourceError(
                    f"column_mapping item '{item}' must look like canonical=your_column, e.g. 'prompt=question'."
                )
            pairs.append((canonical, column))
    return {column: canonical for canonical, column in pairs}


def apply_column_mapping(rows: list, mapping: dict[str, str], source: str) -> list:
    """Rename columns; a mapped column that the data lacks is an error naming the columns it has."""
    if not mapping:
        return rows
    found = set().union(*(r.keys() for r in rows[:100] if isinstance(r, dict))) if rows else set()
    absent = [c for c in mapping if c not in found]
    if absent:
        raise MissingColumnsError(
            f"{source}: column_mapping names column(s) {', '.join(absent)} that the data does not have. "
            f"Found columns: {', '.join(sorted(found)) or '(none)'}."
        )
    return [{mapping.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in rows]


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


# --- a recipe's data dir from converted sets -----------------------------------------------------------------


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
            texts += [line for line in _read_text(Path(path)).splitlines() if line.strip()]
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
    if output.suffix == ".jsonl":  # out.jsonl + out.dropped_rows.jsonl, both renamed into place at the end
        output.parent.mkdir(parents=True, exist_ok=True)
        dropped_file = output.with_name(f"{output.stem}.{DROPPED_FILE}")
        tmp, tmp_dropped = (p.with_name(f".{p.name}.tmp") for p in (output, dropped_file))
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        n_dropped = write_dropped(tmp_dropped, [report])
        tmp_dropped.replace(dropped_file)
        tmp.replace(output)
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
