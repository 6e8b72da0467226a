"""Stage 2: a reward model trained on preference pairs with TRL's `RewardTrainer` (Bradley-Terry loss).

The model is `AutoModelForSequenceClassification` with one output (the reward, read at the last non-pad token),
started from the base model or from the SFT model (an SFT adapter dir is merged into its base first). The loss
is -log sigmoid(r_chosen - r_rejected - margin), with the data's `margin` column when it has one
(`use_margin: false` ignores it). Held-out pair accuracy is measured on the saved model with the scorer PPO and
evaluation use (`pipeline.lm.scoring`), every process scoring its share on its own device, and saved to
`eval_results.json`. `packing: true` trains on each batch's texts packed into rows, no padding computed, with the
padded batch's rewards and gradients (`pipeline.lm.packing`).

    python -m pipeline.reward --config recipes/tiny/reward.yaml

Output (`output_dir`): a PLAIN reward model + tokenizer (LoRA merged in, `config.pad_token_id` set), so PPO and
users load it with no PEFT involved. Its pad token is never the EOS (`pipeline.common.models.distinct_pad_token`: an
unused special token, or an added one), so the score of a finished answer is read at its EOS:

    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained("runs/tiny/reward")
    tokenizer = AutoTokenizer.from_pretrained("runs/tiny/reward")
    batch = tokenizer([prompt + response + tokenizer.eos_token], return_tensors="pt")
    reward = model(**batch).logits[0, 0]

With LoRA it also keeps the adapter (incl. the trained score head) in `adapter/`. Checkpoints go to
`<output_dir>.checkpoints/` (`pipeline.common.outputs`); `--resume_from_checkpoint true` continues from the last one. The
tokenizer's `model_max_length` is the training `max_length`: longer texts are scored on their last tokens.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning

from pipeline.common.config import UserError, parse_config, required
from pipeline.common.data import load_pairs, read_saved
from pipeline.common.models import (
    distinct_pad_token,
    is_adapter_dir,
    load_model,
    load_tokenizer,
    merge_adapter,
)
from pipeline.common.outputs import checkpoints_dir
from pipeline.common.precision import fp32_score_head
from pipeline.common.training import (
    LoraModelConfig,
    RunOutputArguments,
    check_quantized_needs_peft,
    count_tokens,
    peft_config,
    run_trainer_stage,
    save_trained_weights,
    tokens_per_second,
)
from pipeline.lm.scoring import RewardScorer, accuracy, sharded_margins
from pipeline.reward.grouped import GroupCollator, GroupedRewardTrainer, group_pairs
from pipeline.reward.packed import PackedRewardTrainer


@dataclass
class RewardScriptArguments(RunOutputArguments):
    """Which pairs to train on."""

    dataset_path: str | None = required(
        "datasets.save_to_disk dir (DatasetDict) with {prompt, chosen, rejected[, margin]} rows"
    )
    train_split: str = "train"
    eval_split: str = field(default="test", metadata={"help": "held-out pairs for accuracy ('' to skip)"})
    use_margin: bool = field(
        default=True, metadata={"help": "subtract the data's `margin` column inside the loss when present"}
    )
    grouped: bool = field(
        default=False,
        metadata={"help": "InstructGPT's ranking loss: all pairs of a prompt in one batch element, each answer "
                  "scored once (pipeline.reward.grouped); per_device_train_batch_size then counts prompts"},
    )  # fmt: skip
    packing: bool = field(
        default=False,
        metadata={"help": "pack each batch's chosen and rejected texts into rows of max_length tokens, each text "
                  "attending only to itself (pipeline.lm.packing): the padded batch's loss and gradients without the "
                  "padding; the first batch is checked against unpacked scoring"},
    )  # fmt: skip


@dataclass
class RewardModelConfig(LoraModelConfig):
    """LoRA for sequence classification: the freshly initialised score head is trained in full alongside."""

    lora_task_type: str = "SEQ_CLS"
    lora_modules_to_save: list[str] | None = field(default_factory=lambda: ["score"])


CONFIG_TYPES = (RewardScriptArguments, RewardConfig, RewardModelConfig)


def resolve_start_model(name_or_path: str, model_args, remote_code: bool, scratch: Path) -> str:
    """A plain model to start from. An SFT adapter dir -> its `merged/` model, or a merge written to `scratch`."""
    if not is_adapter_dir(name_or_path):
        return name_or_path
    if (Path(name_or_path) / "merged" / "config.json").is_file():
        return str(Path(name_or_path) / "merged")
    merged = merge_adapter(AutoModelForCausalLM, name_or_path, model_args, remote_code)
    merged.save_pretrained(scratch)
    return str(scratch)


def with_pad_embedding(start: str, tokenizer, model_args, remote_code: bool, scratch: Path) -> str:
    """The start model with an embedding row for the pad token just added to its tokenizer, written to `scratch`
    (LoRA and the final merge then share one base). The row's value never matters: padding is masked."""
    model = load_model(AutoModelForCausalLM, start, model_args, remote_code, quantize=False)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    return str(scratch)


