"""Every training stage under DeepSpeed ZeRO-2/3 and FSDP2 on 2 CPU processes ends where DDP ends.

The sharding engines split weights, gradients or optimizer state across ranks, so what DDP gets for free must be
right by construction: saves gather the shards on every rank (a save or a model load on the main process alone
hangs), generation runs with every layer's weights gathered, tied embeddings stay tied, adapter switching acts on
sharded parameters, the engine gets PPO's batch sizes, and resuming goes through the engine's own checkpoints.
Each case launches the shipped config from recipes/accelerate/ and asserts the same saved files and weights as
DDP. DeepSpeed runs on CPU for real (its CPU accelerator over gloo); FSDP2 through `tests/fsdp_on_cpu.py`, which
only changes the distributed type Accelerate records (it starts FSDP on accelerators only).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.benchmarks.common import ENGINE_CONFIGS
from tests.conftest import ACCELERATE, RECIPE, REPO

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
ENGINE_LINE = {  # what the stage prints on start: proof that Accelerate really started the engine
    "ddp": "Engine: MULTI_CPU, 2 processes",
    "fsdp2": "Engine: FSDP, 2 processes",
    "zero2": "Engine: DEEPSPEED ZeRO-2, 2 processes",
    "zero3": "Engine: DEEPSPEED ZeRO-3, 2 processes",
    "zero3_offload": "Engine: DEEPSPEED ZeRO-3, 2 processes",
}
SHARDED = ("fsdp2", "zero2", "zero3")


def launch(engine: str, stage: str, yaml_name: str, out: Path, *overrides: str) -> str:
    """`accelerate launch` a stage on 2 CPU processes; returns its stdout."""
    runner = ["-m", "tests.fsdp_on_cpu", stage] if engine == "fsdp2" else ["-m", stage]
    command = [
        str(ACCELERATE), "launch", "--config_file", str(REPO / "recipes/accelerate" / ENGINE_CONFIGS[engine]),
        "--num_processes", "2", "--mixed_precision", "no", *runner,
        "--config", str(RECIPE / yaml_name), "--output_dir", str(out), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ENGINE_LINE[engine] in result.stdout, result.stdout[-3000:]
    if engine == "fsdp2":  # the engine really sharded the trained model on both ranks
        assert result.stdout.count("FSDP2-SHARDED") == 2, result.stdout[-3000:]
    return result.stdout


def assert_same_artifacts(ddp: Path, other: Path, atol: float = 1e-5) -> None:
    """The same files, and the same weights up to float reduction order (bugs here differ by 1e-3 or more).

    Checkpoints are left out: under FSDP and DeepSpeed they are in the engine's own format by design."""

    def weight_files(root: Path) -> list[Path]:
        return sorted(
            p.relative_to(root) for p in root.rglob("*.safetensors") if "checkpoints" not in p.parts
        )

    weights = weight_files(ddp)
    assert weights and weights == weight_files(other)
    for rel in weights:
        a, b = load_file(ddp / rel), load_file(other / rel)
        assert a.keys() == b.keys(), f"{rel}: {sorted(a.keys() ^ b.keys())}"  # e.g. an untied lm_head
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=f"{other.name}/{rel}:{key}")


def test_sft_under_sharded_engines_matches_ddp(tiny_base, tiny_data, tmp_path):
    overrides = (
        "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "sft"), "--max_steps", "3",
        "--warmup_steps", "0", "--per_device_train_batch_size", "8", "--merge_adapter", "true",
        "--save_strategy", "no", "--disable_tqdm", "true",
    )  # fmt: skip
    engines = ("ddp", *SHARDED)
    for engine in engines:
        launch(engine, "pipeline.sft", "sft.yaml", tmp_path / engine, *overrides)
    loss = json.loads((tmp_path / "ddp" / "eval_results.json").read_text())["eval_loss"]
    for engine in SHARDED:
        # ZeRO-3's reduce-scatter sums gradients in another order; Adam turns that into ~1e-5 on the adapter.
        assert_same_artifacts(tmp_path / "ddp", tmp_path / engine, atol=5e-5)
        results = json.loads((tmp_path / engine / "eval_results.json").read_text())
        assert results["eval_loss"] == pytest.approx(loss, rel=1e-5), engine


def test_reward_under_sharded_engines_matches_ddp(tiny_base, tiny_data, tmp_path):
    overrides = (
        "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "preference"), "--max_steps",
        "3", "--warmup_steps", "0", "--per_device_train_batch_size", "8", "--save_strategy", "no",
        "--disable_tqdm", "true",
    )  # fmt: skip
    for engine in ("ddp", *SHARDED):
        launch(engine, "pipeline.reward", "reward.yaml", tmp_path / engine, *overrides)
    accuracy = json.loads((tmp_path / "ddp" / "eval_results.json").read_text())["eval_accuracy"]
    for engine in SHARDED:
        assert_same_artifacts(tmp_path / "ddp", tmp_path / engine, atol=5e-5)
        results = json.loads((tmp_path / engine / "eval_results.json").read_text())
        assert results["eval_accuracy"] == accuracy, engine


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


