"""Which value head learns better on the built-in task: on the policy trunk ('shared') or its own adapter?

Not a test (pytest does not collect it). Run from the repo root after `make data base sft reward`:

    .venv/bin/python -m tests.benchmarks.bench_value_head
    .venv/bin/python -m tests.benchmarks.bench_value_head --variants shared adapter adapter:704 --seeds 0 1 2

Each variant is `value_head[:total_episodes]` (default: the recipe's budget). Each run is the tiny PPO recipe
as `make ppo` runs it (`python -m pipeline.ppo --config recipes/tiny/ppo.yaml --value_head ... --seed ...`,
checkpoints and sample tables off), followed by the evaluation stage against runs/tiny/sft on the held-out
prompts (`python -m pipeline.evaluate --config recipes/tiny/eval.yaml ...`): the labeler's mean score is the
measure of learning, next to the reward model's score, KL(PPO || SFT), and the PPO process's CPU seconds
(the compute each variant spent). The evaluation's sampling seed is fixed, so runs differ only by training.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pipeline.common.tables import markdown_table
from tests.benchmarks.common import (
    BENCH_DIR,
    PROJECT_PYTHON,
    REPO,
    bench_env,
    bench_value,
    check,
    invocation,
    machine_description,
    run_measured,
)


def parse_variant(text: str) -> tuple[str, int | None]:
    head, _, episodes = text.partition(":")
    if head not in ("shared", "adapter"):
        raise SystemExit(f"variant {text!r}: expected shared or adapter, optionally with :<total_episodes>")
    return head, int(episodes) if episodes else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="PPO value head on the trunk vs its own adapter, tiny recipe")
    p.add_argument("--variants", nargs="+", default=["shared", "adapter"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--json", type=Path, default=BENCH_DIR / "value_head.json")
    a = p.parse_args(argv)

    env = bench_env(a.threads)
    tiny = REPO / "runs" / "tiny"
    for stage in ("sft", "reward", "data"):
        if not (tiny / stage).exists():
            raise SystemExit(f"{tiny / stage} is missing: run `make data base sft reward` first.")

    raw, rows = [], []
    for variant in a.variants:
        head, episodes = parse_variant(variant)
        for seed in a.seeds:
            out = BENCH_DIR / "runs" / "value_head" / f"{variant.replace(':', '-')}-seed{seed}"
            ppo = [str(PROJECT_PYTHON), "-m", "pipeline.ppo", "--config", "recipes/tiny/ppo.yaml",
                   "--value_head", head, "--seed", str(seed), "--output_dir", str(out / "ppo"),
                   "--save_steps", "0", "--sample_every", "0", "--disable_tqdm", "true"]  # fmt: skip
            if episodes:
                ppo += ["--total_episodes", str(episodes)]
            print(f"[{variant} seed {seed}] PPO ...", flush=True)
            trained = check(run_measured(ppo, env, out / "ppo" / "metrics.jsonl", a.timeout), variant)
            evaluate = [str(PROJECT_PYTHON), "-m", "pipeline.evaluate", "--config", "recipes/tiny/eval.yaml",
                        "--run_dir", str(out), "--sft_model_path", str(tiny / "sft"),
                        "--reward_model_path", str(tiny / "reward"),
                        "--eval_prompts_path", str(tiny / "data" / "eval_prompts"),
                        "--preference_path", str(tiny / "data" / "preference")]  # fmt: skip
            print(f"[{variant} seed {seed}] eval ...", flush=True)
            check(run_measured(evaluate, env, timeout=a.timeout), f"{variant} eval")
            result = json.loads((out / "eval.json").read_text())
            run = dict(
                variant=variant,
                value_head=head,
                seed=seed,
                episodes=trained.episodes,
                ppo_cpu_s=trained.cpu_s,
                ppo_wall_s=trained.wall_s,
                ppo_peak_rss_mib=trained.peak_rss_mib,
                sft_labeler=result["sft_labeler_score"],
                ppo_labeler=result["ppo_labeler_score"],
                ppo_labeler_win_rate=result["ppo_labeler_win_rate"],
                ppo_reward_model_score=result["ppo_reward_model_score"],
                kl_ppo_from_sft=result["kl_ppo_from_sft"],
                ppo_command=ppo,
                eval_command=evaluate,
            )
            print(f"  {json.dumps({k: v for k, v in run.items() if 'command' not in k})}", flush=True)
            raw.append(run)
        runs = [r for r in raw if r["variant"] == variant]

        def mean(key, runs=runs):
            return statistics.fmean(r[key] for r in runs)

        per_seed = " / ".join(f"{r['ppo_labeler']:.2f}" for r in runs)
        rows.append(
            [head, runs[0]["episodes"], mean("ppo_labeler"), per_seed, min(r["ppo_labeler"] for r in runs),
             mean("ppo_labeler_win_rate"), mean("ppo_reward_model_score"), mean("kl_ppo_from_sft"),
             mean("ppo_cpu_s"), mean("ppo_wall_s"), max(r["ppo_peak_rss_mib"] for r in runs)]
        )  # fmt: skip

    print()
    print(f"Command: `{invocation()}`")
    print(f"Machine: {machine_description()}; {a.threads} threads; seeds {a.seeds}")
    print(f"SFT policy's labeler score on the same prompts: {raw[0]['sft_labeler']:.3f}")
    print()
    headers = ["value head", "episodes", "labeler (mean)", "labeler per seed", "labeler (worst seed)",
               "win rate vs SFT", "RM score", "KL (nats)", "PPO CPU s", "PPO wall s", "peak RSS (MiB)"]  # fmt: skip
    print("\n".join(markdown_table(headers, rows, bench_value)))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(dict(command=invocation(), runs=raw), indent=1))
    print(f"\n(raw results, with each run's exact commands: {a.json})")


if __name__ == "__main__":
    main()
