"""Bad input data: every case is one clear `error:` line (exit 2) or a reported, listed drop; never a traceback,
never a NaN or a changing schema in the output. Error lines go through the real command line, data in-process."""

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_prep.__main__ import main
from data_prep.sources import read_and_convert
from data_prep.validate import DROPPED_FILE, BadRowError

REPO = Path(__file__).resolve().parents[2]
P = "\n\nHuman: Hi\n\nAssistant:"
PAIR = {"prompt": P, "chosen": " a", "rejected": " b"}


def cli(*args):
    """`python -m data_prep ...` as a user runs it: (exit code, stdout, stderr)."""
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", *map(str, args)], capture_output=True, text=True, cwd=REPO
    )
    return result.returncode, result.stdout, result.stderr


def convert(*args):
    return main(["convert", *map(str, args)])


def assert_one_error_line(code, stderr, *words):
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def ranked(scores, key="scores", i=0):
    return {"prompt": f"{P} {i}", "responses": [" a", " b", " c"][: len(scores)], key: scores}


# --- 1. NaN / Inf / non-numbers in scores, ranks and margins ------------------------------------------------

NUMBER_CASES = [  # (row, reason, field); json.dumps writes NaN, Infinity and -Infinity as Python's json reads them
    (ranked([1.0, math.nan, 2.0]), "not finite", "scores"),
    (ranked([1.0, math.inf]), "not finite", "scores"),
    (ranked([-math.inf, 0.0]), "not finite", "scores"),
    (ranked([1, math.nan, 2], key="ranks"), "not finite", "ranks"),
    (ranked([True, False]), "not a number", "scores"),
    (ranked(["1", "2"]), "not a number", "scores"),
    ({**ranked([1.0, 2.0]), "ranks": [1, math.nan]}, "not finite", "ranks"),  # the unused column too
]


def test_non_finite_and_non_numeric_ranked_values_are_dropped_with_their_field(tmp_path):
    good = ranked([0.0, 1.0], i=99)
    path = jsonl(tmp_path / "r.jsonl", [row for row, _, _ in NUMBER_CASES] + [good])
    rows, rep = read_and_convert(path, "ranked")
    assert rows == [{"prompt": good["prompt"], "chosen": " b", "rejected": " a", "margin": 1.0}]
    assert [(p.row, p.kind, p.field) for p in rep.problems] == [
        (i, kind, field) for i, (_, kind, field) in enumerate(NUMBER_CASES, start=1)
    ]
    assert "field 'scores' item 1 is nan" in rep.problems[0].detail


