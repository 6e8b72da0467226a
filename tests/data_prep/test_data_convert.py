"""Converters and validation: every format, every validation error, every input type, and the real HH-RLHF file."""

import gzip
import json
import os
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_prep.__main__ import main
from data_prep.convert import (
    convert_hh_rlhf,
    convert_pairs,
    convert_ranked,
    convert_rows,
    convert_sft,
    split_transcript,
)
from data_prep.sources import read_and_convert
from data_prep.validate import (
    BadRowError,
    DataSourceError,
    MissingColumnsError,
    NoRowsLeftError,
    RowReport,
)

SHARED_DATA = Path(
    os.environ.get("RLHF_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
HH_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
P = "\n\nHuman: Hi\n\nAssistant:"


def report():
    return RowReport("test.jsonl")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- HH-RLHF ------------------------------------------------------------------------------------------------


def test_split_transcript_at_the_last_assistant_turn():
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
    assert split_transcript(text) == ("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", " d")
    assert split_transcript("\n\nHuman: no answer") is None


def test_hh_rlhf_converter_reports_every_broken_row():
    rows = [
        {"chosen": P + " Hello there.", "rejected": P + " Go away."},  # 1: fine
        {"chosen": P + " ", "rejected": P + " Go away."},  # 2: empty chosen response
        {"chosen": P + " Yes.\n\nHuman: ok\n\nAssistant: Fine.", "rejected": P + " No."},  # 3: diverge
        {"chosen": "\n\nHuman: Hi", "rejected": P + " No."},  # 4: no assistant turn
        {"chosen": P + " Same.", "rejected": P + " Same."},  # 5: no preference
        {"chosen": P + " Hello there.", "rejected": P + " Go away."},  # 6: duplicate of 1
        {"chosen": None, "rejected": P + " No."},  # 7: not a string
    ]
    rep = report()
    out = convert_hh_rlhf(rows, rep)
    assert out == [{"prompt": P, "chosen": " Hello there.", "rejected": " Go away."}]
    assert [(p.row, p.kind) for p in rep.problems] == [
        (2, "empty response"),
        (3, "transcripts diverge"),
        (4, "no assistant turn"),
        (5, "chosen equals rejected"),
        (6, "duplicate pair"),
        (7, "not a string"),
    ]
    assert "same prompt/chosen/rejected as row 1" in rep.problems[4].detail
    assert rep.summary().startswith("test.jsonl: kept 1 of 7 rows; dropped 6:")


def test_strict_mode_fails_on_the_first_bad_row():
    rows = [{"chosen": P + " a", "rejected": P + " b"}, {"chosen": P + " ", "rejected": P + " b"}]
    with pytest.raises(BadRowError, match=r"test.jsonl: row 2: the final chosen response is empty.*--strict"):
        convert_hh_rlhf(rows, RowReport("test.jsonl", strict=True))


@pytest.fixture(scope="module")
def hh_converted():
    if not HH_FILE.is_file():
        pytest.skip(f"real HH-RLHF file not found at {HH_FILE} (set RLHF_SHARED_DATA to its folder)")
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    rows, rep = read_and_convert(str(HH_FILE), "hh_rlhf")
    return raw, rows, rep


def test_real_hh_rlhf_every_well_formed_row_converts(hh_converted):
    raw, rows, rep = hh_converted
    assert rep.total == len(raw) == 2312
    assert len(rows) + rep.dropped == len(raw)
    assert len(rows) == 2303  # the file has 9 broken rows, all reported below
    assert rep.counts() == {"transcripts diverge": 5, "empty response": 4}
    assert [p.row for p in rep.problems if p.kind == "transcripts diverge"] == [1255, 1689, 1951, 1953, 2037]
    for problem in rep.problems:  # the reported rows really are broken, in the way the report says
        chosen, rejected = raw[problem.row - 1]["chosen"], raw[problem.row - 1]["rejected"]
        c, r = split_transcript(chosen), split_transcript(rejected)
        if problem.kind == "transcripts diverge":
            assert c[0] != r[0]
        else:
            assert not c[1].strip() or not r[1].strip()


def test_real_hh_rlhf_prompts_end_at_an_assistant_turn_and_are_shared(hh_converted):
    raw, rows, rep = hh_converted
    bad_rows = {p.row for p in rep.problems}
    good_raw = [r for i, r in enumerate(raw, start=1) if i not in bad_rows]
    for source, row in zip(good_raw, rows):
        assert row["prompt"].startswith("\n\nHuman:") and row["prompt"].endswith("\n\nAssistant:")
        assert row["prompt"] + row["chosen"] == source["chosen"]  # nothing lost or patched up
        assert row["prompt"] + row["rejected"] == source["rejected"]
        assert row["chosen"].strip() and row["rejected"].strip()


def test_real_hh_rlhf_builds_a_recipe_data_dir(tmp_path):
    if not HH_FILE.is_file():
        pytest.skip(f"real HH-RLHF file not found at {HH_FILE} (set RLHF_SHARED_DATA to its folder)")
    out = tmp_path / "data"
    config = Path(__file__).resolve().parents[2] / "recipes" / "qwen2.5-0.5b-hh" / "data.yaml"
    main(["build", "--config", str(config), "--preference_data", str(HH_FILE), "--output_dir", str(out)])
    pref = load_from_disk(out / "preference")
    assert len(pref["train"]) + len(pref["test"]) == 2303
    train_prompts = set(pref["train"]["prompt"])
    assert not train_prompts & set(pref["test"]["prompt"])  # held out by whole prompts
    assert not train_prompts & set(load_from_disk(out / "eval_prompts")["prompt"])
    assert set(load_from_disk(out / "prompts")["prompt"]) <= train_prompts
    assert load_from_disk(out / "sft")["train"].column_names == ["prompt", "completion"]
    info = json.loads((out / "data_info.json").read_text())
    assert info["reports"]["preference_train"]["counts"] == {"transcripts diverge": 5, "empty response": 4}
    assert len((out / "dropped_rows.jsonl").read_text().splitlines()) == 9  # every dropped row, listed


# --- other converters ---------------------------------------------------------------------------------------


def test_pairs_converter_validates_each_row():
    rows = [
        {"prompt": P, "chosen": " a", "rejected": " b", "margin": 1.5},
        {"prompt": P, "chosen": " a", "rejected": " a"},
        {"prompt": "", "chosen": " a", "rejected": " b"},
        {"prompt": P, "chosen": 3, "rejected": " b"},
        {"prompt": P, "chosen": " x" * 50, "rejected": " b"},
        {"prompt": P, "chosen": " a", "rejected": " c", "margin": "big"},
    ]
    rep = report()
    out = convert_pairs(rows, rep, max_chars=60)
    assert out == [{"prompt": P, "chosen": " a", "rejected": " b", "margin": 1.5}]
    assert [(p.row, p.kind) for p in rep.problems] == [
        (2, "chosen equals rejected"),
        (3, "empty"),
        (4, "not a string"),
        (5, "too long"),
        (6, "not a number"),
    ]
    assert "field 'chosen' is int 3" in rep.problems[2].detail
    assert "over max_chars=60" in rep.problems[3].detail
    assert "1 too long (rows 5)" in rep.summary()


def test_ranked_with_scores_gives_all_ordered_pairs_skipping_ties():
    rows = [{"prompt": P, "responses": [" a", " b", " c", " d"], "scores": [3.0, 1.0, 3.0, 0.5]}]
    out = convert_ranked(rows, report())
    pairs = {(r["chosen"], r["rejected"]): r["margin"] for r in out}
    # a and c tie (skipped); every other pair is ordered by score
    assert pairs == {
        (" a", " b"): 2.0,
        (" a", " d"): 2.5,
        (" c", " b"): 2.0,
        (" c", " d"): 2.5,
        (" b", " d"): 0.5,
    }
    assert all("margin" not in r for r in convert_ranked(rows, report(), margin=False))


def test_ranked_with_ranks_prefers_rank_one():
    rows = [{"prompt": P, "responses": [" worst", " best", " mid"], "ranks": [3, 1, 2]}]
    out = convert_ranked(rows, report())
    assert {(r["chosen"], r["rejected"]) for r in out} == {
        (" best", " worst"),
        (" mid", " worst"),
        (" best", " mid"),
    }
    assert all("margin" not in r for r in out)


def test_ranked_rows_are_validated():
    rows = [
        {"prompt": P, "responses": [" a", " b"], "ranks": [1]},
        {"prompt": P, "responses": [" a"], "ranks": [1]},
        {"prompt": P, "responses": [" a", ""], "ranks": [1, 2]},
        {"prompt": P, "responses": [" a", " b"], "ranks": [1, "x"]},
        {"prompt": P, "responses": [" a", " b"], "ranks": [1, 1]},
        {"prompt": P, "responses": " a", "ranks": [1, 2]},
        {"prompt": P, "responses": '[" a", " b"]', "ranks": "[2, 1]"},  # JSON lists in CSV cells are fine
    ]
    rep = report()
    out = convert_ranked(rows, rep)
    assert out == [{"prompt": P, "chosen": " b", "rejected": " a"}]
    assert [p.kind for p in rep.problems] == [
        "length mismatch",
        "too few responses",
        "empty",
        "not a number",
        "all tied",
        "not a list",
    ]


def test_ranked_needs_ranks_or_scores():
    with pytest.raises(
        MissingColumnsError, match="missing ranks or scores. Found columns: prompt, responses"
    ):
        convert_ranked([{"prompt": P, "responses": [" a", " b"]}], report())


def test_sft_prompt_completion_and_messages():
    rows = [
        {"prompt": P, "completion": " Hello."},
        {"prompt": P, "completion": " Hello."},
        {"prompt": P, "completion": ""},
    ]
    rep = report()
    assert convert_sft(rows, rep) == [{"prompt": P, "completion": " Hello."}]
    assert [p.kind for p in rep.problems] == ["duplicate", "empty"]

    good = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rows = [
        {"messages": good},
        {"messages": good[:1]},  # ends with the user
        {"messages": [{"role": "robot", "content": "x"}, good[1]]},
        {"messages": [good[0], {"role": "assistant", "content": " "}]},
        {"messages": "Hi"},
    ]
    rep = report()
    assert convert_sft(rows, rep, fmt="messages") == [{"messages": good}]
    details = [p.detail for p in rep.problems]
    assert "last message must be the assistant's" in details[0]
    assert "role in system, user, assistant" in details[1]
    assert "empty or non-string content" in details[2]
    assert "non-empty list" in details[3]


def test_missing_columns_say_what_was_found_and_expected():
    rows = [{"question": P, "good": " a", "bad": " b"}]
    with pytest.raises(MissingColumnsError) as err:
        convert_rows(rows, "pairs", report())
    message = str(err.value)
    assert "needs column(s) prompt, chosen, rejected" in message
    assert "Found columns: bad, good, question" in message
    assert "--column_mapping 'prompt=<your column>,chosen=<your column>,rejected=<your column>'" in message


def test_no_rows_left_is_an_error():
    with pytest.raises(NoRowsLeftError, match="no usable rows.*1 chosen equals rejected"):
        convert_pairs([{"prompt": P, "chosen": " a", "rejected": " a"}], report())


# --- input files, column mapping, CLI -----------------------------------------------------------------------

PAIRS = [{"q": P, "good": " a", "bad": " b"}, {"q": P, "good": " c", "bad": " d"}]
EXPECTED = [{"prompt": P, "chosen": " a", "rejected": " b"}, {"prompt": P, "chosen": " c", "rejected": " d"}]
MAPPING = "prompt=q,chosen=good,rejected=bad"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_type_with_a_column_mapping(tmp_path, suffix):
    import pandas as pd

    path = tmp_path / f"pairs{suffix}"
    frame = pd.DataFrame(PAIRS)
    {".jsonl": lambda: write_jsonl(path, PAIRS), ".json": lambda: path.write_text(json.dumps(PAIRS)),
     ".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path)}[suffix]()  # fmt: skip
    rows, rep = read_and_convert(str(path), "pairs", column_mapping=MAPPING)
    assert rows == EXPECTED and rep.total == 2 and not rep.problems


def test_jsonl_row_numbers_are_line_numbers(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [
        json.dumps(EXPECTED[0]),
        "",
        "{not json",
        json.dumps({"prompt": P, "chosen": " x", "rejected": " x"}),
        "[1]",
    ]
    path.write_text("\n".join(lines) + "\n")
    rows, rep = read_and_convert(str(path), "pairs")
    assert rows == EXPECTED[:1]
    assert [(p.row, p.kind) for p in rep.problems] == [
        (3, "invalid JSON"),
        (4, "chosen equals rejected"),
        (5, "not an object"),
    ]
    assert rep.total == 4  # the blank line is not a row


def test_csv_empty_cell_is_reported_as_empty(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('prompt,chosen,rejected\n"Hi"," a"," b"\n"Hi",," b"\n')
    rows, rep = read_and_convert(str(path), "pairs")
    assert len(rows) == 1 and [(p.row, p.kind) for p in rep.problems] == [(2, "empty")]


def test_column_mapping_errors(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    with pytest.raises(MissingColumnsError, match="names column.*questn.*Found columns: bad, good, q"):
        read_and_convert(str(path), "pairs", column_mapping="prompt=questn")
    with pytest.raises(DataSourceError, match="must look like canonical=your_column"):
        read_and_convert(str(path), "pairs", column_mapping="prompt")


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        read_and_convert(str(tmp_path / "nope.jsonl"), "pairs")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataSourceError, match="unknown file type"):
        read_and_convert(str(tmp_path / "data.txt"), "pairs")


def test_hub_id_goes_through_load_dataset_and_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(
        DataSourceError, match=r"Could not load hub data set 'no-such-user/no-such-set'.*OFFLINE"
    ):
        read_and_convert("no-such-user/no-such-set", "hh_rlhf", split="train")


def test_convert_cli_writes_jsonl_and_dataset(tmp_path, capsys):
    path = write_jsonl(tmp_path / "ranked.jsonl", [{"p": P, "responses": [" a", " b"], "scores": [0.0, 2.0]}])
    main(["convert", "--input", str(path), "--format", "ranked", "--output", str(tmp_path / "out.jsonl"),
          "--column_mapping", "prompt=p"])  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": P, "chosen": " b", "rejected": " a", "margin": 2.0}]
    main(["convert", "--input", str(path), "--format", "ranked", "--output", str(tmp_path / "out"),
          "--column_mapping", "prompt=p", "--margin", "false"])  # fmt: skip
    assert load_from_disk(tmp_path / "out")[:] == {"prompt": [P], "chosen": [" b"], "rejected": [" a"]}
    assert "kept all 1 rows" in capsys.readouterr().out


def test_convert_cli_strict_exits_with_a_one_line_error(tmp_path):
    import subprocess
    import sys

    path = write_jsonl(tmp_path / "p.jsonl", [*EXPECTED, {"prompt": P, "chosen": " a", "rejected": " a"}])
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", "convert", "--input", str(path), "--format", "pairs",
         "--output", str(tmp_path / "o.jsonl"), "--strict", "true"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.returncode == 2
    assert "error: " in result.stderr and "row 3: chosen and rejected are the same text" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.jsonl").exists()