def main(args=None, callbacks=None):
    """Run the stage; `callbacks` (TrainerCallback list) lets tests and tools observe the trainer."""
    script_args, training_args, model_args = parse_config(CONFIG_TYPES, args)
    final_dir = Path(training_args.output_dir)
    remote_code = training_args.trust_remote_code
    scratch = checkpoints_dir(final_dir)  # the start model's prepared copies, deleted once the model is saved
    # Set by build_trainer for what follows: the tokenizer (its pad token made distinct from the EOS), whether it
    # padded with its EOS before, the plain model training starts from, and the held-out pairs as read.
    tokenizer = eos_padded = start = eval_pairs = None

    def load_data():
        if not model_args.model_name_or_path:
            raise UserError("Set model_name_or_path (the base or SFT model: a local dir or a hub id).")
        if script_args.packing and script_args.grouped:
            raise UserError(
                "packing and grouped are two ways to batch the reward model's texts: set one of them."
            )
        return load_pairs(
            script_args.dataset_path,
            script_args.train_split,
            script_args.eval_split or None,
            script_args.use_margin,
        )

    def build_trainer(data, resume, stage_callbacks):
        nonlocal tokenizer, eos_padded, start, eval_pairs
        train_data, eval_pairs = data
        tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.model_revision, remote_code)
        eos_padded = tokenizer.pad_token_id == tokenizer.eos_token_id
        # The score must be read at the EOS that ends a finished answer: the pad token must differ from it.
        added_pad = distinct_pad_token(tokenizer)
        start = resolve_start_model(
            model_args.model_name_or_path, model_args, remote_code, scratch / "start-model"
        )
        if added_pad:
            start = with_pad_embedding(
                start, tokenizer, model_args, remote_code, scratch / "start-model-padded"
            )

        # Loaded here, through the one loader, not by RewardTrainer from the path: TRL 1.16 would read the config
        # at the default branch, ignoring `revision` (as for SFT), and draw the LoRA weights right after the score
        # head without reseeding, which gives another reward model for the same seed than the one every learning
        # threshold was sized on (on seed 0 PPO then exploited it: labeler 0.805 -> -0.078 instead of 1.555). TRL
        # still seeds before LoRA and sets config.pad_token_id.
        check_quantized_needs_peft(model_args)
        count_tokens(training_args)
        set_seed(training_args.seed)  # the score head is drawn while loading
        with suppress_seqcls_warning():  # the new score head and the dropped lm_head are expected, not errors
            model = load_model(AutoModelForSequenceClassification, start, model_args, remote_code, num_labels=1,
                               pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        fp32_score_head(model)  # bf16 trunk, fp32 score and loss (pipeline.common.precision)
        if script_args.grouped:
            return grouped_trainer(model, training_args, model_args, train_data, tokenizer, stage_callbacks)
        trainer_class, extra = RewardTrainer, {}
        if script_args.packing:
            trainer_class, extra = PackedRewardTrainer, {"pack_width": training_args.max_length or 1024}
        return trainer_class(model=model, args=training_args, train_dataset=train_data, eval_dataset=eval_pairs,
                             processing_class=tokenizer, peft_config=peft_config(model_args),
                             callbacks=stage_callbacks, **extra)  # fmt: skip

    def measure(trainer, train_result, resume):
        metrics = dict(train_result.metrics)
        metrics["train_tokens_per_second"] = tokens_per_second(trainer, train_result.metrics)
        metrics["resumed_from_checkpoint"] = None if resume is None else str(resume)
        if trainer.eval_dataset is not None:  # TRL's eval metrics; eval_accuracy is exact (fill_artifact)
            metrics.update({f"trainer_{k}": v for k, v in trainer.evaluate().items()})
        return metrics

    def fill_artifact(trainer, folder, metrics):
        save_trained_weights(trainer, folder / "adapter" if model_args.use_peft else folder)
        if trainer.is_world_process_zero():
            if model_args.use_peft:
                merge_reward_adapter(folder, tokenizer, start, model_args, remote_code)
            tokenizer.model_max_length = training_args.max_length or tokenizer.model_max_length
            tokenizer.save_pretrained(folder)
            for name in ("start-model", "start-model-padded"):
                shutil.rmtree(scratch / name, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        if (
            eval_pairs is not None
        ):  # exact accuracy of the saved model on each held-out pair, each rank its share
            metrics.update(heldout_accuracy(str(folder), eval_pairs, training_args, trainer.accelerator))
        # Every other held-out split on its own (the rounds' slices: round_1, round_2, ...)
        for split, pairs in other_splits(script_args).items():
            result = heldout_accuracy(str(folder), pairs, training_args, trainer.accelerator)
            metrics[f"eval_accuracy_{split}"] = result["eval_accuracy"]
            metrics[f"eval_pairs_{split}"] = result["eval_pairs"]

    metrics = run_trainer_stage("reward", (script_args, training_args, model_args), load_data=load_data,
                                build_trainer=build_trainer, measure=measure, fill_artifact=fill_artifact,
                                callbacks=callbacks)  # fmt: skip
    if training_args.process_index == 0:
        if eos_padded:
            print(
                f"The tokenizer padded with its EOS; the reward model pads with {tokenizer.pad_token!r} instead."
            )
        if "eval_accuracy" in metrics:
            print(f"Held-out pair accuracy {metrics['eval_accuracy']:.3f} on {metrics['eval_pairs']} pairs")
        for split in other_splits(script_args):
            print(
                f"  on {split}: {metrics[f'eval_accuracy_{split}']:.3f} on {metrics[f'eval_pairs_{split}']} pairs"
            )
        print(f"Saved to {final_dir}")
    return metrics


def other_splits(script_args) -> dict:
    """The data's held-out splits besides eval_split (a round's slice of its own comparisons: round_<k>), each
    reported on its own in eval_results.json as eval_accuracy_<split>."""
    data = read_saved(Path(script_args.dataset_path), "Preference data")
    skip = {script_args.train_split, script_args.eval_split}
    return {name: split for name, split in data.items() if name not in skip and len(split)}


def grouped_trainer(model, training_args, model_args, pairs, tokenizer, callbacks):
    """The grouped ranking loss (pipeline.reward.grouped) on transformers' Trainer, LoRA wrapped here as TRL would."""
    config = peft_config(model_args)
    if config is not None:
        model = get_peft_model(model, config)
    training_args.remove_unused_columns = False  # the collator reads the group columns
    return GroupedRewardTrainer(model=model, args=training_args, train_dataset=Dataset.from_list(group_pairs(pairs)),
                                data_collator=GroupCollator(tokenizer, training_args.max_length),
                                processing_class=tokenizer, callbacks=callbacks)  # fmt: skip


def merge_reward_adapter(tmp: Path, tokenizer, start: str, model_args, remote_code: bool) -> None:
    """The plain reward model at `tmp`: the start model with the LoRA adapter saved in `tmp/adapter` merged in."""
    with suppress_seqcls_warning():
        model = merge_adapter(AutoModelForSequenceClassification, tmp / "adapter", model_args, remote_code,
                              base=start, num_labels=1, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp)


def heldout_accuracy(model_dir: str, pairs, training_args, accelerator) -> dict:
    """Accuracy of the saved reward model on `pairs`, scored as PPO and evaluation score (`pipeline.lm.scoring`).

    Every process scores a contiguous share on its own device (`accelerator.device`), so an 8B reward model is
    never run over thousands of pairs on one CPU while the other ranks wait for it."""

    scorer = RewardScorer(model_dir, device=accelerator.device, batch_size=training_args.per_device_eval_batch_size,
                          trust_remote_code=training_args.trust_remote_code)  # fmt: skip
    margins, counts = sharded_margins(scorer, pairs.select_columns(["prompt", "chosen", "rejected"]).to_list(),
                                      accelerator)  # fmt: skip
    del scorer
    return {"eval_accuracy": accuracy(margins), "eval_pairs": len(margins), "eval_pairs_per_process": counts,
            "eval_device": accelerator.device.type}  # fmt: skip
