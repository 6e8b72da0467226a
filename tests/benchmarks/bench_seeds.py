"""The default job's headline over seeds and CPU kernel sets: `make all SEED=N` under each `ATEN_CPU_CAPABILITY`.

Not a test. Each cell is the whole default job from scratch (data, base, SFT, reward, PPO, evaluation), every
stage's seed set to N, in its own folder (`runs/tiny-seedN-<kernels>`), as a user would run it:

    ATEN_CPU_CAPABILITY=<kernels> make all SEED=<seed> [PRECISION=<p>] RUN_NAME=tiny-seed<seed>-<kernels>[-<p>]

    .venv/bin/python -m tests.benchmarks.bench_seeds                          # seeds 0-2 x native and default
    .venv/bin/python -m tests.benchmarks.bench_seeds --seeds 2 --kernels avx512
    .venv/bin/python -m tests.benchmarks.bench_seeds --kernels avx512 --precisions fp32 bf16   # bf16 beside fp32

Prints per cell and as mean +- std: reward-model accuracy, labeler score of SFT and PPO and the gain, KL, the
report's warnings and the wall time, against issue 19's bars (accuracy >= 0.80, gain >= 0.5, KL <= 10).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from tests.benchmarks.bench_learning import native_kernels
from tests.benchmarks.common import BENCH_DIR, REPO, invocation, machine_description

BARS = {"reward_model_accuracy": (">=", 0.80), "labeler_gain": (">=", 0.5), "kl_ppo_from_sft": ("<=", 10.0)}


def run_cell(recipe: str, seed: int, kernels: str, timeout: float, precision: str | None = None) -> dict:
    name = f"{Path(recipe).name}-seed{seed}-{kernels}" + (f"-{precision}" if precision else "")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kernels}
    began = time.monotonic()
    command = ["make", "all", f"RECIPE={recipe}", f"SEED={seed}", f"RUN_NAME={name}"]
    if precision:
        command.append(f"PRECISION={precision}")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - began
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    ev = json.loads((REPO / "runs" / name / "eval.json").read_text())
    return {
        "seed": seed, "kernels": kernels, "precision": precision or "recipe", "seconds": seconds,
        "reward_model_accuracy": ev["reward_model_accuracy"], "sft_labeler_score": ev["sft_labeler_score"],
        "ppo_labeler_score": ev["ppo_labeler_score"], "labeler_gain": ev["ppo_labeler_score"] - ev["sft_labeler_score"],
        "sft_reward_model_score": ev["sft_reward_model_score"], "ppo_reward_model_score": ev["ppo_reward_model_score"],
        "kl_ppo_from_sft": ev["kl_ppo_from_sft"], "warnings": ev.get("warnings", []),
    }  # fmt: skip


def passes(row: dict) -> bool:
    return all(row[k] >= v if op == ">=" else row[k] <= v for k, (op, v) in BARS.items())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="recipes/tiny")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", default=[native_kernels().lower(), "default"])
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=[None],
        choices=["fp32", "bf16"],
        help="make all PRECISION=...: the recipe's stages in fp32 or bf16 (default: as the recipe says)",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "seeds.json")
    a = parser.parse_args()

    rows = []
    for precision in a.precisions:
        for kernels in a.kernels:
            for seed in a.seeds:
                row = run_cell(a.recipe, seed, kernels, a.timeout, precision)
                rows.append(row)
                print(json.dumps(row), flush=True)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(rows, indent=2))

    keys = [
        "reward_model_accuracy",
        "sft_labeler_score",
        "ppo_labeler_score",
        "labeler_gain",
        "kl_ppo_from_sft",
    ]
    print(f"\n{invocation()}\n{machine_description()}\n")
    print("| precision | kernels | seed | RM accuracy | labeler SFT | labeler PPO | gain | KL (nats) | RM score SFT -> PPO | "
          "warnings | make all (s) | bars |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r[k]:.3f}" for k in keys)
        print(f"| {r['precision']} | {r['kernels']} | {r['seed']} | {cells} | {r['sft_reward_model_score']:.2f} -> "
              f"{r['ppo_reward_model_score']:.2f} | {len(r['warnings'])} | {r['seconds']:.0f} | "
              f"{'pass' if passes(r) else 'FAIL'} |")  # fmt: skip
    for precision in dict.fromkeys(r["precision"] for r in rows):  # mean ± std per precision
        group = [r for r in rows if r["precision"] == precision]
        means = " | ".join(
            f"{statistics.fmean(r[k] for r in group):.3f} ± {statistics.stdev(r[k] for r in group) if len(group) > 1 else 0:.3f}"
            for k in keys
        )
        print(f"| {precision} | all | mean ± std | {means} | | | {statistics.fmean(r['seconds'] for r in group):.0f} | "
              f"{sum(map(passes, group))}/{len(group)} pass |")  # fmt: skip


if __name__ == "__main__":
    main()