def test_nan_in_csv_and_parquet_ranked_rows_and_in_pair_margins(tmp_path):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [ranked([1.0, math.nan]), ranked([1.0, 3.0], i=1)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")  # pandas would store NaN as null
    frame = pd.DataFrame(rows)
    csv_frame = frame.assign(**{c: frame[c].map(json.dumps) for c in ("responses", "scores")})
    csv_frame.to_csv(tmp_path / "r.csv", index=False)  # cells like '[1.0, NaN]'
    for name in ("r.parquet", "r.csv"):
        rows, rep = read_and_convert(str(tmp_path / name), "ranked")
        assert [r["margin"] for r in rows] == [2.0], name
        assert [(p.row, p.kind, p.field) for p in rep.problems] == [(1, "not finite", "scores")], name

    margins = [math.nan, math.inf, True, "big", 0.5]
    path = jsonl(
        tmp_path / "p.jsonl", [{**PAIR, "chosen": f" c{i}", "margin": m} for i, m in enumerate(margins)]
    )
    rows, rep = read_and_convert(path, "pairs")
    assert [r["margin"] for r in rows] == [0.5]
    assert [(p.kind, p.field) for p in rep.problems] == [("not finite", "margin")] * 2 + [
        ("not a number", "margin")
    ] * 2

    # CSV cells are strings: a numeric margin is read, "nan"/"inf" are reported
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected,margin\nHi,a,b,1.5\nHi,c,d,nan\nHi,e,f,inf\n")
    rows, rep = read_and_convert(str(tmp_path / "p.csv"), "pairs")
    assert [r["margin"] for r in rows] == [1.5]
    assert [(p.row, p.kind, p.field) for p in rep.problems] == [
        (2, "not finite", "margin"),
        (3, "not finite", "margin"),
    ]


def test_nan_is_an_error_under_strict(tmp_path):
    path = jsonl(tmp_path / "r.jsonl", [ranked([0.0, 1.0], i=1), ranked([1.0, math.nan])])
    with pytest.raises(
        BadRowError, match=r"r.jsonl: row 2: field 'scores' item 1 is nan; it must be a finite"
    ):
        read_and_convert(path, "ranked", strict=True)


# --- 2. one schema for every split, whatever the rows hold ------------------------------------------------------


def test_rows_mixing_ranks_and_scores_give_splits_with_the_same_columns(tmp_path, capsys):
    # train's first row has ranks (no margin), test's has scores: Dataset.from_list took each split's columns
    # from its first row, so train lost `margin` and test kept it.
    train = [ranked([1, 2], "ranks", 0)] + [ranked([0.0, 1.0], i=i) for i in range(1, 6)]
    test = [ranked([0.0, 1.0], i=10), ranked([1, 2], "ranks", 11)]
    config = tmp_path / "data.yaml"
    config.write_text(
        f"source: datasets\noutput_dir: {tmp_path / 'data'}\npreference_format: ranked\n"
        f"preference_data: {jsonl(tmp_path / 'train.jsonl', train)}\n"
        f"preference_test_data: {jsonl(tmp_path / 'test.jsonl', test)}\n"
    )
    main(["build", "--config", str(config)])
    pref = load_from_disk(tmp_path / "data" / "preference")
    assert pref["train"].features == pref["test"].features
    assert pref["train"].column_names == ["prompt", "chosen", "rejected"]
    assert "margin dropped: only 6 of 8 pairs have one" in capsys.readouterr().out

    out = tmp_path / "out.jsonl"  # convert: every line holds the same keys
    convert("--input", tmp_path / "test.jsonl", "--format", "ranked", "--output", out)
    assert {tuple(json.loads(line)) for line in out.read_text().splitlines()} == {
        ("prompt", "chosen", "rejected")
    }


# --- 3. encodings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8_input_is_one_clear_error(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    text = (
        json.dumps(PAIR) + "\n" + json.dumps({**PAIR, "prompt": "café"}, ensure_ascii=False) + "\n"
        if suffix == ".jsonl"
        else "prompt,chosen,rejected\ncafé,a,b\n"
    )
    path.write_bytes(text.encode("latin-1"))
    code, _, err = cli("convert", "--input", path, "--format", "pairs", "--output", tmp_path / "out")
    assert_one_error_line(code, err, str(path), "not UTF-8", "0xe9", "line 2", "Re-save it as UTF-8")


def test_a_utf8_bom_costs_no_row(tmp_path):
    bom = b"\xef\xbb\xbf"
    rows = [PAIR, {**PAIR, "chosen": " c"}]
    files = {
        "b.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
        "b.json": json.dumps(rows),
        "b.csv": "prompt,chosen,rejected\n" + "".join(f'"{P}",{r["chosen"]},{r["rejected"]}\n' for r in rows),
    }
    for name, text in files.items():
        (tmp_path / name).write_bytes(bom + text.encode())
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(bom + files["b.jsonl"].encode()))
    for name in [*files, "b.jsonl.gz"]:
        out, rep = read_and_convert(str(tmp_path / name), "pairs")
        assert out == rows and rep.total == 2 and not rep.problems, (name, rep.summary())


# --- 4. empty, ragged and corrupt files ------------------------------------------------------------------------


