"""The rounds (pipeline/rounds/): comparisons from our own policy, rankings tied to them, the reward model's data
of round n, and the loop itself on the tiny run (collect, rank, reward, PPO, eval; twice; resumed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from datasets import Dataset, DatasetDict, load_from_disk

from data_prep import task
from data_prep.convert import convert_rows
from data_prep.validate import RowReport
from pipeline.analysis.health import policy_checks
from pipeline.analysis.summary import own_sample_pairs
from pipeline.common.config import ConfigError, UserError
from pipeline.common.models import load_scoring_function
from pipeline.rounds.collect import comparison_rows
from pipeline.rounds.comparisons import (
    COMPARISONS,
    RANKED,
    check_rankings,
    prompt_id,
    read_comparisons,
    write_jsonl,
)
from pipeline.rounds.config import RoundsConfig
from pipeline.rounds.preference import build_preference, is_held_out, ranking_pairs
from pipeline.rounds.rank import rank_with_labeler

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"\n\nHuman: Tell me about {t}.\n\nAssistant:" for t in ("cats", "dogs", "songs", "hats")]


def config(tmp_path: Path, **fields) -> RoundsConfig:
    values = {
        "output_dir": str(tmp_path / "rounds"),
        "sft_model_path": "runs/x/sft",
        "prompts_path": "p",
        **fields,
    }
    return RoundsConfig(**values)


def comparisons(n: int = 1, policy: str = "runs/x/sft") -> list[dict]:
    answers = [
        " Cats are soft. Hope this helps.",
        " Ugh. Dogs.",
        " Sure, glad to help. Songs are fun.",
        " Hats",
    ]
    header = {"round": n, "policy": {"path": policy, "fingerprint": "f"}, "sampling": {}, "seed": 0}
    return comparison_rows(PROMPTS, [(a, True) for p in PROMPTS for a in answers], len(answers), header)


def write_round(cfg: RoundsConfig, n: int, rows: list[dict]) -> Path:
    path = cfg.round_dir(n) / COMPARISONS
    write_jsonl(path, rows)
    return path


# --- collect -----------------------------------------------------------------------------------------------


def test_prompt_ids_are_stable_and_distinct():
    assert prompt_id(PROMPTS[0]) == prompt_id(str(PROMPTS[0]))
    assert len({prompt_id(p) for p in PROMPTS}) == len(PROMPTS)
    assert prompt_id(PROMPTS[0]) == "p-" + __import__("hashlib").sha256(PROMPTS[0].encode()).hexdigest()[:12]


def test_identical_answers_are_merged_and_a_prompt_with_one_answer_is_skipped():
    answers = [("a", True), ("b", False), ("a", True), ("a", True), ("c", True), ("c", True)]
    rows = comparison_rows(["p1", "p2", "p3"], answers, 2, {"round": 1})
    # p1: a, b (distinct); p2: a, a (one distinct answer: skipped); p3: c, c (skipped)
    assert [r["prompt"] for r in rows] == ["p1"]
    assert rows[0]["responses"] == ["a", "b"] and rows[0]["ended"] == [True, False]
    rows = comparison_rows(["p1"], [("x", True), ("y", True), ("x", True)], 3, {})
    assert rows[0]["responses"] == ["x", "y"] and rows[0]["num_sampled"] == 3


def test_k_of_one_and_other_bad_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="responses_per_prompt is 1: a ranking needs at least 2"):
        config(tmp_path, responses_per_prompt=1)
    with pytest.raises(ConfigError, match="policy_init"):
        config(tmp_path, policy_init="latest")
    with pytest.raises(ConfigError, match="Pass ROUND=n"):
        config(tmp_path).need_round()
    assert config(tmp_path).policy_of(1) == "runs/x/sft"
    assert config(tmp_path).policy_of(3) == str(tmp_path / "rounds" / "2" / "ppo")


# --- what a ranking must match -----------------------------------------------------------------------------


def test_comparisons_from_another_round_or_recipe_are_refused(tmp_path):
    cfg = config(tmp_path)
    path = write_round(cfg, 1, comparisons())
    assert len(read_comparisons(path, 1, "runs/x/sft")) == len(PROMPTS)
    with pytest.raises(UserError, match="belongs to another round or recipe"):
        read_comparisons(path, 1, "runs/other/sft")
    with pytest.raises(UserError, match="holds round 1's answers"):
        read_comparisons(path, 2, "runs/x/sft")
    rows = comparisons()
    rows[2]["id"] = "p-000000000000"
    write_round(cfg, 1, rows)
    with pytest.raises(UserError, match=r"row 3: id 'p-000000000000' is not its prompt's id"):
        read_comparisons(path, 1, "runs/x/sft")


def test_rankings_are_checked_row_by_row_and_nothing_is_kept_on_a_bad_one(tmp_path):
    cfg = config(tmp_path)
    path = write_round(cfg, 1, comparisons())
    by_id = read_comparisons(path, 1, "runs/x/sft")
    first, second, third = list(by_id.values())[:3]
    good = [
        {"id": first["id"], "ranks": [1, 3, 2, 3], "_row": 1},
        {"id": second["id"], "scores": [0.5, 1, 2, 0], "_row": 2},
    ]
    kept = check_rankings(tmp_path / "r.jsonl", good, by_id, path)
    assert [r["id"] for r in kept] == [first["id"], second["id"]] and kept[0]["responses"] == first[
        "responses"
    ]
    bad = [
        {"id": "p-123", "ranks": [1, 2, 3, 4], "_row": 1},
        {"id": first["id"], "ranks": [1, 2, 5, 3], "_row": 2},
        {"id": second["id"], "ranks": [1, 2], "_row": 3},
        {"id": third["id"], "scores": [1, 2, 3, float("nan")], "_row": 4},
        {"id": first["id"], "ranks": [1, 2, 3, 4], "_row": 5},
    ]
    with pytest.raises(UserError) as err:
        check_rankings(tmp_path / "r.jsonl", bad, by_id, path)
    message = str(err.value)
    assert "row 1: id 'p-123' is not among the comparisons" in message
    assert "row 2: ranks [1, 2, 5, 3] out of range; each is a whole number from 1 (best) to 4" in message
    assert "row 3: 2 ranks for 4 answers" in message
    assert "row 4: field 'scores' holds a value that is not a finite number" in message
    assert "row 5: id" in message and "is ranked twice (first in row 2)" in message
    assert "Nothing was kept" in message and "\n" not in message


def test_a_labeler_that_raises_or_miscounts_is_one_line(tmp_path, monkeypatch):
    module = tmp_path / "my_labeler.py"
    module.write_text(
        "def raises(prompts, responses):\n    return [1 / 0 for _ in responses]\n\n"
        "def short(prompts, responses):\n    return [1.0]\n\n"
        "def inf(prompts, responses):\n    return [float('inf')] * len(responses)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        UserError,
        match=r"labeler my_labeler:raises raised ZeroDivisionError: division by zero \(at .*my_labeler.py:2",
    ):
        load_scoring_function("my_labeler:raises", "labeler")(["p", "q"], ["a", "b"])
    with pytest.raises(UserError, match="labeler my_labeler:short returned 1 scores for 2 responses"):
        load_scoring_function("my_labeler:short", "labeler")(["p", "q"], ["a", "b"])
    by_id = read_comparisons(write_round(config(tmp_path), 1, comparisons()), 1, "runs/x/sft")
    with pytest.raises(
        UserError, match=r"my_labeler:inf's scores: row 1: field 'scores' holds a value that is not a finite"
    ):
        rank_with_labeler(by_id, "my_labeler:inf")


def test_make_rank_from_a_file_keeps_it_whole_or_not_at_all(tmp_path, capsys):
    from pipeline.common.config import run_main
    from pipeline.rounds.rank import main

    cfg = config(tmp_path)
    by_id = read_comparisons(write_round(cfg, 1, comparisons()), 1, "runs/x/sft")
    argv = ["--output_dir", cfg.output_dir, "--sft_model_path", "runs/x/sft", "--prompts_path", "p", "--round", "1",
            "--labeler", "null", "--from_file", str(tmp_path / "ranks.jsonl")]  # fmt: skip
    first, second = list(by_id)[:2]
    lines = [{"id": first, "ranks": [2, 1, 1, 4]}, {"id": second, "ranks": [1, 2, 3, 9]}]
    (tmp_path / "ranks.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(SystemExit):
        run_main(main, argv)
    assert "row 2: ranks [1, 2, 3, 9] out of range" in capsys.readouterr().err
    assert not (cfg.round_dir(1) / RANKED).exists()  # nothing half-imported
    lines[1]["ranks"] = [1, 2, 3, 3]
    (tmp_path / "ranks.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    main(argv)
    ranked = [json.loads(line) for line in (cfg.round_dir(1) / RANKED).read_text().splitlines()]
    assert [r["ranks"] for r in ranked] == [[2, 1, 1, 4], [1, 2, 3, 3]] and ranked[0]["responses"] == by_id[
        first
    ]["responses"]
    assert "2 of 4 prompts ranked (10 preference pairs): file:ranks.jsonl 2; 2 prompts not ranked" in (
        capsys.readouterr().out
    )
    with pytest.raises(UserError, match="exists already"):
        main(argv)
    # no labeler and no file: say how to rank
    (cfg.round_dir(1) / RANKED).unlink()
    with pytest.raises(UserError, match=r"make label ROUND=1\) or pass another tool's rankings"):
        main(argv[:-2])


# --- rankings -> the reward model's pairs ------------------------------------------------------------------


def test_the_labelers_rankings_are_the_ranked_format_data_prep_reads(tmp_path):
    cfg = config(tmp_path)
    by_id = read_comparisons(write_round(cfg, 1, comparisons()), 1, "runs/x/sft")
    rankings = rank_with_labeler(by_id, "data_prep.task:labeler_scores")
    prompts = [p for r in rankings for p in [r["prompt"]] * len(r["responses"])]
    assert [s for r in rankings for s in r["scores"]] == task.labeler_scores(
        prompts, [a for r in rankings for a in r["responses"]]
    )
    converted = convert_rows([dict(r) for r in rankings], "ranked", RowReport("ranked.jsonl"))
    assert converted == [p for r in rankings for p in ranking_pairs(r)] and converted


def test_round_n_trains_on_every_rounds_rankings_and_the_recipes_pairs(tmp_path):
    original = tmp_path / "preference"
    pair = {"prompt": "p", "chosen": "good", "rejected": "bad", "margin": 1.0}
    DatasetDict(train=Dataset.from_list([pair] * 5), test=Dataset.from_list([pair] * 3)).save_to_disk(
        str(original)
    )
    cfg = config(tmp_path, heldout_fraction=0.5, original_preference_path=str(original), round=2)
    for n in (1, 2):
        by_id = read_comparisons(write_round(cfg, n, comparisons(n, cfg.policy_of(n))), n, cfg.policy_of(n))
        write_jsonl(cfg.round_dir(n) / RANKED, rank_with_labeler(by_id, "data_prep.task:labeler_scores"))
    held = [prompt_id(p) for p in PROMPTS if is_held_out(prompt_id(p), 0.5)]
    assert 0 < len(held) < len(PROMPTS)  # this fraction splits these prompts (else the test proves nothing)
    data = load_from_disk(str(build_preference(cfg, 2)))
    per_round = sum(len(ranking_pairs(r)) for r in rank_with_labeler(read_comparisons(
        cfg.round_dir(1) / COMPARISONS, 1, cfg.policy_of(1)), "data_prep.task:labeler_scores"))  # fmt: skip
    assert set(data) == {"train", "test", "round_1", "round_2"}
    assert len(data["test"]) == 3  # the recipe's held-out pairs stay the held-out set
    assert len(data["round_1"]) + len(data["round_2"]) + len(data["train"]) - 5 == 2 * per_round
    held_prompts = {p for p in PROMPTS if prompt_id(p) in held}
    assert set(data["round_1"]["prompt"]) == set(data["round_2"]["prompt"]) == held_prompts
    assert not held_prompts & set(data["train"]["prompt"])
    assert data["train"].column_names == ["prompt", "chosen", "rejected", "margin"]
    # without the recipe's data: the rounds' held-out slices are the test split
    alone = config(tmp_path, heldout_fraction=0.5, round=2)
    data = load_from_disk(str(build_preference(alone, 2)))
    assert (
        len(data["test"]) == len(data["round_1"]) + len(data["round_2"])
        and "p" not in data["train"]["prompt"]
    )


# --- evaluation sees it ------------------------------------------------------------------------------------


def test_accuracy_on_own_samples_counts_the_pairs_the_labeler_orders():
    groups = [
        {
            "responses": ["a", "b", "c"],
            "rm_scores": [3.0, 2.0, 1.0],
            "labels": [1.0, 0.0, 0.0],
        },  # a>b ok, a>c ok, b=c tie
        {"responses": ["x", "y"], "rm_scores": [1.0, 1.0], "labels": [2.0, 1.0]},  # an RM tie counts wrong
        {"responses": ["u", "v"], "rm_scores": [0.0, 1.0], "labels": [2.0, 1.0]},  # wrong
    ]
    assert own_sample_pairs(groups) == {"accuracy": 2 / 4, "pairs": 4}
    assert own_sample_pairs([]) == {"accuracy": None, "pairs": 0}


def test_health_says_collect_a_new_round_when_the_reward_model_is_at_chance_on_the_policy():
    records = [{"prompt": "p", "sft_reward_model_score": 0.0, "ppo_reward_model_score": 0.1, "sft_length": 5,
                "ppo_length": 5, "sft_response": "a", "ppo_response": f"b{i}"} for i in range(4)]  # fmt: skip
    near_chance = {"rm_accuracy_on_own_samples": 0.49, "own_sample_pairs": 200}
    warnings = policy_checks(records, [], 10.0, "ppo", near_chance)["warnings"]
    assert any("only 49% of the time (200 pairs" in w and "make rounds" in w for w in warnings)
    for fine in ({"rm_accuracy_on_own_samples": 0.8, "own_sample_pairs": 200},
                 {"rm_accuracy_on_own_samples": 0.4, "own_sample_pairs": 10}):  # fmt: skip
        assert not any("make rounds" in w for w in policy_checks(records, [], 10.0, "ppo", fine)["warnings"])


# --- the loop ----------------------------------------------------------------------------------------------

ACCELERATE = Path(sys.executable).parent / "accelerate"


def small_recipe(tmp_path: Path, data: Path, sft: Path) -> Path:
    """recipes/tiny at test sizes, on the session's data and SFT policy (the loop finds them built)."""
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    run = tmp_path / "run"
    sizes = {
        "sft": {"output_dir": str(sft), "dataset_path": str(data / "sft")},
        "reward": {"model_name_or_path": str(sft), "max_steps": 6, "save_strategy": "no", "disable_tqdm": True},
        "ppo": {"sft_model_path": str(sft), "prompts_path": str(data / "prompts"), "total_episodes": 64,
                "eval_prompts_path": str(data / "eval_prompts"), "eval_every": 0, "save_steps": 0,
                "sample_every": 0},
        "eval": {"run_dir": str(run), "num_prompts": 16, "own_samples_num_prompts": 8, "num_report_samples": 2},
        "rounds": {"output_dir": str(run / "rounds"), "sft_model_path": str(sft), "prompts_path": str(data / "prompts"),
                   "eval_prompts_path": str(data / "eval_prompts"), "original_preference_path": str(data / "preference"),
                   "num_prompts": 12, "responses_per_prompt": 3, "heldout_fraction": 0.25, "ppo_total_episodes": 32},
    }  # fmt: skip
    for stage, changes in sizes.items():
        values = yaml.safe_load((REPO / "recipes/tiny" / f"{stage}.yaml").read_text())
        (recipe / f"{stage}.yaml").write_text(yaml.safe_dump({**values, **changes}))
    (recipe / "data.yaml").write_text(yaml.safe_dump({"source": "builtin", "output_dir": str(data)}))
    return recipe


