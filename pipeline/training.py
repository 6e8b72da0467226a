"""Plumbing shared by the SFT and reward stages: model loading, LoRA defaults, checkpoints, atomic saves.

Both stages train with a TRL trainer whose `output_dir` is a *checkpoint* folder next to the final artifact
(`runs/tiny/sft.checkpoints/` for `runs/tiny/sft/`). The artifact itself is written to a temp dir and renamed
into place at the very end, so `output_dir` either holds a complete model or does not exist, and a crashed run
resumes from the checkpoint folder with `--resume_from_checkpoint true`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig

from pipeline.config import UserError


@dataclass
class LoraModelConfig(ModelConfig):
    """`trl.ModelConfig` with LoRA on by default, on every linear layer (`--use_peft false` for full fine-tuning)."""

    use_peft: bool = field(default=True, metadata={"help": "Train a LoRA adapter (false: full fine-tuning)."})
    lora_target_modules: list[str] | None = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Modules that get LoRA weights; 'all-linear' = every linear layer but the output head."
        },
    )


def checkpoint_dir(output_dir: str) -> Path:
    """Where the trainer writes `checkpoint-N/` folders: a sibling of the final artifact, never inside it."""
    final = Path(output_dir)
    return final.with_name(final.name + ".checkpoints")


def resolve_resume(value: str | None, checkpoints: Path) -> str | None:
    """`--resume_from_checkpoint true` -> the newest checkpoint of this run; a path -> that path; unset -> None."""
    from transformers.trainer_utils import get_last_checkpoint

    if value is None or str(value).lower() in ("", "false", "no", "none"):
        return None
    if str(value).lower() in ("true", "yes", "last"):
        last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
        if last is None:
            raise UserError(
                f"--resume_from_checkpoint true, but {checkpoints} holds no checkpoint-N folder. Checkpoints are "
                "written every `save_steps` steps when save_strategy is 'steps'; drop the flag to start afresh."
            )
        return last
    if not Path(value).is_dir():
        raise UserError(f"--resume_from_checkpoint {value}: no such checkpoint folder.")
    return str(value)


def torch_dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return name
    try:
        return getattr(torch, name)
    except AttributeError:
        raise UserError(
            f"dtype '{name}' is not a torch dtype (use float32, bfloat16, float16 or auto)."
        ) from None


def kbit_device_map() -> dict | str:
    """Quantized weights are placed at load time: on this process's GPU (one per rank), else on the CPU."""
    import torch
    from accelerate import PartialState

    return {"": PartialState().local_process_index} if torch.cuda.is_available() else "cpu"


def load_pretrained(
    model_class,
    name_or_path: str,
    model_args: ModelConfig,
    trust_remote_code: bool = False,
    quantize: bool = True,
    gradient_checkpointing: bool = False,
    **kwargs,
):
    """`model_class.from_pretrained` with the ModelConfig's dtype/attention and, for QLoRA, 4/8-bit
    bitsandbytes weights prepared for k-bit training. `quantize=False` loads full weights (used for merging)."""
    from trl.trainer.utils import get_quantization_config

    from pipeline.models import _loading_error

    load_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": trust_remote_code,  # a trainer-config field in TRL 1.16, off by default
        "dtype": torch_dtype(model_args.dtype),
        **kwargs,
    }
    if model_args.attn_implementation is not None:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = get_quantization_config(model_args) if quantize else None
    if quantization is not None:
        load_kwargs["quantization_config"] = quantization
        load_kwargs["device_map"] = kbit_device_map()
    try:
        model = model_class.from_pretrained(name_or_path, **load_kwargs)
    except (OSError, ValueError) as err:
        raise _loading_error(name_or_path, err) from err
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        if not model_args.use_peft:
            raise UserError(
                "load_in_4bit/load_in_8bit train only through an adapter: set use_peft true (QLoRA)."
            )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return model


