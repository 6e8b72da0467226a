"""Stage 1: supervised fine-tuning (SFT) on demonstrations, with TRL's `SFTTrainer`.

LoRA on every linear layer by default; QLoRA with `load_in_4bit: true` (bitsandbytes, works on CPU too); full
fine-tuning with `use_peft: false`. The loss covers the response only: the completion of `{prompt, completion}`
rows, the assistant turns (via the chat template) of `{messages}` rows. Held-out loss is measured before and
after training with the same loss, and saved in `eval_results.json` as `base_eval_loss` and `eval_loss`.

    python -m pipeline.sft --config recipes/tiny/sft.yaml [--learning_rate 1e-3 ...]
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m pipeline.sft --config ...

Output (`output_dir`): the LoRA adapter + tokenizer (adapter_config.json names the base model), and with
`merge_adapter: true` a plain merged model in `merged/` (`AutoModelForCausalLM.from_pretrained(dir/merged)`).
Full fine-tuning writes a plain model at the root. Checkpoints go to `<output_dir>.checkpoints/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from pipeline.common.config import UserError, parse_config, required, run_main
from pipeline.common.data import load_demonstrations
from pipeline.common.models import load_model, load_tokenizer
from pipeline.common.training import (
    LoraModelConfig,
    RunOutputArguments,
    check_quantized_needs_peft,
    count_tokens,
    peft_config,
    run_trainer_stage,
    save_policy,
    tokens_per_second,
)


@dataclass
class SFTScriptArguments(RunOutputArguments):
    """Which data to train on and what to write besides the adapter."""

    dataset_path: str | None = required(
        "datasets.save_to_disk dir (DatasetDict) with {prompt, completion} or {messages} rows"
    )
    train_split: str = "train"
    eval_split: str = field(
        default="test", metadata={"help": "held-out split for eval loss ('' to skip eval)"}
    )
    merge_adapter: bool = field(
        default=False, metadata={"help": "also write a plain merged model to <output_dir>/merged"}
    )


CONFIG_TYPES = (SFTScriptArguments, SFTConfig, LoraModelConfig)


def main(args=None, callbacks=None):
    """Run the stage; `callbacks` (TrainerCallback list) lets tests and tools observe the trainer."""
    script_args, training_args, model_args = parse_config(CONFIG_TYPES, args)
    final_dir = Path(training_args.output_dir)

    def load_data():
        if not model_args.model_name_or_path:
            raise UserError("Set model_name_or_path (a local model dir or a hub id).")
        return load_demonstrations(
            script_args.dataset_path, script_args.train_split, script_args.eval_split or None
        )

    def build_trainer(data, resume, stage_callbacks):
        train_data, eval_data = data
        remote_code = training_args.trust_remote_code
        tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.model_revision, remote_code)
        if "messages" in train_data.column_names:
            if tokenizer.chat_template is None and training_args.chat_template_path is None:
                raise UserError(
                    f"{script_args.dataset_path} holds chat `messages` but the tokenizer of "
                    f"{model_args.model_name_or_path} has no chat template; set chat_template_path."
                )
            # "Loss on the response only" for chat data = loss on the assistant turns (the template marks them).
            if training_args.completion_only_loss is not False:
                training_args.assistant_only_loss = True

        # Loaded here, through the one loader, not by SFTTrainer from the path: TRL 1.16's create_model_from_path
        # reads the config at the default branch to pick the model class, ignoring `revision`
        # (tests/test_model_revision.py).
        check_quantized_needs_peft(model_args)
        count_tokens(training_args)
        model = load_model(AutoModelForCausalLM, model_args.model_name_or_path, model_args, remote_code)
        # The base model's held-out loss, measured by the Trainer once it has wrapped the model for data
        # parallelism (a fresh LoRA adapter is a no-op, B = 0, so this is the base model under the same masking).
        # Not a plain evaluate() before train(): that marks the model as prepared unwrapped, and under DDP the
        # ranks then train without synchronising gradients.
        training_args.eval_on_start = training_args.eval_on_start or measures_base_loss(eval_data, resume)
        return SFTTrainer(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_data,
                          processing_class=tokenizer, peft_config=peft_config(model_args),
                          callbacks=stage_callbacks)  # fmt: skip

    def measure(trainer, train_result, resume):
        metrics = dict(train_result.metrics)
        if measures_base_loss(trainer.eval_dataset, resume):
            metrics["base_eval_loss"] = next(
                log["eval_loss"] for log in trainer.state.log_history if "eval_loss" in log
            )
        metrics["train_tokens_per_second"] = tokens_per_second(trainer, train_result.metrics)
        metrics["resumed_from_checkpoint"] = None if resume is None else str(resume)
        if trainer.eval_dataset is not None:
            metrics.update(trainer.evaluate())
        return metrics

    def fill_artifact(trainer, folder, metrics):
        save_policy(trainer, folder, trainer.processing_class, script_args.merge_adapter, model_args)

    metrics = run_trainer_stage("sft", (script_args, training_args, model_args), load_data=load_data,
                                build_trainer=build_trainer, measure=measure, fill_artifact=fill_artifact,
                                callbacks=callbacks)  # fmt: skip
    if training_args.process_index == 0:
        if "base_eval_loss" in metrics:
            base, tuned = metrics["base_eval_loss"], metrics["eval_loss"]
            print(f"Held-out completion loss: base {base:.3f} -> SFT {tuned:.3f}")
        print(f"Saved to {final_dir}")
    return metrics


def measures_base_loss(eval_data, resume) -> bool:
    """A fresh run with held-out data measures the base model's loss first (a resumed run measured it before)."""
    return eval_data is not None and resume is None


if __name__ == "__main__":
    run_main(main)
