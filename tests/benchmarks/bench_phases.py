"""Where a PPO step's time goes under each engine: the trainer's own phase timers (`time/*` in metrics.jsonl)
for DDP, ZeRO-2, ZeRO-3 and FSDP2 on 2 CPU processes (gloo), the tiny recipe's models.

Not a test. On CPU these engines are a correctness harness, not a GPU forecast; what carries over is which phase
each engine's collectives land in (ZeRO-3 gathers the weights for every forward, FSDP2 for every decoding step).

    .venv/bin/python -m tests.benchmarks.bench_phases                       # runs/tiny's models, 1024 episodes
    .venv/bin/python -m tests.benchmarks.bench_phases --run runs/tiny-seed0 --engines ddp zero3
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tests.benchmarks.common import (
    BENCH_DIR,
    REPO,
    bench_env,
    check,
    invocation,
    launcher,
    machine_description,
    run_measured,
)

PHASES = ("generate", "forward", "reference", "reward", "update", "other")


def profile(engine: str, run: Path, episodes: int, processes: int, threads: int) -> dict:
    out = BENCH_DIR / "phases" / engine
    command = [*launcher("pipeline.ppo", processes, engine), "--config", str(REPO / "recipes/tiny/ppo.yaml"),
               "--sft_model_path", str(run / "sft"), "--reward_model_path", str(run / "reward"),
               "--prompts_path", str(run / "data/prompts"), "--eval_prompts_path", "null",
               "--total_episodes", str(episodes), "--save_steps", "0", "--sample_every", "0",
               "--save_merged", "false", "--overwrite_output_dir", "true", "--output_dir", str(out)]  # fmt: skip
    result = check(run_measured(command, bench_env(threads), timeout=1800), f"PPO under {engine}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # steady steps
    means = {p: statistics.fmean(r[f"time/{p}"] for r in rows) for p in (*PHASES, "step")}
    return {"engine": engine, "steps": len(rows) + 1, "wall_s": result.wall_s, **means}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", type=Path, default=REPO / "runs" / "tiny", help="a run with data, sft, reward"
    )
    parser.add_argument("--engines", nargs="+", default=["ddp", "zero2", "zero3", "fsdp2"])
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    a = parser.parse_args()
    rows = [profile(e, a.run, a.episodes, a.processes, a.threads) for e in a.engines]
    (BENCH_DIR / "phases.json").write_text(json.dumps(rows, indent=2))

    print(f"\n{invocation()}\n{machine_description()}\n")
    print(f"Mean seconds per step (steps 2-{rows[0]['steps']}; the slowest rank's), share of the step:\n")
    print("| engine | " + " | ".join(PHASES) + " | step | vs DDP |")
    print("|---" * (len(PHASES) + 3) + "|")
    ddp = next((r["step"] for r in rows if r["engine"] == "ddp"), None)
    for r in rows:
        cells = " | ".join(f"{r[p]:.3f} ({r[p] / r['step']:.0%})" for p in PHASES)
        ratio = f"{r['step'] / ddp:.2f}x" if ddp else "-"
        print(f"| {r['engine']} | {cells} | {r['step']:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
