"""The one run path of the Trainer stages (base, SFT, reward, and GRPO / RLOO / DPO), and what they share: LoRA
defaults, the adapter's record of its base revision, the final save and the end of a distributed run.

Every such stage parses its configs, then hands `run_trainer_stage` what it does differently (reading its data,
building its trainer, its metrics, the files of its artifact); the rest is the same code in the same order for all
of them: the run record (`run.json`), the tracker, the resume rule, training, the atomic save and the clean end.
The trainer's `output_dir` is the run's checkpoint folder next to the final artifact (`pipeline.common.outputs`:
`runs/tiny/sft.checkpoints/` for `runs/tiny/sft/`); the artifact is written to a temp dir and renamed into place at
the very end.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.integrations.deepspeed import unset_hf_deepspeed_config
from trl import ModelConfig, get_peft_config

from pipeline.common.config import NonFiniteError, Stopped, UserError
from pipeline.common.lock import one_writer
from pipeline.common.models import is_quantized, merge_adapter
from pipeline.common.outputs import (
    check_run,
    checkpoints_dir,
    list_checkpoints,
    remove_checkpoints,
    resolve_resume,
    resume_advice,
    run_identity,
    staged_dir,
    start_run,
    write_run,
)
from pipeline.common.preemption import StopRequest
from pipeline.common.tracking import TrackerCallback


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
    config = get_peft_config(model_args)
    if config is not None and model_args.model_revision not in (None, "main"):
        config.revision = model_args.model_revision
    return config


def tokens_per_second(trainer, train_metrics: dict) -> float:
    """Non-padding training tokens per second of this session (the Trainer counts them)."""
    seen = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    return seen / max(train_metrics["train_runtime"], 1e-9)


# --- the run -------------------------------------------------------------------------------------------------


def run_trainer_stage(stage: str, configs: tuple, *, load_data: Callable, build_trainer: Callable,
                      measure: Callable, fill_artifact: Callable, callbacks=None,
                      training_context: Callable | None = None) -> dict:  # fmt: skip
    """Run a Trainer stage from its parsed `configs` (script_args, training_args, *more); returns its metrics.

    1. The run's identity (its `run.json`) and its tracker (a missing tracker package fails here, first).
    2. `load_data()`: the stage reads and checks its data, before anything is written.
    3. The folder's lock (`one_writer`: no other run writes it meanwhile), the resume rule and the run record
       (`begin_run`): a run refuses a folder another run is writing, or a folder or a checkpoint of another run.
    4. `build_trainer(data, resume, callbacks)` -> the stage's trainer, given `callbacks`: the caller's, the
       tracker, the NaN/Inf stop. From here on `training_args.output_dir` is the checkpoint folder.
    5. Training, resumed from `resume` when asked, inside `training_context(trainer)` when given. A scheduler's
       signal ends it after the step in progress with a checkpoint (`StopOnSignal`), publishing nothing.
    6. `measure(trainer, train_result, resume)` -> the metrics, saved as `eval_results.json`.
    7. The artifact (`save_artifact`): `fill_artifact(trainer, folder, metrics)` writes the stage's files.
    8. The tracker closes, the checkpoints go (unless keep_checkpoints), the process group ends.
    """
    script_args, training_args, *more_configs = configs
    identity = run_identity(stage, configs)
    tracker = TrackerCallback(stage, training_args.output_dir, training_args, script_args, *more_configs)
    data = load_data()
    final_dir = Path(training_args.output_dir)
    _ = training_args.device  # the process group: every rank agrees on the lock
    with one_writer(final_dir, stage, training_args.process_index == 0):
        resume = resolve_resume(training_args.resume_from_checkpoint, final_dir)
        begin_run(identity, final_dir, resume, script_args.overwrite_output_dir, training_args)
        training_args.output_dir = str(checkpoints_dir(final_dir))  # checkpoint-N/ go here, never final_dir

        stop = StopOnSignal()
        trainer = build_trainer(data, resume, [*(callbacks or []), tracker, StopOnNonFinite(final_dir), stop])
        report_engine(trainer.accelerator)
        with (
            stop.request.installed(),
            training_context(trainer) if training_context else contextlib.nullcontext(),
        ):
            try:
                train_result = trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
            except UserError as err:  # mid-run (the user's reward function failed at step N): what can resume
                if isinstance(err, NonFiniteError):  # (it gives its own advice)
                    raise
                latest = (list_checkpoints(final_dir) or [None])[-1]
                raise UserError(f"{err} {resume_advice(trainer.state.global_step + 1, latest)}") from err
        if stop.stopped_at is not None:  # checkpointed by the Trainer at that step; nothing is published
            tracker.finish()
            finish_training(trainer, final_dir, keep=True)
            raise Stopped(stop.request.signal_name, stop.stopped_at, list_checkpoints(final_dir)[-1])
        metrics = measure(trainer, train_result, resume)

        save_artifact(trainer, final_dir, identity, metrics, fill_artifact)
        tracker.finish()
        finish_training(trainer, final_dir, script_args.keep_checkpoints)
    return metrics


def begin_run(identity: dict, final_dir: Path, resume, overwrite: bool, training_args) -> None:
    """The run-identity check on every rank, then the main process empties the work folder and records the run
    while the other ranks wait (before anything, the start model of the reward stage included, is written there)."""

    check_run(identity, final_dir, resume, overwrite)
    with training_args.main_process_first(local=False, desc="recording the run"):
        if training_args.process_index == 0:
            start_run(identity, final_dir, resume)


def save_artifact(trainer, final_dir: Path, identity: dict, metrics: dict, fill_artifact: Callable) -> None:
    """The end of every Trainer stage. Call it on EVERY rank.

    Stops on non-finite weights; then, in a staging folder, `fill_artifact(trainer, folder, metrics)` writes the
    stage's files on every rank (it may add to `metrics`), the main process adds the run record and
    `eval_results.json`, and the folder becomes `final_dir` in one rename. Then a push, when asked.
    """
    check_finite_weights(trainer)
    is_main = trainer.is_world_process_zero()
    with staged_dir(final_dir, is_main) as folder:
        fill_artifact(trainer, folder, metrics)
        if is_main:
            write_run(folder, identity)
            (folder / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    trainer.accelerator.wait_for_everyone()
    if trainer.args.push_to_hub:
        trainer.push_to_hub()  # the standard Trainer path: what it trained (adapter or model) + model card


def save_trained_weights(trainer, directory: Path) -> None:
    """The trained adapter or model into `directory`. Call it on EVERY rank, the main process writes.

    Under FSDP and ZeRO-3, Trainer.save_model first gathers the sharded weights, a collective: called on the main
    process alone it waits forever for the others.
    """
    trainer.save_model(str(directory))
    if trainer.is_world_process_zero():
        (directory / "training_args.bin").unlink(missing_ok=True)  # pickled; nothing downstream needs it
    local_loading_from_now_on()


def save_policy(trainer, folder: Path, tokenizer, merge: bool, model_args) -> None:
    """A causal-LM stage's artifact (SFT, GRPO, RLOO, DPO), on EVERY rank: the adapter (or full model) and the
    tokenizer, and with `merge` a plain merged model in `merged/`."""
    save_trained_weights(trainer, folder)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(folder)
        if merge and model_args.use_peft:
            merged = merge_adapter(AutoModelForCausalLM, folder, model_args, trainer.args.trust_remote_code)
            merged.save_pretrained(folder / "merged")
            tokenizer.save_pretrained(folder / "merged")


def local_loading_from_now_on() -> None:
    """After the final save: later from_pretrained calls (merging, scoring) run on the main process alone, so they
    must load plain weights, not partition them across ranks as every load does under ZeRO-3 (a collective that
    would wait forever for the other ranks)."""
    unset_hf_deepspeed_config()


class StopOnSignal(TrainerCallback):
    """A scheduler's signal (pipeline/common/preemption.py): the Trainer ends the step it is in, saves a normal
    checkpoint and stops; every rank agrees at each step end, so all stop at the same step."""

    def __init__(self):
        self.request = StopRequest()
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.request.agreed(args.device) and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_save = control.should_training_stop = True


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


def check_finite_weights(trainer) -> None:
    """Collective: stop before saving when a trainable weight is NaN/Inf on any rank."""
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
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def is_sharded(accelerator) -> bool:
    """Weights, gradients or optimizer state are split across ranks (DeepSpeed ZeRO, FSDP): saves are collective."""
    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def report_engine(accelerator) -> None:
    """One line on the main process naming the engine that runs the stage when it is distributed, and a warning
    when the launch config asked for DeepSpeed or FSDP but Accelerate did not start it.

    Accelerate runs FSDP on accelerators only: on CPU it falls back to DDP without a word, and a user would
    believe the model is sharded. (DeepSpeed does run on CPU processes, through its CPU accelerator and gloo.)
    """
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
