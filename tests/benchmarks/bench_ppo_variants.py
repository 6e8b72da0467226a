"""PPO's ablations over seeds: each variant of `recipes/tiny/ppo.yaml` (a set of overrides) trained from the same SFT
model and reward model per seed as its own process, graded by evaluation beside GRPO and RLOO at the same budget.

Not a test. Per seed, in the run `make all SEED=N` made (`--run-name`, built first when missing); each variant's
policy goes to `<run>/variants/<name>/policy`, evaluated there (`<run>/variants/<name>/eval.json`: 128 held-out prompts,
labeler gain over SFT, KL on the policy's own samples, the reward model's accuracy on pairs of the policy's own
answers). `--baselines grpo rloo` trains those at their recipe budget (1280 answers, as PPO) once per seed and
grades them the same way, for the rows to compare against.

    .venv/bin/python -m tests.benchmarks.bench_ppo_variants --run-name tiny-seed{seed}-avx512-fp32 \\
        --variant default= --variant shared="--value_head shared" --baselines grpo rloo --equal-cpu default

`--equal-cpu NAME` adds each baseline again at that variant's CPU seconds (its `max_steps` scaled, as
`bench_alternatives` does); `--reuse` takes runs a folder already holds (`row.json`, same overrides) instead of
training them again; `--recipe recipes/custom-example --run-name custom-example --seeds 0` runs another recipe's
stages (built first with `make all RECIPE=...`); `--reward-scale 8` trains and grades against a copy of the reward
model whose score head is 8x (`<run>/reward-x8`, variants in `<run>/variants-x8/`): the same ranking on a wider
scale, for the KL controller's sake.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
from pathlib import Path

from safetensors.torch import load_file, save_file

from tests.benchmarks.bench_alternatives import RECIPE, ensure_run, evaluate, mean_std, stage_command
from tests.benchmarks.common import (
    BENCH_DIR,
    REPO,
    bench_env,
    check,
    invocation,
    machine_description,
    run_measured,
)

BASELINE_STEPS = 80  # GRPO's and RLOO's max_steps in recipes/tiny: 1280 answers, PPO's episodes


def link_inputs(run: Path, folder: Path, reward: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for part, target in (("data", run / "data"), ("sft", run / "sft"), ("reward", reward)):
        if not (folder / part).exists():
            (folder / part).symlink_to(target)


def scaled_reward_model(run: Path, scale: float) -> Path:
    """`<run>/reward-x<scale>`: the run's reward model with its score head times `scale`, the same ranking on a wider
    scale (a reward model whose scores span tens of units, as one trained longer or on other data may)."""
    out = run / f"reward-x{scale:g}"
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "reward", tmp)
    for file in (tmp / "model.safetensors", tmp / "adapter" / "adapter_model.safetensors"):
        if file.is_file():
            weights = load_file(file)
            weights.update({k: v * scale for k, v in weights.items() if k.split(".")[-2] == "score"})
            save_file(weights, file, metadata={"format": "pt"})
    tmp.rename(out)
    return out


def final_metrics(ppo_dir: Path) -> dict:
    """Explained variance over the last 20 steps and the last step's KL coefficient, from PPO's metrics.jsonl."""
    rows = [json.loads(line) for line in (ppo_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-20:]
    return {
        "explained_variance": statistics.fmean(r["val/explained_variance"] for r in last),
        "kl_coef_end": rows[-1]["objective/kl_coef"],
        "train_kl_end": rows[-1]["objective/kl"],
    }


def run_variant(
    name: str,
    overrides: str,
    stage: str,
    run: Path,
    seed: int,
    env: dict,
    recipe: Path,
    reward_scale: float = 1.0,
    reuse: bool = False,
) -> dict:
    reward = run / "reward" if reward_scale == 1 else scaled_reward_model(run, reward_scale)
    folder = run / ("variants" if reward_scale == 1 else f"variants-x{reward_scale:g}") / name
    done = folder / "row.json"  # --reuse: a finished run with the same overrides is not trained again
    earlier = json.loads(done.read_text()) if reuse and done.is_file() else None
    if earlier and earlier["overrides"] == overrides:
        print(f"reused {done}", flush=True)
        return earlier
    link_inputs(run, folder, reward)
    command = stage_command(stage, folder, folder / "policy", seed, *shlex.split(overrides), recipe=recipe)
    result = check(run_measured(command, env, timeout=1800), f"{name} (seed {seed})")
    # Every method's policy graded in the place of PPO's, alone beside SFT.
    policy = evaluate(folder, env, "--ppo_model_path", str(folder / "policy"), recipe=recipe)["policies"]
    sft, trained = policy["sft"], policy["ppo"]
    row = {
        "variant": name, "method": stage, "overrides": overrides, "seed": seed, "reward_scale": reward_scale,
        "rm_score_sft": sft["reward_model_score"], "rm_score_std_sft": sft["reward_model_score_std"],
        "labeler_gain": trained["labeler_score"] - sft["labeler_score"], "kl_from_sft": trained["kl_from_sft"],
        "rm_accuracy_own": trained.get("rm_accuracy_on_own_samples"),
        "reward_model_gain": trained["reward_model_score"] - sft["reward_model_score"],
        "wall_s": result.wall_s, "cpu_s": result.cpu_s,
    }  # fmt: skip
    if stage == "ppo":
        row.update(final_metrics(folder / "policy"))
    done.write_text(json.dumps(row, indent=2))
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
    parser.add_argument("--recipe", type=Path, default=RECIPE,
                        help="the recipe folder whose stage configs and eval.yaml the runs use")  # fmt: skip
    parser.add_argument(
        "--reward-scale",
        type=float,
        default=1.0,
        help="train and grade against the reward model with its score head times this (variants-x<S>/)",
    )
    parser.add_argument("--baselines", nargs="*", default=[], choices=["grpo", "rloo"])
    parser.add_argument("--equal-cpu", metavar="VARIANT",
                        help="also run each baseline at this variant's CPU time (its max_steps scaled by the ratio "
                        "of CPU seconds on that seed): rows <baseline>-at-<VARIANT>-cpu")  # fmt: skip
    parser.add_argument("--reuse", action="store_true",
                        help="take runs already finished with the same overrides (their row.json) as they are")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "ppo_variants.json")
    a = parser.parse_args()
    a.recipe = a.recipe.resolve()
    variants = dict(v.split("=", 1) for v in a.variant) or {"default": ""}
    env = bench_env(a.threads)
    rows = []
    for seed in a.seeds:
        name = a.run_name.format(seed=seed)
        run = (
            ensure_run(seed, name) if a.recipe == RECIPE else REPO / "runs" / name
        )  # (other recipes: make all first)
        common = (run, seed, env, a.recipe, a.reward_scale, a.reuse)
        baselines = {stage: run_variant(stage, "", stage, *common) for stage in a.baselines}
        ppo = {name: run_variant(name, overrides, "ppo", *common) for name, overrides in variants.items()}
        rows += [*baselines.values(), *ppo.values()]
        if a.equal_cpu:  # as bench_alternatives: the baseline's steps scaled by the ratio of CPU seconds
            for stage, base in baselines.items():
                steps = round(BASELINE_STEPS * ppo[a.equal_cpu]["cpu_s"] / base["cpu_s"])
                rows.append(
                    run_variant(f"{stage}-at-{a.equal_cpu}-cpu", f"--max_steps {steps}", stage, *common)
                )
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
