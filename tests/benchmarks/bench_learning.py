"""The learning tests under every CPU kernel set, thread count and seed: what each measures, its worst case.

Not a test (pytest does not collect it); `make test-kernels` runs it. A learning test's threshold has to hold on
any machine of the project's kind, and the arithmetic differs between machines: PyTorch picks its CPU kernels by
`ATEN_CPU_CAPABILITY` (`default`, `avx2`, `avx512` where the CPU has it), and one ulp early in training becomes
points of accuracy at the end. Each cell of the matrix runs the tests marked `learning` from scratch (the
session fixtures rebuild base, SFT and reward model) as `make test` runs them, with

    ATEN_CPU_CAPABILITY=<kernels> OMP_NUM_THREADS=<threads> RLHF_TEST_SEED=<seed> pytest -m learning tests

and each test appends its measured value to a log (`tests.conftest.record_learning`). The table gives, per
measurement, its threshold, the worst case over the matrix and the margin between them.

    .venv/bin/python -m tests.benchmarks.bench_learning                       # kernels x seeds 0-2, 1 thread
    .venv/bin/python -m tests.benchmarks.bench_learning --threads 1 2 --seeds 0 --jobs 1
    .venv/bin/python -m tests.benchmarks.bench_learning -k "base or sft or reward"   # the stages before PPO

`--report A.log.jsonl B.log.jsonl` prints one table from the logs of earlier runs. `--jobs 2` runs two cells at once (use with `--threads 1` on 2 cores). Kernel sets the CPU lacks are left out:
forcing `avx512` on a CPU without it would crash, not emulate it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.benchmarks.common import BENCH_DIR, PROJECT_PYTHON, REPO, invocation, machine_description

ORDER = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}


def native_kernels() -> str:
    """The kernel set PyTorch picks on this machine by itself (`torch.backends.cpu.get_cpu_capability()`)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    return subprocess.run(
        [str(PROJECT_PYTHON), "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def available_kernels() -> list[str]:
    """`default`, `avx2` and the machine's own, never one above what the CPU has."""
    native = native_kernels()
    return [k.lower() for k in ORDER if ORDER[k] <= ORDER.get(native, 0)]


def run_cell(kernels: str, threads: int, seed: int, log: Path, timeout: float, select: str) -> dict:
    env = dict(os.environ)
    env.update(
        ATEN_CPU_CAPABILITY=kernels,
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        RLHF_TEST_SEED=str(seed),
        RLHF_LEARNING_LOG=str(log),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        CI="1",
    )
    env.pop("RLHF_TEST_CACHE", None)  # every cell trains its own stages
    command = [str(PROJECT_PYTHON), "-m", "pytest", "-m", "learning", "-q", "-p", "no:cacheprovider", "tests"]
    if select:
        command += ["-k", select]
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [*command, "--basetemp", tmp],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    summary = (result.stdout.strip().splitlines() or [""])[-1]
    cell = f"{kernels}/{threads}t/seed {seed}"
    print(f"{cell}: {summary} ({time.time() - start:.0f} s)", flush=True)
    return {"kernels": kernels, "threads": threads, "seed": seed, "returncode": result.returncode,
            "summary": summary, "wall_s": time.time() - start}  # fmt: skip


def table(rows: list[dict]) -> str:
    """One line per measurement: threshold, every cell's value, worst case and its margin to the threshold."""
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    cells = sorted({(r["kernels"], r["threads"], r["seed"]) for r in rows})
    header = ["measurement", "threshold", *[f"{k} {t}t s{s}" for k, t, s in cells], "mean ± std", "worst",
              "margin"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, group in by_name.items():
        value = {(r["kernels"], r["threads"], r["seed"]): r["value"] for r in group}
        higher = group[0]["higher_is_better"]
        threshold = group[0]["threshold"]
        values = list(value.values())
        worst = min(values) if higher else max(values)
        margin = worst - threshold if higher else threshold - worst
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(
            "| " + " | ".join([
                name, f"{'>' if higher else '<'} {threshold}",
                *[f"{value[c]:.3f}" if c in value else "-" for c in cells],
                f"{statistics.fmean(values):.3f} ± {spread:.3f}", f"{worst:.3f}", f"{margin:+.3f}",
            ]) + " |"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="learning tests under each CPU kernel set, thread count and seed")
    p.add_argument("--kernels", nargs="+", default=None, help="default: default, avx2 and the machine's own")
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="cells run at once")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("-k", dest="select", default="", help="pytest -k: a subset of the learning tests")
    p.add_argument("--json", type=Path, default=BENCH_DIR / "learning.json")
    p.add_argument("--report", nargs="+", type=Path, help="only print the table of these logs (*.log.jsonl)")
    a = p.parse_args(argv)

    if a.report:  # e.g. the logs of several invocations, one table
        rows = [json.loads(line) for log in a.report for line in log.read_text().splitlines()]
        print(f"{machine_description()}\n`{invocation()}`\n\n{table(rows)}")
        return
    kernels = a.kernels or available_kernels()
    a.json.parent.mkdir(parents=True, exist_ok=True)
    log = a.json.with_suffix(".log.jsonl")
    log.unlink(missing_ok=True)
    grid = [(k, t, s) for k in kernels for t in a.threads for s in a.seeds]
    print(f"{len(grid)} cells: kernels {kernels}, threads {a.threads}, seeds {a.seeds}", flush=True)
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        cells = list(pool.map(lambda c: run_cell(*c, log, a.timeout, a.select), grid))
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    report = table(rows)
    a.json.write_text(json.dumps({"command": invocation(), "cells": cells, "rows": rows}, indent=1))
    print(f"\n{machine_description()}\n`{invocation()}`\n\n{report}")
    failed = [c for c in cells if c["returncode"] != 0]
    for c in failed:
        print(f"FAILED cell {c['kernels']}/{c['threads']}t/seed {c['seed']}: {c['summary']}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
