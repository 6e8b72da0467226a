"""PPO benchmark: episodes per second and peak memory of our trainer vs `trl==1.12.0`'s experimental PPOTrainer.

Not a test (pytest does not collect it). Run from the repo root, after `make data base sft reward`:

    .venv/bin/python -m tests.benchmarks.bench_ppo                    # both model sizes
    .venv/bin/python -m tests.benchmarks.bench_ppo --sizes tiny --repeats 2
    .venv/bin/python -m tests.benchmarks.bench_ppo --sizes large xl --trainers ours-lora trl112-lora \
        --precision fp32 bf16 --repeats 3      # each trainer at each precision (bf16: bf16 weights + autocast)
    .venv/bin/python -m tests.benchmarks.bench_ppo --sizes tiny --trainers ours-lora --processes 2 --threads 1
    .venv/bin/python -m tests.benchmarks.bench_ppo --sizes tiny --trainers ours-lora --processes 2 --threads 1 \
        --engine zero3   # or zero2, zero3_offload, fsdp2 (through tests/fsdp_on_cpu.py): CPU figures only

Both trainers get the same policy, reward model, prompts and settings (batch, response length, PPO epochs,
mini-batches, total episodes, temperature, precision, CPU threads). `--precision bf16` is what the GPU recipes
run: every model's weights in bfloat16 (`dtype: bfloat16`) and bf16 autocast (`bf16: true`; TRL: `bf16=True`). The reference runs in its own virtualenv
(`.bench/trl112`, created here on first use) through `trl112_ppo_driver.py`, holding TRL's four full models.
Ours runs as users run it: `python -m pipeline.ppo --config recipes/tiny/ppo.yaml --field value ...`.

Model sizes:
  tiny   the tiny recipe's own models: runs/tiny/sft (ours: the LoRA adapter; TRL: sft/merged) + runs/tiny/reward
  large  a ~35M-parameter Llama (hidden 512, 10 layers, MLP 1536) with the tiny recipe's tokenizer, randomly
         initialised (seed 0) as a causal LM (policy) and as a one-label sequence classifier (reward model).
         Throughput and memory do not depend on the weights, except through response length: a random policy
         almost never emits EOS, so every response runs to `response_length` in both trainers.
  xl     the same family at ~108M parameters (hidden 768, 14 layers, 12 heads, MLP 2304).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
from pathlib import Path

from pipeline.common.outputs import checkpoints_dir
from pipeline.common.tables import markdown_table
from tests.benchmarks.common import (
    BENCH_DIR,
    ENGINE_CONFIGS,
    PROJECT_PYTHON,
    REPO,
    baseline_rss_mib,
    bench_env,
    bench_value,
    ensure_trl112_venv,
    invocation,
    launcher,
    machine_description,
    run_measured,
)

DRIVER = Path(__file__).resolve().parent / "trl112_ppo_driver.py"
# Random-init Llamas with the tiny tokenizer, one shape family: name -> (folder, shape).
RANDOM_MODELS = {
    "large": ("llama35m", dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=10, num_attention_heads=8)),
    "xl": ("llama108m", dict(hidden_size=768, intermediate_size=2304, num_hidden_layers=14, num_attention_heads=12)),
}  # fmt: skip

# Settings shared by both trainers, per model size. num_mini_batches and gradient_accumulation_steps stay 1:
# the two trainers define the rollout batch differently when they are >1 (TRL 1.12: per_device * grad_accum;
# ours: per_device * grad_accum * num_mini_batches), and with 1 both roll out per_device_train_batch_size
# prompts per step and take one optimizer step per PPO epoch.
TINY_SETTINGS = dict(
    total_episodes=96,
    per_device_train_batch_size=32,
    gradient_accumulation_steps=1,
    num_ppo_epochs=4,
    num_mini_batches=1,
    local_rollout_forward_batch_size=32,
    response_length=48,
    temperature=0.7,
    missing_eos_penalty=1.0,
    kl_coef=0.05,
    learning_rate=1e-5,
    seed=0,
)
SETTINGS = {
    "tiny": TINY_SETTINGS,
    # Same algorithm settings; fewer, smaller batches so the ~35M model fits the time budget on 2 cores.
    "large": {
        **TINY_SETTINGS,
        "total_episodes": 32,
        "per_device_train_batch_size": 16,
        "local_rollout_forward_batch_size": 16,
    },  # fmt: skip
}
SETTINGS["xl"] = SETTINGS["large"]
# Our flags per precision; the TRL driver takes --precision itself.
PRECISION_FLAGS = {
    "fp32": ["--bf16", "false", "--dtype", "float32"],
    "bf16": ["--bf16", "true", "--dtype", "bfloat16"],
}


def build_random_models(size: str, tokenizer_dir: Path) -> tuple[Path, Path]:
    """A Llama policy and reward model of `RANDOM_MODELS[size]`'s shape (random init, seed 0) with the tiny
    recipe's tokenizer."""
    folder, shape = RANDOM_MODELS[size]
    out = BENCH_DIR / "models" / folder
    policy_dir, reward_dir = out / "policy", out / "reward"
    if (policy_dir / "config.json").exists() and (reward_dir / "config.json").exists():
        return policy_dir, reward_dir
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=1,
        **shape,
    )
    for cls, path in ((LlamaForCausalLM, policy_dir), (LlamaForSequenceClassification, reward_dir)):
        torch.manual_seed(0)
        model = cls(config)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return policy_dir, reward_dir


