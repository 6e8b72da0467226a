"""RL that shows when it goes wrong (pipeline.analysis.health): the report's warning box, PPO's collapse warning, max_kl."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from tests.conftest import TEST_SEED

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "ppo.yaml"


def records_of(sft_answers, ppo_answers, ppo_scores, ppo_log_ratio, ppo_logprob_per_token):
    rng = random.Random(0)
    records = []
    for i, (sft, ppo, score) in enumerate(zip(sft_answers, ppo_answers, ppo_scores)):
        sft_length, ppo_length = len(sft.split()) + 1, len(ppo.split()) + 1
        records.append({
            "prompt": f"Human: question {i}?\n\nAssistant:", "sft_response": sft, "ppo_response": ppo,
            "sft_ended": True, "ppo_ended": True, "sft_length": sft_length, "ppo_length": ppo_length,
            "sft_logprob": -1.2 * sft_length, "ppo_logprob": ppo_logprob_per_token * ppo_length,
            "ppo_log_ratio": ppo_log_ratio, "sft_reward_model_score": rng.gauss(0.5, 1.0),
            "ppo_reward_model_score": score, "sft_labeler_score": 0.0, "ppo_labeler_score": 0.0,
        })  # fmt: skip
    return records


N = 60  # held-out prompts: at least MIN_EVAL_PROMPTS, so that only the policy checks speak
SFT_ANSWERS = [f"Sure, here is a careful answer about topic {i} with some detail." for i in range(N)]
_rng = random.Random(1)
CHOSEN_SCORES = [_rng.gauss(1.0, 1.0) for _ in range(200)]  # p95 about 2.6


def test_the_seed_2_collapse_raises_every_warning():
    """What `make all` with seed 2 produced: "Happy" to every prompt, RM score 4.2, KL 14.7, entropy 0.2."""
    from pipeline.analysis.health import policy_checks

    records = records_of(SFT_ANSWERS, ["Happy"] * N, [4.156] * N, 14.7, -0.22)
    checks = policy_checks(records, CHOSEN_SCORES, max_kl=10.0)
    kinds = [w.split(":")[0] for w in checks["warnings"]]
    assert kinds == ["over-optimisation", "drift", "collapse", "collapse", "collapse"], checks["warnings"]
    assert "4.156 is above the 95th percentile" in checks["warnings"][0]
    assert "14.70 nats per answer, above the bound of 10" in checks["warnings"][1]
    assert "100% of the answers are one and the same answer ('Happy')" in checks["warnings"][4]


def test_a_healthy_policy_raises_none():
    from pipeline.analysis.health import policy_checks

    answers = [f"Sure! Here is a kind, on-topic answer about topic {i}." for i in range(N)]
    rng = random.Random(2)
    scores = [rng.gauss(1.2, 0.8) for _ in range(N)]
    checks = policy_checks(records_of(SFT_ANSWERS, answers, scores, 4.0, -1.0), CHOSEN_SCORES, max_kl=10.0)
    assert checks["warnings"] == [] and checks["most_common_answer_share"] == 1 / N


def test_quantile_matches_numpy():
    import numpy as np

    from pipeline.analysis.health import quantile

    rng = random.Random(3)
    values = [rng.random() for _ in range(37)]
    for q in (0.0, 0.5, 0.95, 1.0):
        assert quantile(values, q) == np.quantile(values, q)


def test_the_report_shows_the_warning_box_with_its_numbers(tmp_path):
    from pipeline.analysis.report import write_report
    from pipeline.analysis.summary import summarize
    from pipeline.evaluate import EvalArguments

    def report(records) -> str:
        args = EvalArguments(run_dir=str(tmp_path), labeler="data_prep.task:labeler_scores")
        result = summarize(records, [0.5, -0.1, 0.3], args, 1, chosen=CHOSEN_SCORES)
        return write_report(tmp_path, result, records, tmp_path / "none.jsonl").read_text()

    bad = report(records_of(SFT_ANSWERS, ["Happy"] * N, [4.156] * N, 14.7, -0.22))
    assert "> **Warning: this policy may be worse than its reward-model score says.**" in bad
    assert "> - PPO over-optimisation: the mean reward-model score 4.156" in bad
    assert "**Gain over SFT**: reward model" in bad and "labeler +0.000" in bad
    answers = [f"Sure! Here is a kind, on-topic answer about topic {i}." for i in range(N)]
    good = report(records_of(SFT_ANSWERS, answers, [1.0] * N, 4.0, -1.0))
    assert "Warning" not in good
    # healthy-looking, but the labeler says worse than SFT
    worse = [{**r, "ppo_labeler_score": -1.0} for r in records_of(SFT_ANSWERS, answers, [1.0] * N, 4.0, -1.0)]
    exploited = report(worse)
    assert "> **Warning: this policy may be worse than its reward-model score says.**" in exploited
    assert (
        "> - PPO exploitation: the reward-model score rose by" in exploited and "fell by -1.000" in exploited
    )
    # a healthy policy on 8 prompts: the evaluation's own warning, under its own title
    few = report(records_of(SFT_ANSWERS[:8], answers[:8], [1.0] * 8, 4.0, -1.0))
    assert "> **Warning: read this before the figures.**" in few
    assert "> - evaluation: only 8 evaluation prompts (fewer than 50)" in few


def test_collapse_watch_warns_once_when_entropy_halves():
    from pipeline.analysis.health import CollapseWatch

    watch = CollapseWatch()
    entropies = [1.0, 0.9, 0.7, 0.45, 0.3, 0.2]
    messages = [watch.update({"step": i + 1, "policy/entropy_avg": e, "response_length": 20.0})
                for i, e in enumerate(entropies)]  # fmt: skip
    assert [len(m) for m in messages] == [0, 0, 0, 1, 0, 0]
    assert "policy entropy fell from 1.000 at the first step to 0.450 at step 4" in messages[3][0]


def test_ppo_stops_at_max_kl_and_saves_that_policy(tiny_sft, tiny_data, tmp_path, capsys):
    """The run stops at the first step whose KL passes max_kl (the k1 estimate of a step may be below 0)."""
    from pipeline.ppo import main
    from tests.test_fault_cases import ppo_args

    out = tmp_path / "ppo"
    trainer = main(ppo_args(tiny_sft, tiny_data, out, "--total_episodes", "40", "--max_kl", "0.05"))
    kls = [json.loads(line)["objective/kl"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert trainer.step == len(kls) < 10 and kls[-1] > 0.05 and all(kl <= 0.05 for kl in kls[:-1]), kls
    assert f"Stopping at step {trainer.step} of 10: KL from the SFT policy" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").is_file()


def test_gold_evaluations_leave_training_unchanged(tiny_sft, tiny_data, tmp_path):
    """The gold curve's points sample on a forked RNG: with them on, training is the same to the last bit."""
    from safetensors.torch import load_file

    from pipeline.ppo import main
    from tests.test_fault_cases import ppo_args

    plain, gold = tmp_path / "plain", tmp_path / "gold"
    main(ppo_args(tiny_sft, tiny_data, plain, "--total_episodes", "12"))
    main(ppo_args(tiny_sft, tiny_data, gold, "--total_episodes", "12", "--eval_every", "2",
                  "--eval_reward_fn", "data_prep.task:labeler_scores", "--eval_prompts_path",
                  str(tiny_data / "eval_prompts"), "--eval_num_prompts", "8"))  # fmt: skip
    rows = [json.loads(line) for line in (gold / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/labeler_score" in r] == [
        1,
        2,
        3,
    ]  # the first, every 2nd, the last
    assert all(-3 <= r["eval/labeler_score"] <= 3 and math.isfinite(r["eval/kl"]) for r in rows[::2])
    for name in ("adapter_model.safetensors", "value_head.safetensors"):
        a, b = load_file(plain / name), load_file(gold / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def pays_for_rudeness(prompts, responses):
    """A broken reward: one point per rude word, which the built-in task's labeler punishes."""
    from data_prep.task import RUDE_WORDS

    return [float(sum(w.strip(".,!?").lower() in RUDE_WORDS for w in r.split())) for r in responses]


@pytest.mark.slow
def test_a_policy_that_games_its_reward_gets_the_warning_box(tiny_sft, tiny_data, tmp_path):
    """PPO trained for real on a reward that pays for rudeness: its reward rises, the labeler's score falls, and
    evaluation (scoring with the same function) opens the report with the warning box. The healthy counterpart is
    test_end_to_end, whose default run must raise no PPO warning."""
    from pipeline.evaluate import main as evaluate
    from pipeline.ppo import main as ppo

    out = tmp_path / "ppo"
    ppo(["--config", str(RECIPE), "--sft_model_path", str(tiny_sft), "--reward_model_path", "null",
         "--reward_fn", f"{__name__}:pays_for_rudeness", "--prompts_path", str(tiny_data / "prompts"),
         "--eval_prompts_path", "null", "--eval_every", "0", "--output_dir", str(out),
         "--total_episodes", "320", "--adaptive_kl", "false", "--kl_coef", "0.0", "--learning_rate", "2e-3",
         "--save_steps", "0", "--sample_every", "0", "--disable_tqdm", "true", "--seed", str(TEST_SEED)])  # fmt: skip
    result = evaluate([
        "--config", str(RECIPE.parent / "eval.yaml"), "--run_dir", str(tmp_path), "--sft_model_path", str(tiny_sft),
        "--ppo_model_path", str(out), "--reward_model_path", "null", "--reward_fn", f"{__name__}:pays_for_rudeness",
        "--eval_prompts_path", str(tiny_data / "eval_prompts"), "--preference_path", str(tiny_data / "preference"),
        "--num_prompts", "64",
    ])  # fmt: skip

    assert result["ppo_reward_model_score"] > result["sft_reward_model_score"] + 0.5, result
    assert result["ppo_labeler_score"] < result["sft_labeler_score"], result
    exploitation = [w for w in result["warnings"] if w.startswith("PPO exploitation")]
    assert exploitation and "while the labeler's fell" in exploitation[0], result["warnings"]
    report = (tmp_path / "report.md").read_text()
    box = report[: report.index("\n## ")]  # the warning box comes before the first section
    assert "> **Warning: this policy may be worse than its reward-model score says.**" in box
    assert "> - PPO exploitation: the reward-model score rose by" in box
