"""Reading inputs (local files or hub data sets) and building a recipe's data dir from them.

Local JSONL/JSON/CSV/Parquet files are read with json/pandas/pyarrow rather than `datasets.load_dataset`: the
latter casts a column to one Arrow type and fails on the whole file (with an Arrow error naming no row) when a
single row holds a number instead of a string, while we want that row reported by number. Hub ids go through
the real `datasets.load_dataset` path.
"""

from __future__ import annotations

import glob
import gzip
import json
import random
from pathlib import Path

from datasets import Dataset, DatasetDict

from data_prep.config import ConvertConfig, DataConfig
from data_prep.convert import convert_rows
from data_prep.validate import DataSourceError, InvalidRow, MissingColumnsError, RowReport
from data_prep.write import write_atomically

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".json.gz")


# --- reading ------------------------------------------------------------------------------------------------


def _is_file_like(source: str) -> bool:
    return source.endswith(FILE_SUFFIXES) or any(ch in source for ch in "*?") or Path(source).exists()


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> list:
    rows: list = []
    with _open_text(path) as f:
        for line in f:
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
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            if err.msg == "Extra data":  # JSON lines in a .json file
                return _read_jsonl(path)
            raise DataSourceError(
                f"{path} is not valid JSON: {err}. Fix the file or save it as JSONL."
            ) from err
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):  # {column: [values]}
        n = len(next(iter(data.values()), []))
        return [{k: v[i] if i < len(v) else None for k, v in data.items()} for i in range(n)]
    if not isinstance(data, list):
        raise DataSourceError(
            f"{path} holds a JSON {type(data).__name__}; expected a list of row objects, "
            "a {column: [values]} object, or JSON lines."
        )
    return data


def _read_file(path: Path) -> list:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return _read_json(path)
    if name.endswith(".csv"):
        import pandas as pd

        # Every cell as a string: an empty cell stays "" (reported as empty), never NaN or a float.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        return frame.to_dict(orient="records")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    raise DataSourceError(f"{path}: unknown file type; use one of {', '.join(FILE_SUFFIXES)}.")


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
    source: str, split: str = "train", data_dir: str | None = None, max_rows: int | None = None
) -> list:
    """Rows of a local file (or glob of files, concatenated) or of a hub data set, as a list of dicts."""
    if _is_file_like(source):
        paths = sorted(glob.glob(source)) if any(ch in source for ch in "*?") else [source]
        if not paths or not all(Path(p).is_file() for p in paths):
            raise DataSourceError(
                f"Data file {source} does not exist. Check the path (relative to {Path.cwd()})."
            )
        rows: list = []
        for path in paths:
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
    label = source if _is_file_like(source) else f"{source} [{split}]"
    rows = apply_column_mapping(
        load_rows(source, split, data_dir, max_rows), parse_column_mapping(column_mapping), label
    )
    report = RowReport(label, strict=strict)
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


def convert_recipe_data(config: DataConfig) -> tuple[dict[str, Dataset | DatasetDict], dict]:
    """sft/, preference/, prompts/, eval_prompts/ from `preference_data` (+ optional `sft_data`)."""
    reports: dict[str, RowReport] = {}
    common = dict(
        column_mapping=config.column_mapping,
        max_rows=config.max_rows,
        max_chars=config.max_chars,
        strict=config.strict,
    )
    pref_source = config.preference_data
    pref_train, reports["preference_train"] = read_and_convert(
        pref_source,
        config.preference_format,
        split=config.preference_train_split,
        data_dir=config.preference_data_dir,
        **common,
    )
    if config.preference_test_data or (config.preference_test_split and not _is_file_like(pref_source)):
        test_source = config.preference_test_data or pref_source
        pref_test, reports["preference_test"] = read_and_convert(
            test_source,
            config.preference_format,
            split=config.preference_test_split or "train",
            data_dir=config.preference_data_dir,
            **common,
        )
    else:  # a single file: hold out whole prompts
        pref_train, pref_test = _hold_out_by_prompt(pref_train, config.test_fraction, config.seed)

    if config.sft_data:
        sft_train, reports["sft_train"] = read_and_convert(
            config.sft_data, config.sft_format, split=config.sft_train_split, **common
        )
        if config.sft_test_split and not _is_file_like(config.sft_data):
            sft_test, reports["sft_test"] = read_and_convert(
                config.sft_data, config.sft_format, split=config.sft_test_split, **common
            )
        else:
            random.Random(config.seed).shuffle(sft_train)
            n_test = max(1, round(config.test_fraction * len(sft_train)))
            sft_test, sft_train = sft_train[:n_test], sft_train[n_test:]
    else:  # the preferred response of each pair is a demonstration (common practice with HH-RLHF)
        sft_train = _unique_demos(pref_train)
        sft_test = _unique_demos(pref_test)

    train_prompts = _unique([r["prompt"] for r in pref_train])
    rng = random.Random(config.seed)
    rl_prompts = list(train_prompts)
    rng.shuffle(rl_prompts)
    seen = set(train_prompts)
    eval_candidates = [p for p in _unique([r["prompt"] for r in pref_test]) if p not in seen]
    rng.shuffle(eval_candidates)

    datasets = {
        "sft": DatasetDict(train=Dataset.from_list(sft_train), test=Dataset.from_list(sft_test)),
        "preference": DatasetDict(train=Dataset.from_list(pref_train), test=Dataset.from_list(pref_test)),
        "prompts": Dataset.from_dict({"prompt": rl_prompts[: config.num_rl_prompts]}),
        "eval_prompts": Dataset.from_dict({"prompt": eval_candidates[: config.num_eval_prompts]}),
    }
    info = {
        "source": "datasets",
        "eval_prompts_removed_as_seen_in_train": len(_unique([r["prompt"] for r in pref_test]))
        - len(eval_candidates),
        "reports": {name: report.to_dict() for name, report in reports.items()},
    }
    return datasets, info


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
    output = Path(config.output)
    if output.suffix == ".jsonl":
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(output)
    else:
        write_atomically(output, lambda tmp: Dataset.from_list(rows).save_to_disk(str(tmp)))
    print(report.summary())
    print(f"Wrote {len(rows)} {config.format} rows to {output}.")
    return report.to_dict()
