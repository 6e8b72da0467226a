"""Atomic PPO checkpoints: trainable weights, optimizer, scheduler, KL coefficient, step and RNG states.

Checkpoints follow every stage's layout (`pipeline.common.outputs`): `<output_dir>.checkpoints/checkpoint-N/`, written to
`checkpoint-N.tmp` and renamed, so a crash mid-write never leaves a half checkpoint that resume would pick up.
Every rank stores its own RNG state. The run's logs sit beside the checkpoints while it runs (`LOG_FILES`); a resumed
run continues them from its checkpoint's step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.common import outputs
from pipeline.common.config import UserError

STATE_FILE = "trainer_state.json"
METRICS_FILE, SAMPLES_FILE = "metrics.jsonl", "samples.jsonl"
LOG_FILES = (METRICS_FILE, SAMPLES_FILE)  # in the work folder while running, published with the policy


def is_checkpoint(path: Path) -> bool:
    """A complete PPO checkpoint (its state file is written last)."""
    return (path / STATE_FILE).is_file()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = outputs.list_checkpoints(output_dir, is_checkpoint)
    return found[-1] if found else None


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    """Every RNG as tensors and plain numbers, so it loads back with torch.load(weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, torch.tensor(py_state, dtype=torch.int64), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state.tolist()), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    accelerator,
    output_dir,
    step: int,
    state: dict,
    model,
    optimizer,
    scheduler,
    keep: int | None,
    sharded: bool = False,
):
    """Collective: every rank calls it; rank 0 writes the shared files, each rank its RNG state.

    Replicated models (one process, DDP) store only the trainable weights. Sharded ones (FSDP, DeepSpeed) hold
    a slice of the weights and optimizer state on each rank: Accelerate's save_state writes them in the engine's
    own format (with every rank's RNG); the scheduler is ours in both cases.
    """
    final = outputs.checkpoint_path(output_dir, step)
    tmp = outputs.staging_dir(final, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if sharded:
        accelerator.save_state(str(tmp))
    else:
        torch.save(rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            save_file(trainable_state(accelerator.unwrap_model(model)), str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if accelerator.is_main_process:
        # The scheduler is saved here, not by save_state: Accelerate unpickles registered objects in full.
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        outputs.publish(tmp, final)
        if keep:
            outputs.prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, accelerator, model, optimizer, scheduler, sharded: bool = False) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; returns the trainer state (step, ...)."""
    replicated_format = (path / "trainable.safetensors").is_file()
    if replicated_format == sharded:
        raise UserError(
            f"Checkpoint {path} was written {'without' if replicated_format else 'under'} FSDP/DeepSpeed: "
            "resume it with the Accelerate config it was written with."
        )
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if sharded:
        accelerator.load_state(str(path))
        return json.loads((path / STATE_FILE).read_text())
    unwrapped = accelerator.unwrap_model(model)
    weights = load_file(str(path / "trainable.safetensors"))
    missing = [n for n, p in unwrapped.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise UserError(
            f"Checkpoint {path} does not match this model (missing {missing[:3]}...); same config?"
        )
    params = dict(unwrapped.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    rng_file = path / f"rng_state_{accelerator.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((path / STATE_FILE).read_text())


def truncate_logs(work_dir: Path, step: int) -> None:
    """A resumed run continues its logs from its checkpoint's step: lines logged after it are dropped (redone)."""
    for name in LOG_FILES:
        path = work_dir / name
        if path.is_file():
            kept = [line for line in path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line).get("step", 0) <= step]  # fmt: skip
            outputs.write_file_atomically(path, "".join(kept))