def assert_resumes(engine: str, run: Path, resumed: Path, overrides: tuple[str, ...]) -> None:
    """Resume `run` from its step-1 checkpoint (the engine's own format) and end on exactly the same weights."""
    step1 = run.with_name(run.name + ".checkpoints") / "checkpoint-1"
    assert not (step1 / "trainable.safetensors").exists()  # written by save_state: sharded weights, optimizer
    stdout = launch(
        engine, "pipeline.ppo", "ppo.yaml", resumed, *overrides, "--resume_from_checkpoint", str(step1)
    )
    assert "Resumed from" in stdout and read_scores(resumed) == pytest.approx(read_scores(run)[1:], abs=1e-6)
    for name in ("adapter_model.safetensors", "value/adapter_model.safetensors", "value_head.safetensors"):
        a, b = load_file(run / name), load_file(resumed / name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=f"{engine} {name}:{key}")


def test_ppo_lora_with_value_adapter_under_sharded_engines_matches_ddp_and_resumes(
    tiny_sft, tiny_reward, tiny_data, tmp_path
):
    """LoRA policy, reference and value adapters on one sharded base; then resumes from the engines' checkpoints.

    ZeRO-3 with CPU offload too, where DeepSpeed steps PPO's own torch AdamW on the offloaded state. Accelerate used
    to swap it for DeepSpeed's CPU Adam built from the lr and weight decay alone, so PPO's adam_epsilon 1e-5 became
    1e-8 (this test caught it). ZeRO-3 and DDP then differ only in the order gradients are reduced: 1.6e-7 at most
    on these weights (measured), so 1e-5 still catches a wrong eps, clipping value or lost trainable flag."""
    overrides = ppo_overrides(
        tiny_sft,
        tiny_reward,
        tiny_data,
        "--value_head",
        "adapter",
        "--save_steps",
        "1",
        "--keep_checkpoints",
        "true",
    )
    engines = ("ddp", *SHARDED, "zero3_offload")
    for engine in engines:
        stdout = launch(engine, "pipeline.ppo", "ppo.yaml", tmp_path / engine, *overrides)
        assert "Optimizer: AdamW (lr 0.0007, betas (0.9, 0.999), eps 1e-05" in stdout, stdout[-3000:]
    for engine in engines[1:]:
        assert_same_artifacts(tmp_path / "ddp", tmp_path / engine)
        assert read_scores(tmp_path / engine) == pytest.approx(read_scores(tmp_path / "ddp"), abs=1e-5)
    for engine in ("fsdp2", "zero3"):
        assert_resumes(engine, tmp_path / engine, tmp_path / f"{engine}-resumed", overrides)


def test_ppo_full_fine_tuning_under_sharded_engines_matches_ddp(tiny_sft, tiny_reward, tiny_data, tmp_path):
    """Full fine-tuning: a sharded frozen reference model, and the tiny model's tied embeddings. With gradient
    accumulation and tight clipping, which DeepSpeed does itself from its config: PPO's values must reach it."""
    overrides = ppo_overrides(tiny_sft / "merged", tiny_reward, tiny_data, "--use_peft", "false", "--value_head", "shared",
                              "--save_steps", "0", "--gradient_accumulation_steps", "2", "--max_grad_norm", "0.1",
                              "--total_episodes", "32")  # fmt: skip
    for engine in ("ddp", *SHARDED):
        launch(engine, "pipeline.ppo", "ppo.yaml", tmp_path / engine, *overrides)
    for engine in SHARDED:
        assert_same_artifacts(tmp_path / "ddp", tmp_path / engine)
        assert read_scores(tmp_path / engine) == pytest.approx(read_scores(tmp_path / "ddp"), abs=1e-5)


def test_ppo_refuses_a_deepspeed_config_that_disagrees_with_it(tiny_sft, tiny_reward, tiny_data, tmp_path):
    """A user's own DeepSpeed JSON with a fixed micro-batch size: a clear error naming both values, not a run
    whose batches silently differ from the PPO config's (or DeepSpeed's bare batch-size assertion)."""
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
        "gradient_clipping": "auto", "zero_optimization": {"stage": 2},
    }))  # fmt: skip
    launch_config = tmp_path / "deepspeed.yaml"
    launch_config.write_text(
        "distributed_type: DEEPSPEED\nnum_machines: 1\nnum_processes: 1\n"
        f"deepspeed_config:\n  deepspeed_config_file: {ds_config}\n  zero3_init_flag: false\n"
    )
    command = [
        str(ACCELERATE), "launch", "--config_file", str(launch_config), "-m", "pipeline.ppo",
        "--config", str(RECIPE / "ppo.yaml"), "--output_dir", str(tmp_path / "out"),
        *ppo_overrides(tiny_sft, tiny_reward, tiny_data),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert (
        "train_micro_batch_size_per_gpu is 4 in the DeepSpeed config; "
        "PPO's per_device_train_batch_size gives 2" in result.stderr + result.stdout
    )
    assert not (tmp_path / "out.checkpoints").exists()