def _truncated_parquet(path):
    import pandas as pd

    pd.DataFrame([PAIR] * 50).to_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN_FILES = {  # name -> (write it, words the error line must hold)
    "empty.csv": (lambda p: p.write_bytes(b""), ["is empty", "header line"]),
    "header.csv": (
        lambda p: p.write_text("prompt,chosen,rejected\n"),
        ["holds no rows (only a header line)"],
    ),
    "empty.jsonl": (lambda p: p.write_text("\n\n"), ["holds no rows", "point to the right file"]),
    "random.parquet": (
        lambda p: p.write_bytes(bytes(range(256)) * 4),
        ["not a readable Parquet file", "JSONL"],
    ),
    "truncated.parquet": (_truncated_parquet, ["not a readable Parquet file", "truncated"]),
    "truncated.jsonl.gz": (
        lambda p: p.write_bytes(gzip.compress(json.dumps(PAIR).encode() * 100)[:40]),
        ["not a readable gzip file"],
    ),
}


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_unreadable_files_are_one_clear_error(tmp_path, name):
    write, words = BROKEN_FILES[name]
    write(tmp_path / name)
    code, _, err = cli(
        "convert", "--input", tmp_path / name, "--format", "pairs", "--output", tmp_path / "out"
    )
    assert_one_error_line(code, err, str(tmp_path / name), *words)
    assert not (tmp_path / "out").exists()


def test_a_ragged_csv_row_is_a_reported_drop(tmp_path):
    # csv rather than pandas: pandas failed the whole file (ParserError); now the row is dropped by number
    path = tmp_path / "ragged.csv"
    path.write_text("prompt,chosen,rejected\nHi,a,b\nHi,c,d,extra\nHi,e\n\nHi,f,g\n")
    rows, rep = read_and_convert(str(path), "pairs")
    assert [r["chosen"] for r in rows] == ["a", "f"]
    assert [(p.row, p.kind) for p in rep.problems] == [(2, "wrong field count"), (3, "wrong field count")]
    assert "4 fields but the header has 3" in rep.problems[0].detail
    with pytest.raises(BadRowError, match="ragged.csv: row 2: the row has 4 fields"):
        read_and_convert(str(path), "pairs", strict=True)


# --- 5. --help, and an empty config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--help"], ["python -m data_prep build|convert --help"]),
        (["build", "--help"], ["usage: python -m data_prep build", "--preference_data"]),
        (
            ["convert", "--help"],
            ["usage: python -m data_prep convert", "--column_mapping", "--strict"],
        ),
        (["convert", "-h"], ["usage: python -m data_prep convert"]),
    ],
)
def test_help_exits_0(args, words):
    code, out, err = cli(*args)
    assert code == 0 and "error:" not in err, (out, err)
    assert all(word in out for word in words), out


