"""People's rankings without the browser: the raters' files (nothing lost, nothing written twice), what an order
typed on the page means, merging raters and their agreement, imports from other tools (CSV, ranked .jsonl), and
a round pushed to the Hub as a data set (the fake Hub the model pushes use). The page itself: test_label_page.py."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.common.config import UserError
from pipeline.rounds.comparisons import COMPARISONS, RANKED, prompt_id, write_jsonl
from pipeline.rounds.labels import (
    agreement,
    append_record,
    check_rater,
    merge,
    parse_order,
    rater_file,
    read_rater_file,
    shown_order,
)
from tests.fake_hub import TOKEN, FakeHub

POLICY = "runs/x/sft"
TOPICS = ("cats", "dogs", "songs", "hats", "bees")


def make_round(folder: Path, n: int = 4, labeler: str | None = None) -> tuple[list[str], list[dict]]:
    rows = []
    for topic in TOPICS[:n]:
        prompt = f"\n\nHuman: Tell me about {topic}.\n\nAssistant:"
        answers = [
            f" Sure, glad to help. {topic.title()} are fun. Hope this helps.",
            f" Ugh. {topic.title()}.",
            f" {topic.title()} are soft.",
            " Rocks are big.",
        ]  # the labeler's order: 0, 2, 1, 3
        rows.append({"id": prompt_id(prompt), "prompt": prompt, "responses": answers,
                     "round": 1, "policy": {"path": POLICY, "fingerprint": "f"},
                     "sampling": {"temperature": 0.7, "max_new_tokens": 48}, "seed": 3})  # fmt: skip
    write_jsonl(folder / "rounds/1" / COMPARISONS, rows)
    args = ["--output_dir", str(folder / "rounds"), "--sft_model_path", POLICY, "--prompts_path", "p",
            "--round", "1", "--labeler", labeler or "null"]  # fmt: skip
    return args, rows


# --- what an order means -----------------------------------------------------------------------------------


def test_an_order_becomes_ranks_of_the_collected_answers_with_ties_and_unusable_answers():
    shown = [2, 0, 3, 1]  # A is collected answer 2, B is answer 0, ...
    assert parse_order("B A C D", shown) == [1, 4, 2, 3]
    assert parse_order("bacd", shown) == parse_order("B, A > C > D", shown) == [1, 4, 2, 3]
    assert parse_order("B=A C D", shown) == [1, 4, 1, 3]  # competition ranks: 1, 1, 3, 4
    assert parse_order("B A", shown, unusable=[3, 1]) == [1, 3, 2, 3]  # the flagged two share the last rank
    for bad, says in [("B A C", "D not ranked"), ("B A C D A", "A is named twice"), ("B A C E", "'E' is not"),
                      ("=B A C D", "'=' goes between"), ("B A C D=", "'=' goes between")]:  # fmt: skip
        with pytest.raises(ValueError, match=says):
            parse_order(bad, shown)


def test_answers_are_shuffled_per_prompt_and_rater_the_same_after_a_restart():
    ids = [prompt_id(f"prompt {i}") for i in range(400)]
    assert shown_order(ids[0], "ana", 4) == shown_order(ids[0], "ana", 4)
    assert any(shown_order(i, "ana", 4) != shown_order(i, "ben", 4) for i in ids[:10])
    first = Counter(shown_order(i, "ana", 4)[0] for i in ids)  # which answer is shown as A
    assert set(first) == {0, 1, 2, 3} and all(70 <= count <= 130 for count in first.values())


def test_a_rater_name_must_be_a_plain_file_name():
    assert check_rater(" ana.b-1 ") == "ana.b-1"
    for bad in ("", "../etc", "a/b", "x" * 41, ".hidden"):
        with pytest.raises(UserError, match="cannot name a file"):
            check_rater(bad)


# --- nothing lost, nothing twice ---------------------------------------------------------------------------


def test_a_crash_mid_append_loses_only_that_ranking_and_a_second_tab_writes_nothing(tmp_path):
    path = rater_file(tmp_path, "ana")
    assert append_record(path, {"id": "p-1", "ranks": [1, 2], "rater": "ana"})
    with open(path, "ab") as f:  # the power went off halfway through the next line
        f.write(b'{"id": "p-2", "ran')
    assert [r["id"] for r in read_rater_file(path)] == ["p-1"]
    assert append_record(path, {"id": "p-2", "ranks": [2, 1], "rater": "ana"})
    assert not append_record(
        path, {"id": "p-2", "ranks": [1, 2], "rater": "ana"}
    )  # already saved in another tab
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["p-1", "p-2"]
    path.write_text(path.read_text().replace('"p-1"', '"p-1" oops'))
    with pytest.raises(UserError, match=r"ana.jsonl: row 1 is not JSON"):
        read_rater_file(path)


# --- raters merged; agreement ------------------------------------------------------------------------------


def row(prompt: str, rater: str, **values) -> dict:
    return {"id": prompt, "prompt": prompt, "responses": ["a", "b", "c"], "rater": rater, **values}


def test_raters_merge_into_one_row_per_prompt_and_their_agreement_counts_decided_pairs():
    rows = [
        row("p1", "ana", ranks=[1, 2, 3]), row("p1", "ben", ranks=[1, 3, 2]),  # agree on 2 of 3 pairs
        row("p2", "ana", ranks=[1, 1, 3]), row("p2", "ben", scores=[0.1, 0.5, 0.9]),  # ana's tie: 2 decided, 0 agree
        row("p3", "ana", scores=[2.0, 1.0, 0.0]),  # one rater: kept as is, scores and all
    ]  # fmt: skip
    merged = {r["id"]: r for r in merge(rows)}
    assert merged["p1"]["ranks"] == [1, 2, 2] and merged["p1"]["rater"] == "ana+ben"
    assert merged["p1"]["by_rater"] == {"ana": [1, 2, 3], "ben": [1, 3, 2]}
    assert merged["p2"]["ranks"] == [2, 1, 2]  # ana 1,1,3 and ben (scores) 3,2,1 average to 2, 1.5, 2
    assert merged["p3"]["scores"] == [2.0, 1.0, 0.0] and "by_rater" not in merged["p3"]
    figures = agreement(rows)
    assert figures["pairs"] == 5 and figures["agreement"] == pytest.approx(2 / 5)
    assert figures["rater_pairs"] == {"ana/ben": {"prompts": 2, "pairs": 5, "agreement": pytest.approx(0.4)}}
    assert agreement([row("p1", "ana", ranks=[1, 2, 3])])["agreement"] is None  # nobody to agree with


# --- imports from other tools; make rank with people, a file and the labeler -------------------------------


def rank(args: list[str], *extra: str):
    from pipeline.rounds.rank import main

    main([*args, *extra])


def test_a_csv_from_another_tool_is_checked_row_by_row_and_imported_whole_or_not_at_all(tmp_path, capsys):
    args, rows = make_round(tmp_path)
    a, b = rows[0]["id"], rows[1]["id"]
    lines = ["id,answer,rank,rater", *(f"{a},{i},{r},ana" for i, r in enumerate([2, 1, 4, 3])),
             "p-nope,0,1,ana", f"{b},4,1,ana", f"{b},0,0,ana", f"{b},1,1,ana", f"{b},1,2,ana", f"{b},2,x,ana"]  # fmt: skip
    (tmp_path / "ranks.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        rank(args, "--from_file", str(tmp_path / "ranks.csv"))
    message = str(err.value)
    for expected in ("row 6: id 'p-nope' is not among the comparisons", f"row 7: answer '4' out of range; {b} has "
                     "answers 0..3", "row 8: rank '0' is not a whole number from 1 (best) to 4",
                     f"row 10: answer 1 of {b} is ranked twice by ana (first in row 9)", "row 11: rank 'x'",
                     f"row 9: {b} (ana) has no rank for answers [0, 2, 3]", "Nothing was imported"):  # fmt: skip
        assert expected in message
    assert not (tmp_path / "rounds/1" / RANKED).exists()
    (tmp_path / "ranks.csv").write_text(
        "\n".join(lines[:5] + [f"{b},{i},{r}" for i, r in enumerate([1, 1, 3, 4])])
    )
    rank(args, "--from_file", str(tmp_path / "ranks.csv"))
    ranked = [json.loads(line) for line in (tmp_path / "rounds/1" / RANKED).read_text().splitlines()]
    assert [(r["id"], r["ranks"], r["rater"]) for r in ranked] == [(a, [2, 1, 4, 3], "ana"),
                                                                  (b, [1, 1, 3, 4], "file:ranks.csv")]  # fmt: skip
    assert "2 of 4 prompts ranked" in capsys.readouterr().out
    with pytest.raises(UserError, match="header lacks \\['rank'\\]"):
        (tmp_path / "bad.csv").write_text("id,answer,score\n")
        (tmp_path / "rounds/1" / RANKED).unlink()
        rank(args, "--from_file", str(tmp_path / "bad.csv"))


def test_people_a_file_and_the_labeler_rank_one_round_together(tmp_path, capsys):
    args, rows = make_round(tmp_path, n=5, labeler="data_prep.task:labeler_scores")
    ids = [r["id"] for r in rows]
    folder = tmp_path / "rounds/1"
    append_record(rater_file(folder, "ana"), {"id": ids[0], "ranks": [1, 2, 3, 4], "rater": "ana"})
    append_record(rater_file(folder, "ana"), {"id": ids[1], "skipped": True, "rater": "ana"})
    append_record(rater_file(folder, "ben"), {"id": ids[0], "ranks": [4, 3, 2, 1], "rater": "ben",
                                              "unusable": [0]})  # fmt: skip
    tool = [{"id": ids[2], "scores": [0.4, 0.3, 0.2, 0.1], "rater": "cleo"},
            {"id": ids[0], "ranks": [1, 2, 3, 4], "rater": "cleo"}]  # fmt: skip
    (tmp_path / "tool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tool))
    rank(args, "--from_file", str(tmp_path / "tool.jsonl"))
    ranked = {r["id"]: r for r in map(json.loads, (folder / RANKED).read_text().splitlines())}
    assert list(ranked) == ids  # every prompt, in the round's order
    assert ranked[ids[0]]["rater"] == "ana+ben+cleo" and ranked[ids[0]]["ranks"] == [
        1,
        2,
        3,
        4,
    ]  # 2 of 3 agree
    assert ranked[ids[2]] == {"id": ids[2], "prompt": rows[2]["prompt"], "responses": rows[2]["responses"],
                              "scores": [0.4, 0.3, 0.2, 0.1], "rater": "cleo"}  # fmt: skip
    assert {ranked[i]["rater"] for i in ids[3:] + ids[1:2]} == {"labeler:data_prep.task:labeler_scores"}
    summary = json.loads((folder / "rank_summary.json").read_text())
    assert summary["by_rater"] == {"ana": 1, "ben": 1, "cleo": 2} and summary["filled_by_labeler"] == 3
    # each rater against the labeler (ranks 1, 3, 2, 4 on every prompt here) on the prompts they ranked
    assert summary["agreement_with_labeler"] == {
        "ana": {"prompts": 1, "pairs": 6, "agreement": pytest.approx(5 / 6)},
        "ben": {"prompts": 1, "pairs": 6, "agreement": pytest.approx(1 / 6)},
        "cleo": {"prompts": 2, "pairs": 12, "agreement": pytest.approx(10 / 12)},
    }
    # on prompt 0: ana/cleo agree on all 6 pairs, ben disagrees with both on all 6
    assert summary["agreement"]["pairs"] == 18 and summary["agreement"]["agreement"] == pytest.approx(6 / 18)
    out = capsys.readouterr().out
    assert "ana 1, ben 1, cleo 2, the labeler 3; raters agree on 33.3%" in out
    # a rater's file edited by hand into a wrong ranking is named, with its row
    (folder / RANKED).unlink()
    append_record(rater_file(folder, "dan"), {"id": ids[4], "ranks": [1, 2], "rater": "dan"})
    with pytest.raises(UserError, match=r"labels/dan.jsonl: row 1: 2 ranks for 4 answers"):
        rank(args, "--from_file", str(tmp_path / "tool.jsonl"))
    assert "with the labeler: ana 83.3% of 6, ben 16.7% of 6, cleo 83.3% of 12 pairs" in out


# --- a round on the Hub ------------------------------------------------------------------------------------


def push_data(args: list[str], *extra: str):
    from pipeline.rounds.push_data import main

    return main([*args, *extra])


def test_push_data_sends_both_tables_and_a_card_saying_who_ranked(tmp_path, hub, capsys):
    args, rows = make_round(tmp_path)
    folder = tmp_path / "rounds/1"
    append_record(rater_file(folder, "ana"), {"id": rows[0]["id"], "ranks": [1, 2, 3, 4], "rater": "ana"})
    append_record(rater_file(folder, "ben"), {"id": rows[0]["id"], "ranks": [1, 3, 2, 4], "rater": "ben"})
    rank(args)
    push_data(args, "--repo_id", "me/round-1")
    repo = hub.repos["me/round-1"]
    assert repo.repo_type == "dataset" and repo.visibility == "private"
    tables = {path.split("/")[0]: pq.read_table(io.BytesIO(data)).to_pylist() for path, data in repo.files.items()
              if path.endswith(".parquet")}  # fmt: skip
    assert [r["id"] for r in tables["comparisons"]] == [r["id"] for r in rows]
    assert tables["comparisons"][0]["responses"] == rows[0]["responses"]
    assert json.loads(tables["comparisons"][0]["sampling"]) == {"temperature": 0.7, "max_new_tokens": 48}
    assert tables["rankings"] == [{"id": rows[0]["id"], "prompt": rows[0]["prompt"], "responses": rows[0]["responses"],
                                   "ranks": [1.0, 2.0, 2.0, 4.0], "scores": None,
                                   "rater": "ana+ben", "by_rater": json.dumps({"ana": [1, 2, 3, 4], "ben": [1, 3, 2, 4]}),
                                   "unusable": []}]  # fmt: skip
    card = repo.files["README.md"].decode()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert [c["config_name"] for c in metadata["configs"]] == ["comparisons", "rankings"]
    for expected in (f"Policy: `{POLICY}`", "temperature=0.7, max_new_tokens=48; seed 3", "4 prompts, 16 answers",
                     "`ana`: 1 prompts", "`ben`: 1 prompts", "Agreement between raters: 83.3% of 6 answer pairs"):  # fmt: skip
        assert expected in card
    assert all(TOKEN.encode() not in data for data in repo.files.values())
    assert TOKEN not in capsys.readouterr().out


def test_push_data_dry_run_sends_nothing_and_offline_is_one_line(tmp_path, monkeypatch, capsys):
    args, rows = make_round(tmp_path)
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        push_data(args, "--dry_run", "true")
        assert fake.requests == []
    out = capsys.readouterr().out
    assert "Not ranked yet" in out and "Would push: comparisons (4 rows)" in out
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 is set and pushing needs the Hub"):
        push_data(args, "--repo_id", "me/x")
    with pytest.raises(Exception, match="name the data set as user/name"):
        push_data(args, "--repo_id", "nope")
