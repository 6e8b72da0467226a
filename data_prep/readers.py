"""Reading rows from local files (JSONL/JSON/CSV/Parquet, gzipped or not, globs) or hub data sets, and renaming
their columns. No knowledge of formats or recipes: `convert` makes canonical rows of what these return.

Local files are read with json/csv/pyarrow rather than `datasets.load_dataset`: the latter casts a column to one
Arrow type and fails on the whole file (with an Arrow error naming no row) when a single row holds a number instead
of a string, while we want that row reported by number. Hub ids go through the real `datasets.load_dataset` path.
A file that cannot be read at all (not UTF-8, empty, corrupt) is one DataSourceError naming it and the fix; a CSV
row with more or fewer fields than the header is a dropped row.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import zlib
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.validate import DataSourceError, InvalidRow, MissingColumnsError

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".json.gz")


def is_file_like(source: str) -> bool:
    return source.endswith(FILE_SUFFIXES) or any(ch in source for ch in "*?") or Path(source).exists()


def read_text(path: Path) -> str:
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
    text = read_text(path)
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
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
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
        rows = _jsonl_rows(read_text(path))
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
