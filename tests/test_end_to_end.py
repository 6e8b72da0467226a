"""The default recipe end to end: data -> base -> SFT -> reward -> PPO -> eval, on the built-in task.

The first stages come from conftest's session fixtures (the recipe's YAML with its own step counts); PPO and
eval run here exactly as `make ppo` / `make eval` do. What it must show: the PPO policy beats the SFT policy
on the programmatic labeler (the stand-in for human raters), and the reward model beats chance on held-out pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TEST_SEED, record_learning

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny"


@pytest.mark.slow
@pytest.mark.learning
def test_default_recipe_end_to_end(run_dir, tiny_data, tiny_sft, tiny_reward):
    from pipeline.evaluate import main as evaluate
    from pipeline.ppo import main as ppo

    ppo_dir = run_dir / "ppo"
    if not (ppo_dir / "adapter_config.json").exists():
        ppo([
            "--config", str(RECIPE / "ppo.yaml"),
            "--sft_model_path", str(tiny_sft), "--reward_model_path", str(tiny_reward),
            "--prompts_path", str(tiny_data / "prompts"), "--eval_prompts_path", str(tiny_data / "eval_prompts"),
            "--output_dir", str(ppo_dir), "--disable_tqdm", "true", "--seed", str(TEST_SEED),
        ])  # fmt: skip
    evaluate([
        "--config", str(RECIPE / "eval.yaml"),
        "--run_dir", str(run_dir),
        "--eval_prompts_path", str(tiny_data / "eval_prompts"), "--preference_path", str(tiny_data / "preference"),
    ])  # fmt: skip

    result = json.loads((run_dir / "eval.json").read_text())
    gain = result["ppo_labeler_score"] - result["sft_labeler_score"]
    record_learning("end to end: reward-model accuracy (eval stage)", result["reward_model_accuracy"], 0.6)
    record_learning("end to end: labeler gain of PPO over SFT", gain, 0.3)
    # Kernel sets x seeds 0-2 (BENCHMARKS.md, PPO's default since issue 37): accuracy 0.824 +- 0.022 (worst 0.785),
    # gain 1.23 +- 0.26 (worst 0.83; the old default's 0.83 +- 0.28, worst 0.46, had the bar at 0.1).
    assert result["reward_model_accuracy"] > 0.6, result
    assert gain > 0.3, result
    assert result["kl_ppo_from_sft"] > 0, result
    # The healthy run raises none of the checks that a reward-gaming policy raises (tests/analysis/test_health.py). Not the
    # p95 check: with these fixtures' base-started reward model a policy that is better than most chosen answers
    # can pass it (3.196 vs 3.153 under ATEN_CPU_CAPABILITY=default); `make all` raised it on none of 6 runs.
    kinds = {w.split(":")[0] for w in result["health"]["ppo"]["warnings"]}
    assert not kinds & {"exploitation", "collapse", "drift"}, result["health"]
    report = (run_dir / "report.md").read_text()
    for png in ("ppo_training.png", "reward_distributions.png"):
        assert f"](plots/{png})" in report
        data = (run_dir / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
