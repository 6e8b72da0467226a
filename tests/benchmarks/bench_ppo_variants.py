"""PPO's ablations over seeds: each variant of `recipes/tiny/ppo.yaml` (a set of overrides) trained from the same SFT
model and reward model per seed as its own process, graded by evaluation beside GRPO and RLOO at the same budget.

Not a test. Per seed, in the run `make all SEED=N` made (`--run-name`, built first when missing); each variant's
policy goes to `<run>/variants/<name>/policy`, evaluated there (`<run>/variants/<name>/eval.json`: 128 held-out prompts,
labeler gain over SFT, KL on the policy's own samples, the reward model's accuracy on pairs of the policy's own
answers). `--baselines grpo rloo` trains those at their recipe budget (1280 answers, as PPO) once per seed and
grades them the same way, for the rows to compare against.

    .venv/bin/python -m tests.benchmarks.bench_ppo_variants --run-name tiny-seed{seed}-avx512-fp32 \\
        --variant default= --variant adapter="--value_head adapter" --baselines grpo rloo
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path

from tests.benchmarks.bench_alternatives import ensure_run, evaluate, mean_std, stage_command
from tests.benchmarks.common import BENCH_DIR, bench_env, check, invocation, machine_description, run_measured


def link_inputs(run: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("data", "sft", "reward"):
        if not (folder / part).exists():
            (folder / part).symlink_to(run / part)


def final_metrics(ppo_dir: Path) -> dict:
    """Explained variance over the last 20 steps and the last step's KL coefficient, from PPO's metrics.jsonl."""
    rows = [json.loads(line) for line in (ppo_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-20:]
    return {
        "explained_variance": statistics.fmean(r["val/explained_variance"] for r in last),
        "kl_coef_end": rows[-1]["objective/kl_coef"],
        "train_kl_end": rows[-1]["objective/kl"],
    }


def run_variant(name: str, overrides: str, stage: str, run: Path, seed: int, env: dict) -> dict:
    folder = run / "variants" / name
    link_inputs(run, folder)
    command = stage_command(stage, run, folder / "policy", seed, *shlex.split(overrides))
    result = check(run_measured(command, env, timeout=1800), f"{name} (seed {seed})")
    # Every method's policy graded in the place of PPO's, alone beside SFT.
    policy = evaluate(folder, env, "--ppo_model_path", str(folder / "policy"))["policies"]
    sft, trained = policy["sft"], policy["ppo"]
    row = {
        "variant": name, "method": stage, "overrides": overrides, "seed": seed,
        "labeler_gain": trained["labeler_score"] - sft["labeler_score"], "kl_from_sft": trained["kl_from_sft"],
        "rm_accuracy_own": trained.get("rm_accuracy_on_own_samples"),
        "reward_model_gain": trained["reward_model_score"] - sft["reward_model_score"],
        "wall_s": result.wall_s, "cpu_s": result.cpu_s,
    }  # fmt: skip
    if stage == "ppo":
        row.update(final_metrics(folder / "policy"))
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--run-name", default="tiny-seed{seed}", help="the run of each seed, under runs/")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="a PPO variant: its name and its command-line overrides (empty: the recipe)")  # fmt: skip
    parser.add_argument("--baselines", nargs="*", default=[], choices=["grpo", "rloo"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "ppo_variants.json")
    a = parser.parse_args()
    variants = dict(v.split("=", 1) for v in a.variant) or {"default": ""}
    env = bench_env(a.threads)
    rows = []
    for seed in a.seeds:
        run = ensure_run(seed, a.run_name.format(seed=seed))
        for stage in a.baselines:
            rows.append(run_variant(stage, "", stage, run, seed, env))
        for name, overrides in variants.items():
            rows.append(run_variant(name, overrides, "ppo", run, seed, env))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(rows, indent=2))

    print(f"\n{invocation()}\n{machine_description()}\n")
    print("| variant | labeler gain | per seed | KL (nats) | per seed | RM acc. on own answers | expl. var. (last 20) "
          "| CPU (s) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == name]
        ev = [r["explained_variance"] for r in sel if "explained_variance" in r]
        own = [r["rm_accuracy_own"] for r in sel if r["rm_accuracy_own"] is not None]
        gains = " / ".join(f"{r['labeler_gain']:.2f}" for r in sel)
        kls = " / ".join(f"{r['kl_from_sft']:.2f}" for r in sel)
        print(f"| {name} | {mean_std([r['labeler_gain'] for r in sel])} | {gains} | "
              f"{mean_std([r['kl_from_sft'] for r in sel])} | {kls} | {mean_std(own) if own else '-'} | "
              f"{mean_std(ev) if ev else '-'} | {mean_std([r['cpu_s'] for r in sel])} |")  # fmt: skip


if __name__ == "__main__":
    main()
