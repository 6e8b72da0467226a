"""Plumbing shared by the Trainer-based stages (SFT, reward, and GRPO / RLOO / DPO): LoRA defaults, the adapter's
record of its base revision, the final save and the end of a distributed run.

These stages train with a TRL trainer whose `output_dir` is the run's checkpoint folder next to the final artifact
(`pipeline.common.outputs`: `runs/tiny/sft.checkpoints/` for `runs/tiny/sft/`); the artifact is written to a temp dir and
renamed into place at the very end.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from trl import ModelConfig

from pipeline.common.config import NonFiniteError, UserError
from pipeline.common.models import is_quantized, merge_adapter
from pipeline.common.outputs import (
    check_run,
    list_checkpoints,
    publish,
    remove_checkpoints,
    staging_dir,
    start_run,
    write_run,
)


@dataclass
class RunOutputArguments:
    """What happens to a Trainer stage's checkpoints and to an output folder that holds another run."""

    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep <output_dir>.checkpoints after a successful run"}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "replace an output_dir that holds another config's run (otherwise an error)"},
    )


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


def check_quantized_needs_peft(model_args) -> None:
    if is_quantized(model_args) and not model_args.use_peft:
        raise UserError("load_in_4bit/load_in_8bit train only through an adapter: set use_peft true (QLoRA).")


def count_tokens(training_args) -> None:
    """The Trainer counts the non-padding tokens it trains on (the tokens/s of the metrics)."""
    if training_args.include_num_input_tokens_seen in ("no", False, None):
        training_args.include_num_input_tokens_seen = "non_padding"


def peft_config(model_args):
    """TRL's LoRA config from the ModelConfig, recording the base's revision in adapter_config.json, so every
    later stage loads the base the adapter was trained on."""
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is not None and model_args.model_revision not in (None, "main"):
        config.revision = model_args.model_revision
    return config


def tokens_per_second(trainer, train_metrics: dict) -> float:
    """Non-padding training tokens per second of this session (the Trainer counts them)."""
    seen = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    return seen / max(train_metrics["train_runtime"], 1e-9)


def save_trained_weights(trainer, directory: Path) -> None:
    """The trained adapter or model into `directory`. Call it on EVERY rank, the main process writes.

    Under FSDP and ZeRO-3, Trainer.save_model first gathers the sharded weights, a collective: called on the main
    process alone it waits forever for the others.
    """
    trainer.save_model(str(directory))
    if trainer.is_world_process_zero():
        (directory / "training_args.bin").unlink(missing_ok=True)  # pickled; nothing downstream needs it
    local_loading_from_now_on()


def save_policy(trainer, tokenizer, final_dir: Path, identity: dict, merge: bool, model_args, metrics: dict,
                write_extra=None) -> None:  # fmt: skip
    """The end of a causal-LM stage (SFT, GRPO, RLOO, DPO). Call it on EVERY rank.

    Stops on non-finite weights, then the main process fills a staging folder: the adapter (or full model), the
    run record, `write_extra(folder)`'s files, the tokenizer, with `merge` a plain merged model in `merged/`, and
    `eval_results.json` (`metrics`); the folder becomes `final_dir` in one rename. Then a push, when asked.
    """
    import json

    from transformers import AutoModelForCausalLM

    check_finite_weights(trainer)
    tmp = staging_dir(final_dir, trainer.is_world_process_zero())
    save_trained_weights(trainer, tmp)
    if trainer.is_world_process_zero():
        write_run(tmp, identity)
        if write_extra is not None:
            write_extra(tmp)
        tokenizer.save_pretrained(tmp)
        if merge and model_args.use_peft:
            merged = merge_adapter(AutoModelForCausalLM, tmp, model_args, trainer.args.trust_remote_code)
            merged.save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
        (tmp / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        publish(tmp, final_dir)
    trainer.accelerator.wait_for_everyone()
    if trainer.args.push_to_hub:
        trainer.push_to_hub()  # the standard Trainer path: what it trained (adapter or model) + model card


def local_loading_from_now_on() -> None:
    """After the final save: later from_pretrained calls (merging, scoring) run on the main process alone, so they
    must load plain weights, not partition them across ranks as every load does under ZeRO-3 (a collective that
    would wait forever for the other ranks)."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


class StopOnNonFinite(TrainerCallback):
    """Stops a Trainer stage at the first logged NaN/Inf loss or gradient norm, before anything is saved.

    (transformers' `logging_nan_inf_filter` hides a NaN loss from the log, never a NaN grad_norm.) Every rank logs
    the same reduced values, so every rank stops at the same step."""

    def __init__(self, final_dir: Path):
        self.final_dir = final_dir

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float | int) and not math.isfinite(value):
                found = list_checkpoints(self.final_dir)
                raise NonFiniteError(f"training {key.replace('_', ' ')}", state.global_step,
                                     found[-1] if found else None)  # fmt: skip


def begin_run(identity: dict, final_dir: Path, resume, overwrite: bool, training_args) -> None:
    """The run-identity check on every rank, then the main process empties the work folder and records the run
    while the other ranks wait (before anything, the start model of the reward stage included, is written there)."""

    check_run(identity, final_dir, resume, overwrite)
    with training_args.main_process_first(local=False, desc="recording the run"):
        if training_args.process_index == 0:
            start_run(identity, final_dir, resume)


def check_finite_weights(trainer) -> None:
    """Collective: stop before saving when a trainable weight is NaN/Inf on any rank."""
    import torch

    bad = any(not torch.isfinite(p).all() for p in trainer.model.parameters() if p.requires_grad)
    flag = torch.tensor([float(bad)], device=trainer.accelerator.device)
    if trainer.accelerator.reduce(flag, "sum").item() > 0:
        raise NonFiniteError("trained weights", trainer.state.global_step)


def finish_training(trainer, output_dir: Path, keep: bool) -> None:
    """The end of a successful run: drop the checkpoints (unless `keep`) and shut down the process group."""

    if not keep and trainer.is_world_process_zero():
        remove_checkpoints(output_dir)
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