def run_loop(recipe: Path, rounds: int, launch: str = "") -> None:
    from pipeline.rounds.loop import main

    main(
        [
            "--config",
            str(recipe / "rounds.yaml"),
            "--rounds",
            str(rounds),
            *(["--launch", launch] if launch else []),
        ]
    )


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_rounds_collect_rank_retrain_and_rl_again_resumably(tmp_path, tiny_data, tiny_sft, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    recipe = small_recipe(tmp_path, tiny_data, tiny_sft)
    rounds = tmp_path / "run" / "rounds"
    run_loop(recipe, 1)
    first = json.loads((rounds / "1" / COMPARISONS).read_text().splitlines()[0])
    assert (
        first["policy"]["path"] == str(tiny_sft) and first["round"] == 1 and 2 <= len(first["responses"]) <= 3
    )
    stamps = {p: p.stat().st_mtime for p in (rounds / "1").rglob("*") if p.is_file()}

    # Round 2 under `accelerate launch` with 2 processes; round 1 is found done and left alone.
    launch = (
        f"{ACCELERATE} launch --config_file {REPO / 'recipes/accelerate/multi_cpu.yaml'} --num_processes 2 -m"
    )
    run_loop(recipe, 2, launch)
    assert {p: p.stat().st_mtime for p in (rounds / "1").rglob("*") if p.is_file()} == stamps
    second = [json.loads(line) for line in (rounds / "2" / COMPARISONS).read_text().splitlines()]
    assert {r["policy"]["path"] for r in second} == {str(rounds / "1" / "ppo")} and second[0][
        "num_processes"
    ] == 2
    ppo = json.loads((rounds / "2" / "ppo" / "run.json").read_text())["config"]
    assert ppo["init_policy_path"] == str(rounds / "1" / "ppo") and ppo["sft_model_path"] == str(tiny_sft)
    assert ppo["reward_model_path"] == str(rounds / "2" / "reward") and ppo["total_episodes"] == 32
    data = load_from_disk(str(rounds / "2" / "preference"))
    assert {"round_1", "round_2"} <= set(data)
    reward = json.loads((rounds / "2" / "reward" / "eval_results.json").read_text())
    assert 0 <= reward["eval_accuracy_round_2"] <= 1 and reward["eval_pairs_round_2"] == len(data["round_2"])

    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    for r in result["rounds"]:
        evaluation = json.loads((rounds / str(r["round"]) / "eval.json").read_text())
        assert r["rm_accuracy_on_own_samples"] == evaluation["policies"]["ppo"]["rm_accuracy_on_own_samples"]
        assert r["labeler_score"] == evaluation["policies"]["ppo"]["labeler_score"] is not None
        assert r["reward_model"] == str(rounds / str(r["round"]) / "reward") and r["comparisons"] > 0
        assert 0 <= r["rm_accuracy_on_own_samples"] <= 1 and r["kl_from_sft"] >= 0
        assert r["ranked_by"] == {"labeler": r["comparisons"]} and r["rater_agreement"] is None  # no people
    report = (rounds / "report.md").read_text()
    assert (
        all(f"| labeler {r['comparisons']} |" in report for r in result["rounds"])
        and (rounds / "plots" / "rounds.png").is_file()
    )

    # A loop killed during round 2's evaluation goes on there: nothing else runs again.
    (rounds / "2" / "eval.json").unlink()
    before = (rounds / "2" / "reward" / "run.json").stat().st_mtime
    run_loop(recipe, 2)
    assert (rounds / "2" / "eval.json").is_file() and (
        rounds / "2" / "reward" / "run.json"
    ).stat().st_mtime == before
