"""Rounds against one reward model trained once: `make rounds ROUNDS=R SEED=N` and `make all SEED=N`, per seed.

Not a test. Each seed runs the rounds from scratch (they build the data, base and SFT policy first), then the
default job in the same folder (every one of its stages runs again: make's targets always run), timing both as a
user would run them on a fresh clone:

    make rounds ROUNDS=<R> SEED=<seed> RUN_NAME=tiny-rounds-seed<seed>
    make all SEED=<seed> RUN_NAME=tiny-rounds-seed<seed>

    .venv/bin/python -m tests.benchmarks.bench_rounds                 # seeds 0-2, 2 rounds
    .venv/bin/python -m tests.benchmarks.bench_rounds --seeds 1 --rounds 3 --args "--policy_init sft"

Prints per seed a table (round 0 is `make all`'s PPO: its reward model trained once, on the generator's answers):
comparisons, the reward model's accuracy on held-out pairs and on the policy's own answers, labeler score, KL; then
the issue's bars (last round: accuracy on own answers >= 0.70 on every seed; labeler above round 1 on every seed,
by >= 0.3 on the mean; KL <= 10) and the wall time of the rounds against twice `make all`'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from tests.benchmarks.common import BENCH_DIR, REPO, invocation, machine_description


def timed_make(target: list[str], timeout: float) -> float:
    began = time.monotonic()
    result = subprocess.run(["make", *target], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"make {' '.join(target)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.monotonic() - began


def run_seed(seed: int, rounds: int, extra: str, timeout: float) -> dict:
    name = f"tiny-rounds-seed{seed}"
    common = [f"SEED={seed}", f"RUN_NAME={name}"]
    subprocess.run(["rm", "-rf", str(REPO / "runs" / name)], check=True)
    rounds_seconds = timed_make(
        ["rounds", f"ROUNDS={rounds}", *common, *([f"ARGS={extra}"] if extra else [])], timeout
    )
    after = json.loads((REPO / "runs" / name / "eval.json").read_text())
    all_seconds = timed_make(["all", *common], timeout)
    before = json.loads((REPO / "runs" / name / "eval.json").read_text())
    ppo = before["policies"]["ppo"]
    round0 = {"round": 0, "comparisons": 0, "reward_model_accuracy": before["reward_model_accuracy"],
              "rm_accuracy_on_own_samples": ppo["rm_accuracy_on_own_samples"], "labeler_score": ppo["labeler_score"],
              "kl_from_sft": ppo["kl_from_sft"]}  # fmt: skip
    return {"seed": seed, "make_all_s": all_seconds, "make_rounds_s": rounds_seconds,
            "sft_labeler_score": before["policies"]["sft"]["labeler_score"], "rows": [round0, *after["rounds"]]}  # fmt: skip


def table(result: dict) -> str:
    lines = [f"seed {result['seed']} (SFT labeler {result['sft_labeler_score']:.3f}; make all {result['make_all_s']:.0f} s, "
             f"make rounds {result['make_rounds_s']:.0f} s)",
             "| round | comparisons | RM acc. held-out | RM acc. own answers | labeler | KL |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['round']} | {r['comparisons']} | {r['reward_model_accuracy']:.3f} | "
                     f"{r['rm_accuracy_on_own_samples']:.3f} | {r['labeler_score']:.3f} | {r['kl_from_sft']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--args", default="", help="extra options for the rounds (make rounds ARGS=...)")
    parser.add_argument("--timeout", type=float, default=3600)
    options = parser.parse_args()
    results = []
    for seed in options.seeds:
        results.append(run_seed(seed, options.rounds, options.args, options.timeout))
        print(table(results[-1]), flush=True)
    last = [r["rows"][-1] for r in results]
    first = [r["rows"][1] for r in results]
    gains = [a["labeler_score"] - b["labeler_score"] for a, b in zip(last, first)]
    summary = {
        "own_accuracy_last_round": [round(r["rm_accuracy_on_own_samples"], 3) for r in last],
        "labeler_last_minus_round1": [round(g, 3) for g in gains],
        "labeler_gain_mean": round(statistics.fmean(gains), 3),
        "kl_last_round": [round(r["kl_from_sft"], 2) for r in last],
        "rounds_time_over_make_all": [round(r["make_rounds_s"] / r["make_all_s"], 2) for r in results],
        "bars": {
            "own_accuracy >= 0.70 every seed": all(r["rm_accuracy_on_own_samples"] >= 0.70 for r in last),
            "labeler above round 1 every seed": all(g > 0 for g in gains),
            "labeler gain mean >= 0.3": statistics.fmean(gains) >= 0.3,
            "KL <= 10": all(r["kl_from_sft"] <= 10 for r in last),
            "rounds <= 2 x make all": all(r["make_rounds_s"] <= 2 * r["make_all_s"] for r in results),
        },
    }
    print(json.dumps(summary, indent=2))
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    out = BENCH_DIR / "bench_rounds.json"
    out.write_text(json.dumps({"command": invocation(), "machine": machine_description(), "results": results,
                               "summary": summary}, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