def merge_adapter(
    model_class, adapter_dir: Path, base: str, model_args: ModelConfig, trust_remote_code=False, **kwargs
):
    """Base model in full precision + the saved adapter, merged into a plain model.

    The base is reloaded unquantized even after QLoRA: merging into 4-bit weights would round the update away.
    """
    from peft import PeftModel

    base_model = load_pretrained(model_class, base, model_args, trust_remote_code, quantize=False, **kwargs)
    return PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()


def publish_atomically(tmp: Path, final: Path) -> None:
    """Rename a fully written temp dir to its final name, replacing an older artifact."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def staging_dir(final: Path, is_main_process: bool) -> Path:
    """The temp dir an artifact is written to before its rename: same name on every rank, emptied by the main one."""
    tmp = final.with_name(final.name + ".tmp")
    if is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def save_trained_weights(trainer, directory: Path) -> None:
    """The trained adapter or model into `directory`. Call it on EVERY rank, the main process writes.

    Under FSDP and ZeRO-3, Trainer.save_model first gathers the sharded weights, a collective: called on the main
    process alone it waits forever for the others.
    """
    trainer.save_model(str(directory))
    if trainer.is_world_process_zero():
        (directory / "training_args.bin").unlink(missing_ok=True)  # pickled; nothing downstream needs it
    local_loading_from_now_on()


def local_loading_from_now_on() -> None:
    """After the final save: later from_pretrained calls (merging, scoring) run on the main process alone, so they
    must load plain weights, not partition them across ranks as every load does under ZeRO-3 (a collective that
    would wait forever for the other ranks)."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def finish_training(trainer, checkpoints: Path, keep: bool) -> None:
    """The end of a successful run: drop the checkpoints and shut down the process group.

    After the final save the checkpoints are only disk space (they exist to resume a crashed run).
    """
    if not keep and trainer.is_world_process_zero():
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.model_wrapped = trainer.model  # the DDP wrapper goes; see end_distributed
    end_distributed(trainer.accelerator)


def end_distributed(accelerator) -> None:
    """Free the engine wrappers (DDP), then destroy the process group; the caller keeps no wrapper either.

    A process that exits with its gloo/NCCL group alive can abort at interpreter shutdown ("terminate called
    without an active exception"). And the order matters: DDP's C++ Reducer holds the group, so a group outliving
    its destroy_process_group() dies with the Reducer, whose destructor joins gloo's worker threads while holding
    the GIL; a worker still releasing a finished collective needs the GIL, and the process hangs for good
    (pytorch/pytorch#56297; seen here once in a 2-process test). Freed first, the group dies in
    destroy_process_group(), which releases the GIL.
    """
    import gc

    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def is_sharded(accelerator) -> bool:
    """Weights, gradients or optimizer state are split across ranks (DeepSpeed ZeRO, FSDP): saves are collective."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def report_engine(accelerator) -> None:
    """One line on the main process naming the engine that runs the stage when it is distributed, and a warning
    when the launch config asked for DeepSpeed or FSDP but Accelerate did not start it.

    Accelerate runs FSDP on accelerators only: on CPU it falls back to DDP without a word, and a user would
    believe the model is sharded. (DeepSpeed does run on CPU processes, through its CPU accelerator and gloo.)
    """
    from accelerate.utils import DistributedType

    if not accelerator.is_main_process:
        return
    running = accelerator.distributed_type
    if running != DistributedType.NO:
        name = running.value
        if running == DistributedType.DEEPSPEED:
            name += f" ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
        n = accelerator.num_processes
        print(f"Engine: {name}, {n} process{'es' if n > 1 else ''} on {accelerator.device.type}", flush=True)
    requested = [
        engine
        for engine, variable in (("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"), ("FSDP", "ACCELERATE_USE_FSDP"))
        if os.environ.get(variable, "false").lower() == "true"
    ]
    if requested and not is_sharded(accelerator):
        print(
            f"Warning: the Accelerate config asks for {requested[0]}, but this run is "
            f"{accelerator.distributed_type.value} on {accelerator.device.type}: Accelerate did not start "
            f"{requested[0]}, so the weights are replicated on every process, not sharded.",
            flush=True,
        )
