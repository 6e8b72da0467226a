"""SFT and reward under `accelerate launch` with 2 CPU processes (recipes/accelerate/multi_cpu.yaml).

What data parallelism must guarantee, checked on the real stage scripts: each rank trains on different examples,
gradients are synchronised (identical weights on both ranks at the end), only the main process writes the
artifact, and a reported held-out metric is the global one, not one rank's share.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ACCELERATE, RECIPE, REPO

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def launch_two_ranks(stage: str, yaml_name: str, overrides: list[str], probe_dir: Path) -> None:
    command = [
        str(ACCELERATE), "launch", "--config_file", str(REPO / "recipes/accelerate/multi_cpu.yaml"),
        "--num_processes", "2", "-m", "tests.rank_probe", stage, "--config", str(RECIPE / yaml_name), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "RANK_PROBE_DIR": str(probe_dir), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def read_ranks(probe_dir: Path) -> list[dict]:
    ranks = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("rank*.json"))]
    assert [r["rank"] for r in ranks] == [0, 1], "both processes must run the stage"
    return ranks


def assert_data_parallel(ranks: list[dict], num_examples: int, batch_size: int) -> None:
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"], (
        "both ranks drew the same examples: data not sharded"
    )
    # Each rank sees about half the data: steps per epoch halve compared with one process.
    assert ranks[0]["steps_per_epoch"] == pytest.approx(num_examples / (2 * batch_size), abs=1)
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    # Gradients are all-reduced: both ranks take the same optimizer steps and end with the same weights.
    assert ranks[0]["initial_weights"] == ranks[1]["initial_weights"]
    assert ranks[0]["weights"] != ranks[0]["initial_weights"], "training did not change the weights"
    assert ranks[0]["weights"] == ranks[1]["weights"], (
        "weights differ across ranks: gradients not synchronised"
    )


def per_example_completion_losses(model_dir: Path, rows, max_length: int) -> list[float]:
    """Each row's mean token NLL of `completion + eos` given the prompt, in one process, without TRL."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    losses = []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"][:max_length]
        labels = torch.tensor([-100] * len(prompt) + full[len(prompt) :])
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0, :-1]
        losses.append(torch.nn.functional.cross_entropy(logits, labels[1:], ignore_index=-100).item())
    return losses


def test_sft_two_processes(tiny_base, tiny_data, tmp_path):
    out, probe = tmp_path / "sft", tmp_path / "probe"
    # Evaluation batches of one make the reported loss a plain mean over examples, comparable across world sizes.
    overrides = [
        "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "sft"), "--output_dir", str(out),
        "--max_steps", "4", "--warmup_steps", "0", "--per_device_train_batch_size", "16", "--merge_adapter", "false",
        "--per_device_eval_batch_size", "1", "--save_strategy", "no", "--disable_tqdm", "true",
    ]  # fmt: skip
    launch_two_ranks("pipeline.sft", "sft.yaml", overrides, probe)

    from datasets import load_from_disk

    sft = load_from_disk(str(tiny_data / "sft"))
    assert_data_parallel(read_ranks(probe), len(sft["train"]), 16)
    assert (out / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "sft"], "stray per-rank outputs"
    # The base model's held-out loss is the mean over all examples, gathered from both ranks, not one rank's half.
    results = json.loads((out / "eval_results.json").read_text())
    losses = per_example_completion_losses(tiny_base, sft["test"], max_length=128)
    halves = (
        sum(losses[: len(losses) // 2]) / (len(losses) // 2),
        sum(losses[len(losses) // 2 :]) / (len(losses) // 2),
    )
    global_mean = sum(losses) / len(losses)
    assert min(abs(half - global_mean) for half in halves) > 1e-3, "halves too close to tell apart"
    assert results["base_eval_loss"] == pytest.approx(global_mean, rel=1e-5)
    assert results["eval_loss"] > 0 and results["eval_loss"] != results["base_eval_loss"]


def test_reward_two_processes_reports_the_global_accuracy(tiny_base, tiny_data, tmp_path):
    out, probe = tmp_path / "reward", tmp_path / "probe"
    overrides = [
        "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "preference"),
        "--output_dir", str(out), "--max_steps", "6", "--warmup_steps", "0", "--per_device_train_batch_size", "16",
        "--save_strategy", "no", "--disable_tqdm", "true",
    ]  # fmt: skip
    launch_two_ranks("pipeline.reward", "reward.yaml", overrides, probe)

    from datasets import load_from_disk

    from tests.conftest import pair_accuracy

    pairs = load_from_disk(str(tiny_data / "preference"))
    assert_data_parallel(read_ranks(probe), len(pairs["train"]), 16)
    results = json.loads((out / "eval_results.json").read_text())
    # Each rank scored its own half on its own device (not rank 0 alone on the CPU while the other waits) ...
    n = len(pairs["test"])
    assert (
        results["eval_pairs_per_process"] == [(n + 1) // 2, (n + 1) // 2] and results["eval_device"] == "cpu"
    )
    # ... and the halves make the global accuracy of every held-out pair, as one process computes it.
    recomputed = pair_accuracy(str(out), pairs["test"])
    assert results["eval_accuracy"] == pytest.approx(recomputed, abs=1e-6) and results["eval_pairs"] == n
