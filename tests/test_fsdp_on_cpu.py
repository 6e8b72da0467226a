"""Every training stage under FSDP2 (recipes/accelerate/fsdp.yaml) on 2 CPU processes ends where DDP ends.

FSDP2 shards the weights (DTensors), so what DDP gets for free must be right by construction: saves gather the
shards on every rank (a save on the main process alone hangs), generation runs inside the root module's hooks
(else the root's own weights stay sharded), tied embeddings stay tied, adapter switching acts on the sharded
parameters, and resuming goes through Accelerate's save_state. `tests/fsdp_on_cpu.py` runs the real engine on
CPU; each case trains the same thing under DDP and FSDP2 and asserts the same artifacts and weights.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ACCELERATE, RECIPE, REPO

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
LAUNCH_CONFIG = {"ddp": "multi_cpu.yaml", "fsdp2": "fsdp.yaml"}


def launch(engine: str, stage: str, yaml_name: str, out: Path, *overrides: str) -> str:
    """`accelerate launch` a stage on 2 CPU processes; returns its stdout."""
    runner = ["-m", "tests.fsdp_on_cpu", stage] if engine == "fsdp2" else ["-m", stage]
    command = [
        str(ACCELERATE), "launch", "--config_file", str(REPO / "recipes/accelerate" / LAUNCH_CONFIG[engine]),
        "--num_processes", "2", "--mixed_precision", "no", *runner,
        "--config", str(RECIPE / yaml_name), "--output_dir", str(out), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if engine == "fsdp2":  # the engine really sharded the trained model on both ranks
        assert result.stdout.count("FSDP2-SHARDED") == 2, result.stdout[-3000:]
    return result.stdout


def assert_same_artifacts(ddp: Path, fsdp: Path) -> None:
    """The same files, and the same weights up to float reduction order (bugs here differ by 1e-3 or more).

    Checkpoints are left out: under FSDP they are Accelerate's save_state files by design."""

    def weight_files(root: Path) -> list[Path]:
        return sorted(
            p.relative_to(root) for p in root.rglob("*.safetensors") if "checkpoints" not in p.parts
        )

    weights = weight_files(ddp)
    assert weights and weights == weight_files(fsdp)
    for rel in weights:
        a, b = load_file(ddp / rel), load_file(fsdp / rel)
        assert a.keys() == b.keys(), f"{rel}: {sorted(a.keys() ^ b.keys())}"  # e.g. an untied lm_head
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=f"{rel}:{key}")


def test_sft_under_fsdp2_matches_ddp(tiny_base, tiny_data, tmp_path):
    overrides = (
        "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "sft"), "--max_steps", "3",
        "--warmup_steps", "0", "--per_device_train_batch_size", "8", "--merge_adapter", "true",
        "--save_strategy", "no", "--disable_tqdm", "true",
    )  # fmt: skip
    for engine in LAUNCH_CONFIG:
        launch(engine, "pipeline.sft", "sft.yaml", tmp_path / engine, *overrides)
    assert_same_artifacts(tmp_path / "ddp", tmp_path / "fsdp2")
    results = [json.loads((tmp_path / e / "eval_results.json").read_text()) for e in LAUNCH_CONFIG]
    assert results[1]["eval_loss"] == pytest.approx(results[0]["eval_loss"], rel=1e-5)


def test_reward_under_fsdp2_matches_ddp(tiny_base, tiny_data, tmp_path):
    overrides = (
        "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "preference"), "--max_steps",
        "3", "--warmup_steps", "0", "--per_device_train_batch_size", "8", "--save_strategy", "no",
        "--disable_tqdm", "true",
    )  # fmt: skip
    for engine in LAUNCH_CONFIG:
        launch(engine, "pipeline.reward", "reward.yaml", tmp_path / engine, *overrides)
    assert_same_artifacts(tmp_path / "ddp", tmp_path / "fsdp2")
    results = [json.loads((tmp_path / e / "eval_results.json").read_text()) for e in LAUNCH_CONFIG]
    assert results[1]["eval_accuracy"] == results[0]["eval_accuracy"]


def ppo_overrides(tiny_sft, tiny_reward, tiny_data, *extra) -> tuple[str, ...]:
    return (
        "--sft_model_path", str(tiny_sft), "--reward_model_path", str(tiny_reward),
        "--prompts_path", str(tiny_data / "prompts"), "--eval_prompts_path", str(tiny_data / "eval_prompts"),
        "--total_episodes", "16", "--per_device_train_batch_size", "2", "--num_mini_batches", "2",
        "--num_ppo_epochs", "2", "--response_length", "16", "--logging_steps", "1", "--save_merged", "true",
        "--sample_every", "1", *extra,
    )  # fmt: skip


def read_scores(out: Path) -> list[float]:
    return [json.loads(line)["objective/scores"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_ppo_lora_with_value_adapter_under_fsdp2_matches_ddp_and_resumes(
    tiny_sft, tiny_reward, tiny_data, tmp_path
):
    """LoRA policy, reference and value adapters on one sharded base; then a resume from Accelerate's state."""
    overrides = ppo_overrides(
        tiny_sft, tiny_reward, tiny_data, "--value_head", "adapter", "--save_steps", "1"
    )
    for engine in LAUNCH_CONFIG:
        launch(engine, "pipeline.ppo", "ppo.yaml", tmp_path / engine, *overrides)
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp2"
    assert_same_artifacts(ddp, fsdp)
    assert read_scores(fsdp) == pytest.approx(read_scores(ddp), abs=1e-5)

    step1 = fsdp / "checkpoints" / "step-1"
    assert not (step1 / "trainable.safetensors").exists()  # written by save_state: sharded weights, optimizer
    resumed = tmp_path / "resumed"
    stdout = launch(
        "fsdp2", "pipeline.ppo", "ppo.yaml", resumed, *overrides, "--resume_from_checkpoint", str(step1)
    )
    assert "Resumed from" in stdout and read_scores(resumed) == pytest.approx(read_scores(fsdp)[1:], abs=1e-6)
    for name in ("adapter_model.safetensors", "value/adapter_model.safetensors", "value_head.safetensors"):
        a, b = load_file(fsdp / name), load_file(resumed / name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f"{name}:{key}")


def test_ppo_full_fine_tuning_under_fsdp2_matches_ddp(tiny_sft, tiny_reward, tiny_data, tmp_path):
    """Full fine-tuning: a sharded frozen reference model, and the tiny model's tied embeddings."""
    overrides = ppo_overrides(tiny_sft / "merged", tiny_reward, tiny_data, "--use_peft", "false",
                              "--save_steps", "0")  # fmt: skip
    for engine in LAUNCH_CONFIG:
        launch(engine, "pipeline.ppo", "ppo.yaml", tmp_path / engine, *overrides)
    assert_same_artifacts(tmp_path / "ddp", tmp_path / "fsdp2")
    assert read_scores(tmp_path / "fsdp2") == pytest.approx(read_scores(tmp_path / "ddp"), abs=1e-5)
