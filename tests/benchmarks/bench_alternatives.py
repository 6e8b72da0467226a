"""Stage 3's methods side by side on the built-in task: our PPO, and TRL's GRPO, RLOO and DPO, from the same SFT
model, reward model and prompts, graded on the same held-out prompts by evaluation's leaderboard.

Not a test. Per seed, in the run `make all SEED=N` made (built first when it is not there):

- **equal episodes**: every method at its recipe's budget, 1280 sampled answers for PPO, GRPO and RLOO (DPO: one
  epoch over the preference pairs, no sampling);
- **equal CPU time**: GRPO, RLOO and DPO given PPO's measured CPU seconds (their steps or epochs scaled by the
  ratio of CPU time of the equal-episode runs), evaluated in `<run>/equal-time/`.

Each training run is its own process: wall time, CPU time and peak RSS are its own (`common.run_measured`).

    .venv/bin/python -m tests.benchmarks.bench_alternatives                  # seeds 0, 1, 2
    .venv/bin/python -m tests.benchmarks.bench_alternatives --seeds 0 --run-name tiny-seed{seed}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

from tests.benchmarks.common import (
    BENCH_DIR,
    PROJECT_PYTHON,
    REPO,
    bench_env,
    check,
    invocation,
    machine_description,
    run_measured,
)

RECIPE = REPO / "recipes" / "tiny"
METHODS = ("ppo", "grpo", "rloo", "dpo")


def stage_command(
    stage: str, run: Path, out: Path, seed: int, *extra: str, recipe: Path = RECIPE
) -> list[str]:
    inputs = {
        "ppo": ["--sft_model_path", run / "sft", "--reward_model_path", run / "reward",
                "--prompts_path", run / "data" / "prompts", "--eval_prompts_path", run / "data" / "eval_prompts"],
        "grpo": ["--model_name_or_path", run / "sft", "--reward_model_path", run / "reward",
                 "--prompts_path", run / "data" / "prompts"],
        "dpo": ["--model_name_or_path", run / "sft", "--dataset_path", run / "data" / "preference"],
    }  # fmt: skip
    inputs["rloo"] = inputs["grpo"]
    return [str(PROJECT_PYTHON), "-m", f"pipeline.{stage}", "--config", str(recipe / f"{stage}.yaml"),
            *map(str, inputs[stage]), "--output_dir", str(out), "--seed", str(seed),
            "--overwrite_output_dir", "true", *extra]  # fmt: skip


def evaluate(run_dir: Path, env: dict, *extra: str, recipe: Path = RECIPE) -> dict:
    command = [str(PROJECT_PYTHON), "-m", "pipeline.evaluate", "--config", str(recipe / "eval.yaml"),
               "--run_dir", str(run_dir), *extra]  # fmt: skip
    check(run_measured(command, env, timeout=900), f"evaluation of {run_dir}")
    return json.loads((run_dir / "eval.json").read_text())


def ensure_run(seed: int, run_name: str) -> Path:
    run = REPO / "runs" / run_name
    if not all((run / part).exists() for part in ("data", "sft", "reward")):
        subprocess.run(["make", "data", "base", "sft", "reward", f"SEED={seed}", f"RUN_NAME={run_name}"],
                       cwd=REPO, check=True, capture_output=True)  # fmt: skip
    return run


def bench_seed(seed: int, run: Path, env: dict) -> list[dict]:
    measured = {}
    for stage in METHODS:
        result = run_measured(stage_command(stage, run, run / stage, seed), env, timeout=1800)
        measured[stage] = check(result, f"{stage} (seed {seed})")
        print(f"seed {seed} {stage}: {result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU, "
              f"{result.peak_rss_mib:.0f} MiB", flush=True)  # fmt: skip
    board = evaluate(run, env)["policies"]

    # Equal CPU time: PPO's CPU seconds for every method.
    equal = run / "equal-time"
    equal.mkdir(exist_ok=True)
    for part in ("data", "sft", "reward", "ppo"):
        link = equal / part
        if not link.exists():
            link.symlink_to(run / part)
    timed = {"ppo": measured["ppo"]}
    for stage in ("grpo", "rloo", "dpo"):
        ratio = measured["ppo"].cpu_s / measured[stage].cpu_s
        budget = (
            ["--num_train_epochs", f"{ratio:.3f}"]
            if stage == "dpo"
            else ["--max_steps", str(round(80 * ratio))]
        )
        result = run_measured(stage_command(stage, run, equal / stage, seed, *budget), env, timeout=1800)
        timed[stage] = check(result, f"{stage} at equal CPU time (seed {seed})")
        print(
            f"seed {seed} {stage} at PPO's CPU time ({' '.join(budget)}): {result.cpu_s:.1f} s CPU",
            flush=True,
        )
    timed_board = evaluate(equal, env)["policies"]

    rows = []
    for budget, board_, runs in (("equal episodes", board, measured), ("equal CPU time", timed_board, timed)):
        for stage in METHODS:
            policy, sft = board_[stage], board_["sft"]
            rows.append({
                "budget": budget, "method": stage, "seed": seed,
                "labeler_gain": policy["labeler_score"] - sft["labeler_score"],
                "reward_model_gain": policy["reward_model_score"] - sft["reward_model_score"],
                "kl_from_sft": policy["kl_from_sft"], "win_rate": policy["labeler_win_rate_vs_sft"],
                "wall_s": runs[stage].wall_s, "cpu_s": runs[stage].cpu_s, "peak_rss_mib": runs[stage].peak_rss_mib,
            })  # fmt: skip
    return rows


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--run-name", default="tiny-seed{seed}", help="the run of each seed, under runs/")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "alternatives.json")
    a = parser.parse_args()
    env = bench_env(a.threads)
    rows = []
    for seed in a.seeds:
        rows += bench_seed(seed, ensure_run(seed, a.run_name.format(seed=seed)), env)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(rows, indent=2))

    print(f"\n{invocation()}\n{machine_description()}\n")
    print(
        "| budget | method | seed | labeler gain | RM gain | KL (nats) | wins vs SFT | wall (s) | CPU (s) | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget']} | {r['method'].upper()} | {r['seed']} | {r['labeler_gain']:.2f} | "
              f"{r['reward_model_gain']:.2f} | {r['kl_from_sft']:.2f} | {r['win_rate']:.2f} | {r['wall_s']:.0f} | "
              f"{r['cpu_s']:.0f} | {r['peak_rss_mib']:.0f} |")  # fmt: skip
    print("\n| budget | method | labeler gain | KL (nats) | wall (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for budget in ("equal episodes", "equal CPU time"):
        for method in METHODS:
            sel = [r for r in rows if r["budget"] == budget and r["method"] == method]
            print(f"| {budget} | {method.upper()} | {mean_std([r['labeler_gain'] for r in sel])} | "
                  f"{mean_std([r['kl_from_sft'] for r in sel])} | {mean_std([r['wall_s'] for r in sel])} | "
                  f"{mean_std([r['peak_rss_mib'] for r in sel])} |")  # fmt: skip


if __name__ == "__main__":
    main()
