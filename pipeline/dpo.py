"""Stage 3, DPO (Rafailov et al., 2023) through TRL's `DPOTrainer`: the SFT policy trained on the preference pairs
directly, with no reward model and no sampling.

The loss is -log sigmoid(beta * (log-ratio of chosen - log-ratio of rejected)), each log-ratio taken against the
SFT policy (the start model with the new adapter switched off). Held-out pairs are evaluated at each `eval_strategy` point
(the recipe: every epoch); the implicit reward's accuracy is `eval_rewards/accuracies` in `metrics.jsonl`. Start model and output layout: `pipeline.online`.

    python -m pipeline.dpo --config recipes/tiny/dpo.yaml [--beta 0.1 ...]

Output (`output_dir`): the LoRA adapter + tokenizer, a plain merged model in `merged/`, `metrics.jsonl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig, DPOTrainer

from pipeline.common.config import parse_config, required, run_main
from pipeline.common.data import load_pairs
from pipeline.common.training import LoraModelConfig, peft_config
from pipeline.online import PolicyOutputArguments, train_policy


@dataclass
class DPOScriptArguments(PolicyOutputArguments):
    dataset_path: str | None = required(
        "datasets.save_to_disk dir (DatasetDict) with {prompt, chosen, rejected}"
    )
    train_split: str = "train"
    eval_split: str = field(
        default="test", metadata={"help": "held-out pairs evaluated after training ('' to skip)"}
    )


CONFIG_TYPES = (DPOScriptArguments, DPOConfig, LoraModelConfig)


def main(args=None, callbacks=None) -> dict:
    configs = parse_config(CONFIG_TYPES, args)
    script_args, training_args, model_args = configs

    def load_data():
        columns = ["prompt", "chosen", "rejected"]
        train, held_out = load_pairs(
            script_args.dataset_path, script_args.train_split, script_args.eval_split or None
        )
        return train.select_columns(columns), None if held_out is None else held_out.select_columns(columns)

    def build_trainer(model, tokenizer, pairs, stage_callbacks):
        train, held_out = pairs
        return DPOTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=held_out,
                          processing_class=tokenizer, peft_config=peft_config(model_args),
                          callbacks=stage_callbacks)  # fmt: skip

    return train_policy("dpo", configs, load_data, build_trainer, callbacks)


if __name__ == "__main__":
    run_main(main)
