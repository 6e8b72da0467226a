"""Reward-model held-out accuracy by training variant x seed x CPU kernel set (issue 19's reward-model table).

Not a test. Each cell is one run of the real reward stage (`python -m pipeline.reward`) on a finished run's data,
from its base model or its SFT model, with the recipe's settings plus the variant's flags:

    .venv/bin/python -m tests.benchmarks.bench_reward --run_dir runs/tiny                  # 4 variants x seeds 0-2
    .venv/bin/python -m tests.benchmarks.bench_reward --variants pairwise grouped --kernels default avx512

Prints one table (accuracy mean +- std, worst, seconds per run) with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from tests.benchmarks.common import BENCH_DIR, PROJECT_PYTHON, REPO, invocation, machine_description

VARIANTS = {  # name -> (start model inside the run dir, extra flags)
    "pairwise": ("base", []),
    "grouped": ("base", ["--grouped", "true", "--packing", "false", "--per_device_train_batch_size", "8"]),
    "pairwise-sft": ("sft", []),
    "grouped-sft": ("sft", ["--grouped", "true", "--packing", "false", "--per_device_train_batch_size", "8"]),
}


def run_cell(run_dir: Path, variant: str, seed: int, kernels: str, extra: list[str], timeout: float) -> dict:
    start, flags = VARIANTS[variant]
    out = BENCH_DIR / "runs" / "reward" / f"{variant}-seed{seed}-{kernels}"
    command = [str(PROJECT_PYTHON), "-m", "pipeline.reward", "--config", str(REPO / "recipes/tiny/reward.yaml"),
               "--model_name_or_path", str(run_dir / start), "--dataset_path", str(run_dir / "data" / "preference"),
               "--output_dir", str(out), "--seed", str(seed), "--overwrite_output_dir", "true",
               "--disable_tqdm", "true", *flags, *extra]  # fmt: skip
    env = {**os.environ, "ATEN_CPU_CAPABILITY": kernels, "HF_HUB_OFFLINE": "1"}
    began = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"{variant} seed {seed} {kernels} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((out / "eval_results.json").read_text())
    return {"variant": variant, "seed": seed, "kernels": kernels, "accuracy": metrics["eval_accuracy"],
            "seconds": time.monotonic() - began}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run_dir", type=Path, default=REPO / "runs" / "tiny")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--kernels", nargs="+", default=["avx512"])
    parser.add_argument(
        "--extra", default="", help="more reward-stage flags for every cell, e.g. '--num_train_epochs 2'"
    )
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "reward_variants.json")
    a = parser.parse_args()

    rows = []
    for variant in a.variants:
        for kernels in a.kernels:
            for seed in a.seeds:
                row = run_cell(a.run_dir, variant, seed, kernels, a.extra.split(), a.timeout)
                print(f"  {variant:14s} seed {seed} {kernels:8s} accuracy {row['accuracy']:.3f} "
                      f"({row['seconds']:.0f} s)", flush=True)  # fmt: skip
                rows.append(row)
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(rows, indent=2))

    print(f"\n{invocation()}\n{machine_description()}\n")
    print("| variant | cells | held-out accuracy mean ± std | worst | s per run |")
    print("|---|---|---|---|---|")
    for variant in a.variants:
        cells = [r for r in rows if r["variant"] == variant]
        acc = [r["accuracy"] for r in cells]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        seconds = statistics.median(r["seconds"] for r in cells)
        print(
            f"| {variant} | {len(cells)} | {statistics.fmean(acc):.3f} ± {spread:.3f} | {min(acc):.3f} | {seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