def test_an_empty_config_file_is_one_clear_error(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    code, _, err = cli("build", "--config", tmp_path / "empty.yaml")
    assert_one_error_line(code, err, str(tmp_path / "empty.yaml"))


# --- 6. every dropped row in a file next to the output -------------------------------------------------------


def test_convert_lists_every_dropped_row_next_to_the_output(tmp_path, capsys):
    # 5 x "chosen equals rejected" (more than the printed summary shows), an empty prompt, a broken line
    bad = [{**PAIR, "chosen": " b"}] * 5 + [{**PAIR, "prompt": ""}, "{broken"]
    path = jsonl(tmp_path / "p.jsonl", [PAIR, *bad])
    for output, listing in ((tmp_path / "out", tmp_path / "out" / DROPPED_FILE),
                            (tmp_path / "o.jsonl", tmp_path / f"o.{DROPPED_FILE}")):  # fmt: skip
        convert("--input", path, "--format", "pairs", "--output", output)
        printed = capsys.readouterr().out
        assert (
            "rows 2, 3, 4, ..." in printed
            and f"Every dropped row is listed in {listing} (7 entries)" in printed
        )
        dropped = [json.loads(line) for line in listing.read_text().splitlines()]
        assert [(d["row"], d["reason"], d["field"]) for d in dropped] == [
            *[(i, "chosen equals rejected", None) for i in range(2, 7)],
            (7, "empty", "prompt"),
            (8, "invalid JSON", None),
        ]
        assert {d["source"] for d in dropped} == {path}
    assert len(load_from_disk(tmp_path / "out")) == 1

    # a clean rerun leaves an empty list, never the old one
    convert("--input", jsonl(tmp_path / "p.jsonl", [PAIR]), "--format", "pairs", "--output", tmp_path / "out")
    assert (tmp_path / "out" / DROPPED_FILE).read_text() == ""
    assert f"No rows dropped ({tmp_path / 'out' / DROPPED_FILE} is empty)" in capsys.readouterr().out


def test_build_lists_every_dropped_row_and_globs_name_the_file(tmp_path, capsys):
    rows = [ranked([0.0, 1.0], i=i) for i in range(8)]
    jsonl(tmp_path / "part1.jsonl", rows[:4])
    jsonl(tmp_path / "part2.jsonl", [*rows[4:], ranked([1.0, math.nan], i=20)])  # row 5 of part2
    config = tmp_path / "data.yaml"
    config.write_text(
        f"source: datasets\noutput_dir: {tmp_path / 'data'}\npreference_format: ranked\n"
        f"preference_data: {tmp_path / 'part*.jsonl'}\n"
    )
    main(["build", "--config", str(config)])
    listing = tmp_path / "data" / DROPPED_FILE
    dropped = [json.loads(line) for line in listing.read_text().splitlines()]
    assert [(d["source"], d["row"], d["reason"], d["field"]) for d in dropped] == [
        (str(tmp_path / "part2.jsonl"), 5, "not finite", "scores")
    ]
    printed = capsys.readouterr().out
    assert (
        "1 not finite (rows part2.jsonl:5)" in printed
        and f"Every dropped row is listed in {listing} (1 entry)" in printed
    )

    main(["build", "--config", str(REPO / "recipes/tiny/data.yaml"), "--output_dir", str(tmp_path / "builtin"),
          "--num_pretrain", "100", "--num_sft_train", "20", "--num_sft_test", "5", "--num_preference_prompts", "10",
          "--num_preference_test_prompts", "5", "--num_rl_prompts", "10", "--num_eval_prompts", "5"])  # fmt: skip
    assert (tmp_path / "builtin" / DROPPED_FILE).read_text() == ""  # always written, so never stale


def test_a_build_that_leaves_a_needed_data_set_empty_stops_at_make_data(tmp_path):
    """RL prompts that name every preference prompt leave no held-out prompt training never saw: the build stops
    saying so (before: a warning, then PPO's raw IndexError); and a size setting of 0 names what needs the set."""
    prompts = [f"{P} {i}" for i in range(8)]
    rows = [
        {"prompt": prompts[i % 8], "responses": [f" a{i}", f" b{i}"], "scores": [0.0, 1.0]} for i in range(80)
    ]
    config = tmp_path / "data.yaml"
    config.write_text(
        f"source: datasets\noutput_dir: {tmp_path / 'data'}\npreference_format: ranked\n"
        f"preference_data: {jsonl(tmp_path / 'ranked.jsonl', rows)}\n"
        f"rl_prompts_data: {jsonl(tmp_path / 'prompts.jsonl', [{'prompt': p} for p in prompts])}\n"
    )
    code, _, stderr = cli("build", "--config", config)
    assert_one_error_line(
        code, stderr, "leaves eval_prompts empty", "also appear in training", "eval_prompts_data"
    )
    assert not (tmp_path / "data").exists()  # nothing written

    config.write_text(
        "\n".join(config.read_text().splitlines()[:-1]) + "\nnum_rl_prompts: 0\n"
    )  # no RL prompts
    code, _, stderr = cli("build", "--config", config)
    assert_one_error_line(
        code, stderr, "leaves prompts empty, which PPO, GRPO, RLOO and the rounds cannot run"
    )
    assert not (tmp_path / "data").exists()
