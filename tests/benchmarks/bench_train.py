"""SFT and reward-model training throughput (tokens per second) on the tiny recipe.

Not a test (pytest does not collect it). Run from the repo root, after `make data base`:

    .venv/bin/python -m tests.benchmarks.bench_train
    .venv/bin/python -m tests.benchmarks.bench_train --stages sft --max_steps 100
    .venv/bin/python -m tests.benchmarks.bench_train --stages sft --processes 2 --threads 1   # DDP, 2 CPU ranks

Each stage runs as users run it (`python -m pipeline.sft --config recipes/tiny/sft.yaml ...`), writing to
`.bench/runs/` instead of `runs/tiny`, with evaluation, checkpoints and trackers off so the training loop alone
is timed. Figures come from the trainer's own logs: `train_runtime` and `train_samples_per_second` (the
transformers Trainer) and `num_tokens` (TRL's count of non-padding tokens seen in training). Where TRL logs no
`num_tokens`, tokens/s is samples/s times the mean tokenized length of the training split. With `--processes N`
the stage runs under `accelerate launch` (recipes/accelerate/multi_cpu.yaml): both figures are then global (the
Trainer counts the global batch, TRL gathers num_tokens) and peak RSS is the largest single process.
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
from pathlib import Path

from pipeline.common.tables import markdown_table
from tests.benchmarks.common import (
    BENCH_DIR,
    REPO,
    bench_env,
    bench_value,
    check,
    invocation,
    launcher,
    machine_description,
    run_measured,
)

STAGES = {"sft": "pipeline.sft", "reward": "pipeline.reward"}


def logged_dicts(output: str) -> list[dict]:
    """The metric dicts a Trainer prints, one per line ({'loss': '0.97', ...}); values may be strings."""
    rows = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                row = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                continue
            if isinstance(row, dict):
                rows.append({k: _num(v) for k, v in row.items()})
    return rows


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def mean_tokens_per_example(stage: str, data_dir: Path, tokenizer_dir: Path) -> float:
    """Mean tokenized length of one training example: prompt+completion (SFT) or prompt+chosen+prompt+rejected."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    split = load_from_disk(str(data_dir / ("sft" if stage == "sft" else "preference")))["train"]
    if stage == "sft":
        texts = [p + c for p, c in zip(split["prompt"], split["completion"])]
        return statistics.mean(len(ids) + 1 for ids in tok(texts)["input_ids"])  # + EOS
    lengths = [
        len(a) + len(b) + 2
        for a, b in zip(
            tok([p + c for p, c in zip(split["prompt"], split["chosen"])])["input_ids"],
            tok([p + r for p, r in zip(split["prompt"], split["rejected"])])["input_ids"],
        )
    ]
    return statistics.mean(lengths)


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs]
    return statistics.median(values) if all(v is not None for v in values) else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description="SFT / reward-model training tokens per second on the tiny recipe"
    )
    p.add_argument("--stages", nargs="+", default=["sft", "reward"], choices=list(STAGES))
    p.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    p.add_argument("--processes", type=int, default=1, help=">1: data parallel through accelerate launch")
    p.add_argument("--max_steps", type=int, default=0, help=">0: override the recipe's budget")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", type=Path, default=BENCH_DIR / "train_results.json")
    a = p.parse_args(argv)

    env = bench_env(a.threads)
    runs = REPO / "runs" / "tiny"
    rows, raw = [], []
    for stage in a.stages:
        recipe = REPO / "recipes" / "tiny" / f"{stage}.yaml"
        if not recipe.exists():
            raise SystemExit(f"{recipe} is missing: the {stage} stage is not written yet.")
        out = BENCH_DIR / "runs" / "train" / stage
        cmd = [*launcher(STAGES[stage], a.processes), "--config", str(recipe.relative_to(REPO))]
        cmd += [
            "--output_dir",
            str(out),
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
        ]
        cmd += ["--disable_tqdm", "true", "--logging_steps", "10"]
        if a.max_steps:
            cmd += ["--max_steps", str(a.max_steps)]
        per_example = mean_tokens_per_example(stage, runs / "data", runs / "base")
        for i in range(a.repeats):
            print(f"[{stage}] run {i + 1}/{a.repeats} ...", flush=True)
            result = check(run_measured(cmd, env, timeout=a.timeout), stage)
            logs = logged_dicts(result.output)
            final = next((r for r in reversed(logs) if "train_runtime" in r), {})
            tokens = max(
                (r["num_tokens"] for r in logs if isinstance(r.get("num_tokens"), float)), default=None
            )
            runtime, sps = final.get("train_runtime"), final.get("train_samples_per_second")
            tok_s = tokens / runtime if tokens and runtime else (sps * per_example if sps else None)
            row = dict(
                stage=stage,
                processes=a.processes,
                threads_per_process=a.threads,
                train_runtime_s=runtime,
                samples_per_s=sps,
                num_tokens=tokens,
                tokens_per_s=tok_s,
                tokens_source="num_tokens/train_runtime" if tokens and runtime else "samples/s x mean length",
                mean_tokens_per_example=per_example,
                wall_s=result.wall_s,
                peak_rss_mib=result.peak_rss_mib,
                cpu_s=result.cpu_s,
                loadavg=result.loadavg,
                command=cmd,
            )
            print(
                f"  {json.dumps({k: v for k, v in row.items() if k != 'command'}, default=str)}", flush=True
            )
            raw.append(row)
        runs_of = [r for r in raw if r["stage"] == stage]
        rows.append(
            [stage, f"{a.processes} x {a.threads}", median_of(runs_of, "tokens_per_s"), median_of(runs_of, "samples_per_s"),
             median_of(runs_of, "train_runtime_s"), median_of(runs_of, "wall_s"),
             max(r["peak_rss_mib"] for r in runs_of), runs_of[0]["tokens_source"]]
        )  # fmt: skip

    print()
    print(f"Command: `{invocation()}`")
    print(f"Machine: {machine_description()}; {a.processes} process(es) x {a.threads} thread(s)")
    print()
    headers = [
        "stage",
        "processes x threads",
        "tokens/s",
        "samples/s",
        "train_runtime (s)",
        "wall (s)",
        "peak RSS (MiB)",
        "tokens counted as",
    ]
    print("\n".join(markdown_table(headers, rows, bench_value)))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(dict(command=invocation(), runs=raw), indent=1, default=str))
    print(f"\n(raw results, with each stage's exact command: {a.json})")


if __name__ == "__main__":
    main()