def count_params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(file, "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                total += math.prod(f.get_slice(name).get_shape())
    return total


def tiny_stand_in_reward(base_dir: Path, out: Path = BENCH_DIR / "models" / "tiny_base_reward") -> Path:
    """A reward model on the tiny base (score head random, seed 0), for when runs/tiny/reward is not built yet."""
    if not (out / "config.json").exists():
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
        model.config.pad_token_id = AutoTokenizer.from_pretrained(base_dir).pad_token_id
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def model_paths(size: str) -> dict:
    runs = REPO / "runs" / "tiny"
    base = runs / "base"
    if not (base / "tokenizer.json").exists():
        raise SystemExit(f"{base} is missing: run `make data base` first (both sizes use its tokenizer).")
    if size == "tiny":
        sft, merged, reward = runs / "sft", runs / "sft" / "merged", runs / "reward"
        if (merged / "config.json").exists() and (reward / "config.json").exists():
            return dict(
                ours_policy=sft,
                trl_policy=merged,
                reward=reward,
                params_dir=merged,
                source="runs/tiny sft+reward",
            )
        # Before `make sft reward` has run: the tiny base model as the policy and a reward model on it.
        print(
            "runs/tiny/sft or runs/tiny/reward missing: using runs/tiny/base as the policy (stand-in).",
            flush=True,
        )
        return dict(ours_policy=base, trl_policy=base, reward=tiny_stand_in_reward(base), params_dir=base,
                    source="runs/tiny/base (stand-in for SFT) + reward head on it")  # fmt: skip
    policy, reward = build_random_models(size, base)
    return dict(ours_policy=policy, trl_policy=policy, reward=reward, params_dir=policy,
                source=f"random init {RANDOM_MODELS[size][0]}")  # fmt: skip


def ppo_recipe() -> Path:
    """The tiny recipe's ppo.yaml; an empty config before it exists (every field that matters is set below)."""
    recipe = REPO / "recipes" / "tiny" / "ppo.yaml"
    if recipe.exists():
        return recipe
    empty = BENCH_DIR / "empty_ppo.yaml"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_text("{}\n")
    return empty


def ours_command(
    settings: dict,
    policy: Path,
    reward: Path,
    prompts: Path,
    out: Path,
    extra: list[str],
    processes: int = 1,
    engine: str = "ddp",
) -> list[str]:
    # Data parallel: the per-process batch stays, so each PPO step rolls out `processes` times more episodes.
    args = [*launcher("pipeline.ppo", processes, engine), "--config", str(ppo_recipe())]
    fields = dict(
        settings, sft_model_path=policy, reward_model_path=reward, prompts_path=prompts, output_dir=out
    )
    for key, value in fields.items():
        args += [f"--{key}", str(value)]
    # Same conditions as the reference: the precision (in `extra`), no gradient checkpointing, no periodic saves or
    # sample tables.
    args += [
        "--gradient_checkpointing",
        "false",
        "--save_steps",
        "0",
        "--report_to",
        "none",
    ]
    # No held-out sampling either (TRL: num_sample_generations=0): no sample tables, no gold evaluations.
    args += ["--disable_tqdm", "true", "--save_merged", "false", "--sample_every", "0", "--eval_every", "0"]
    return args + extra


def trl_command(
    python: Path,
    settings: dict,
    policy: Path,
    reward: Path,
    prompts: Path,
    out: Path,
    threads: int,
    extra: list[str],
) -> list[str]:
    args = [str(python), str(DRIVER)]
    fields = dict(
        settings, sft_model_path=policy, reward_model_path=reward, prompts_path=prompts, output_dir=out
    )
    fields["metrics_path"] = out / "metrics.jsonl"
    for key, value in fields.items():
        args += [f"--{key}", str(value)]
    return args + ["--num_threads", str(threads), *extra]


def measure(
    name: str, command: list[str], out: Path, metrics: Path, env: dict, repeats: int, timeout: float
) -> dict:
    results = []
    for i in range(repeats):
        for old in (out, checkpoints_dir(out)):
            if old.exists():
                shutil.rmtree(old)
        out.mkdir(parents=True)
        print(f"  [{name}] run {i + 1}/{repeats} ...", flush=True)
        r = run_measured(command, env, metrics, timeout=timeout)
        if r.returncode != 0:  # keep what was measured: a run killed at the timeout still has its peak RSS
            raise SystemExit(
                f"exit {r.returncode} after {r.wall_s:.0f}s (timeout {timeout:.0f}s), {len(r.steps)} PPO steps "
                f"done, peak RSS {r.peak_rss_mib:.0f} MiB, load {r.loadavg[0]:.1f}->{r.loadavg[1]:.1f}\n"
                + r.output_tail
            )
        if len(r.steps) < 2:
            raise SystemExit(
                f"{name}: fewer than 2 PPO steps seen in {metrics}; cannot time steady state.\n{r.output_tail}"
            )
        print(
            f"    {r.episodes} episodes, wall {r.wall_s:.1f}s, first step done at {r.first_step_s():.1f}s, "
            f"steady {r.steady_eps():.2f} ep/s, peak RSS {r.peak_rss_mib:.0f} MiB, "
            f"CPU {r.cpu_s:.0f}s ({r.cpu_s_per_episode():.2f}/episode), load {r.loadavg[0]:.1f}->{r.loadavg[1]:.1f}",
            flush=True,
        )
        results.append(r)
    eps = [r.steady_eps() for r in results]
    # Our trainer's own phase timers (time/* in its metrics), mean over the steady steps of every repeat.
    steady = [row for r in results for _, row in r.steps[1:] if "time/step" in row]
    phases = {k.removeprefix("time/"): statistics.mean(row[k] for row in steady)
              for k in steady[0] if k.startswith("time/")} if steady else None  # fmt: skip
    return dict(
        phases=phases,
        name=name,
        command=command,
        steady_eps=statistics.median(eps),
        eps_runs=eps,
        overall_eps=statistics.median(r.episodes / r.wall_s for r in results),
        first_step_s=statistics.median(r.first_step_s() for r in results),
        wall_s=statistics.median(r.wall_s for r in results),
        peak_rss_mib=max(r.peak_rss_mib for r in results),
        cpu_s_per_episode=statistics.median(r.cpu_s_per_episode() for r in results),
        loadavg=[r.loadavg for r in results],
        episodes=results[0].episodes,
        step_s=[round(s, 2) for s in results[-1].step_seconds()],
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="PPO episodes/s and peak memory: ours vs trl==1.12.0")
    p.add_argument("--sizes", nargs="+", default=["tiny", "large"], choices=["tiny", *RANDOM_MODELS])
    p.add_argument("--trainers", nargs="+", default=["ours-lora", "ours-full", "trl112"],
                   choices=["ours-lora", "ours-lora-value-adapter", "ours-full", "trl112", "trl112-lora"])  # fmt: skip
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--episodes", type=int, default=0, help=">0: total episodes for every size (more steady-state steps)"
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every trainer (OMP/MKL/torch)")
    p.add_argument(
        "--processes", type=int, default=1, help=">1: our trainers under accelerate launch (DDP on CPU)"
    )
    p.add_argument(
        "--engine", default="ddp", choices=list(ENGINE_CONFIGS), help="with --processes >1: the launch config"
    )
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=list(PRECISION_FLAGS),
                   help="run every trainer at each precision (one row each)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    p.add_argument(
        "--ours_full_args",
        default="--use_peft false --value_head shared",
        help="our trainer's flags for full fine-tuning",
    )
    p.add_argument("--ours_args", default="", help="extra flags for every one of our trainers")
    p.add_argument("--json", type=Path, default=BENCH_DIR / "ppo_results.json")
    a = p.parse_args(argv)

    env = bench_env(a.threads)
    prompts = REPO / "runs" / "tiny" / "data" / "prompts"
    trl_python = ensure_trl112_venv() if any(t.startswith("trl") for t in a.trainers) else None
    baselines = {
        "ours": baseline_rss_mib(PROJECT_PYTHON, env, "torch, transformers, trl, peft, accelerate, datasets")
    }
    if trl_python:
        baselines["trl112"] = baseline_rss_mib(
            trl_python, env, "torch, transformers, trl, peft, accelerate, datasets"
        )

    all_rows = []
    for size in a.sizes:
        paths = model_paths(size)
        settings = dict(SETTINGS[size], **({"total_episodes": a.episodes} if a.episodes else {}))
        params = count_params(paths["params_dir"])
        print(
            f"== {size}: {params / 1e6:.2f}M parameters per model; settings {json.dumps(settings)}",
            flush=True,
        )
        for precision, trainer in ((p, t) for p in a.precision for t in a.trainers):
            out = BENCH_DIR / "runs" / size / f"{trainer}-{precision}"
            if trainer.startswith("ours"):
                # LoRA: the SFT adapter (tiny) or a fresh adapter on the plain model (large); full fine-tuning
                # starts from the same plain/merged model the reference gets.
                policy, extra = paths["ours_policy"], ["--use_peft", "true"]
                if trainer == "ours-full":
                    policy, extra = paths["trl_policy"], a.ours_full_args.split()
                elif trainer == "ours-lora-value-adapter":
                    extra += ["--value_head", "adapter"]
                extra += PRECISION_FLAGS[precision] + a.ours_args.split()
                cmd = ours_command(
                    settings, policy, paths["reward"], prompts, out, extra, a.processes, a.engine
                )
                # Read as it grows: the run writes its logs beside its checkpoints and publishes them at the end.
                metrics = checkpoints_dir(out) / "metrics.jsonl"
            else:
                extra = ["--lora_r", "16"] if trainer == "trl112-lora" else []
                extra += ["--precision", precision]
                cmd = trl_command(
                    trl_python, settings, paths["trl_policy"], paths["reward"], prompts, out, a.threads, extra
                )
                metrics = out / "metrics.jsonl"
            try:
                row = measure(trainer, cmd, out, metrics, env, a.repeats, a.timeout)
            except SystemExit as err:  # one broken trainer still leaves the others' rows
                print(f"  [{trainer}] FAILED: {str(err)[-1500:]}", flush=True)
                row = dict(name=trainer, command=cmd, error=str(err)[-1500:])
            row.update(size=size, params_m=params / 1e6, source=paths["source"], precision=precision)
            all_rows.append(row)

    headers = [
        "model",
        "trainer",
        "precision",
        "episodes",
        "steady ep/s",
        "overall ep/s",
        "1st step done (s)",
        "wall (s)",
        "peak RSS (MiB)",
        "CPU s/episode",
        "load avg",
    ]
    table = markdown_table(
        headers,
        [
            [f"{r['size']} ({r['params_m']:.1f}M)", r["name"], r["precision"]]
            + ([r["episodes"], r["steady_eps"], r["overall_eps"], r["first_step_s"], r["wall_s"], r["peak_rss_mib"],
                r["cpu_s_per_episode"], " ".join(f"{a:.1f}-{b:.1f}" for a, b in r["loadavg"])]
               if "error" not in r else ["FAILED (see the JSON)", None, None, None, None, None, None, None])
            for r in all_rows
        ],
        bench_value,
    )  # fmt: skip
    print()
    print(f"Command: `{invocation()}`")
    print(
        f"Machine: {machine_description()}; {a.threads} threads per process, {a.processes} process(es) for ours"
        + (f" ({a.engine})" if a.processes > 1 else "")
    )
    print(f"Import-only baseline peak RSS (MiB): {', '.join(f'{k} {v:.0f}' for k, v in baselines.items())}")
    print()
    print("\n".join(table))
    timed = [r for r in all_rows if r.get("phases")]
    if timed:
        names = ["generate", "forward", "reference", "reward", "update", "other", "step"]
        print(
            "\nOur trainer's phases, seconds per PPO step (its time/* metrics, mean of the steady steps):\n"
        )
        print("\n".join(markdown_table(
            ["model", "trainer", "precision", *names, "generated tok/s", "trained tok/s"],
            [[f"{r['size']} ({r['params_m']:.1f}M)", r["name"], r["precision"], *(r["phases"][n] for n in names),
              r["phases"]["generated_tokens_per_s"], r["phases"]["trained_tokens_per_s"]] for r in timed],
            bench_value,
        )))  # fmt: skip
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(
        json.dumps(dict(command=invocation(), baselines=baselines, rows=all_rows), indent=1, default=str)
    )
    print(f"\n(raw results, with each trainer's exact command: {a.json})")


if __name__ == "__main__":
    main()
