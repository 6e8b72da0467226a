"""Stage 3 beside our PPO, through TRL's own trainers: what GRPO, RLOO and DPO share.

Each starts from the SFT stage's plain merged model (`<sft>/merged`) with a fresh LoRA adapter (QLoRA with
`load_in_4bit`, full fine-tuning with `use_peft: false`), so its KL reference, the adapter switched off, is the SFT
policy itself. Each writes what the SFT stage writes: the adapter + tokenizer at `output_dir`, a plain merged model
in `merged/`, the trainer's log as `metrics.jsonl`, its run record; checkpoints in `<output_dir>.checkpoints/`.

GRPO and RLOO score their samples through `pipeline.lm.scoring.RewardScorer`, the scorer of PPO and evaluation,
handed to TRL as a reward *function*: TRL's own reward-model path decodes a completion without its EOS, which is
not how our reward model was trained (it reads the score at the EOS of a finished answer). They sample on-policy:
TRL sets only some sampling fields, so the model's own `generation_config` (no_repeat_ngram_size, bad_words_ids,
...) is set aside while they train, as in PPO (`pipeline.lm.sampling`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM

from pipeline.common.config import ConfigError, UserError, nulls_to_none, required
from pipeline.common.data import load_prompts
from pipeline.common.models import (
    adapter_base_path,
    is_adapter_dir,
    load_model,
    load_tokenizer,
)
from pipeline.common.outputs import same_model_path
from pipeline.common.training import (
    RunOutputArguments,
    check_quantized_needs_peft,
    peft_config,
    run_trainer_stage,
    save_policy,
)
from pipeline.lm.sampling import check_untruncated, generation_config, our_config_only
from pipeline.lm.scoring import RewardScorer


@dataclass
class PolicyOutputArguments(RunOutputArguments):
    merge_adapter: bool = field(
        default=True, metadata={"help": "also write a plain merged model to <output_dir>/merged"}
    )


@dataclass
class OnlineScriptArguments(PolicyOutputArguments):
    """What GRPO and RLOO sample from and how their samples are scored (the start model is model_name_or_path)."""

    prompts_path: str | None = required(
        "datasets.save_to_disk dir of {prompt} rows (runs/<recipe>/data/prompts)"
    )
    reward_model_path: str | None = field(
        default=None, metadata={"help": "the reward stage's output (runs/<recipe>/reward)"}
    )
    reward_fn: str | None = field(
        default=None,
        metadata={"help": "score with a Python function 'module:function' f(prompts, responses) -> scores instead "
                  "of a reward model (set reward_model_path to null)"},
    )  # fmt: skip
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "subtracted from the score of an answer cut off at max_completion_length"},
    )
    reward_batch_size: int = field(default=32, metadata={"help": "answers per reward-model forward pass"})
    init_adapter_path: str | None = field(
        default=None,
        metadata={"help": "continue this LoRA adapter (an earlier run's policy on the same start model: a round of "
                  "`make rounds`) instead of a fresh one; the KL reference stays the start model"},
    )  # fmt: skip

    def __post_init__(self):
        nulls_to_none(self, ("reward_model_path", "reward_fn", "init_adapter_path"))
        if bool(self.reward_model_path) == bool(self.reward_fn):
            raise UserError("Set exactly one of reward_model_path and reward_fn (set the other to null).")


# --- the start model -----------------------------------------------------------------------------------------


def sft_policy_path(name_or_path: str) -> str:
    """The plain model to start from: an SFT adapter dir's `merged/` model, or the path itself (a plain model).

    The new adapter records this path as its base, so it must outlive the run: a merge made on the fly would not.
    """

    if not Path(name_or_path).exists() or not is_adapter_dir(name_or_path):
        return name_or_path
    merged = Path(name_or_path) / "merged"
    if not (merged / "config.json").is_file():
        raise UserError(
            f"{name_or_path} is a LoRA adapter without a merged model: rerun the SFT stage with "
            "`merge_adapter: true` (the recipes do), or point model_name_or_path at a plain model."
        )
    return str(merged)


def load_start_model(model_args, trust_remote_code: bool):
    """(model, tokenizer, start path): the SFT policy as a plain causal LM, through the one loader."""
    if not model_args.model_name_or_path:
        raise UserError("Set model_name_or_path: the SFT stage's output (runs/<recipe>/sft).")
    check_quantized_needs_peft(model_args)
    start = sft_policy_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(start, model_args.model_revision, trust_remote_code)
    model = load_model(AutoModelForCausalLM, start, model_args, trust_remote_code)
    return model, tokenizer, start


def start_adapter(model, init_adapter_path: str | None, model_args):
    """(model, peft config for TRL): a fresh LoRA adapter as the recipe sets it, or the earlier policy's adapter
    continued, trainable, on the same start model. Either way TRL's reference is the start model itself (the
    adapter disabled), so an earlier round's policy keeps the SFT policy as its KL reference."""
    if not init_adapter_path:
        return model, peft_config(model_args)
    start = sft_policy_path(model_args.model_name_or_path)
    if not is_adapter_dir(init_adapter_path):
        raise UserError(
            f"init_adapter_path {init_adapter_path} is not a LoRA adapter folder (adapter_config.json)."
        )
    if not same_model_path(adapter_base_path(init_adapter_path), start):
        raise UserError(f"init_adapter_path {init_adapter_path} is an adapter on {adapter_base_path(init_adapter_path)}, "
                        f"not on this run's start model {start}: it must come from a run on the same SFT policy.")  # fmt: skip
    return PeftModel.from_pretrained(model, init_adapter_path, is_trainable=True), None


# --- on-policy sampling and scoring (GRPO, RLOO) ---------------------------------------------------------------


def check_on_policy(training_args, stage: str) -> None:
    """TRL computes the sampled tokens' log-probs from softmax(logits / temperature) over the whole vocabulary, the
    distribution its ratios and KL assume: a truncating or reshaping sampler would make the updates off-policy."""

    check_untruncated(training_args.top_k, training_args.top_p, stage)
    if training_args.min_p not in (None, 0.0) or training_args.repetition_penalty != 1.0:
        raise ConfigError(
            f"{stage} samples from softmax(logits / temperature); min_p={training_args.min_p} / "
            f"repetition_penalty={training_args.repetition_penalty} would change that distribution (off-policy). "
            "Leave min_p unset and repetition_penalty at 1.0."
        )
    if training_args.generation_kwargs:
        raise ConfigError(
            f"{stage}: generation_kwargs {training_args.generation_kwargs} would change how answers are sampled; "
            "sampling is set by temperature and max_completion_length alone."
        )
    if training_args.beta == 0:
        print(
            f"Warning: {stage} runs with beta 0: no KL penalty to the SFT policy, nothing holds it near it."
        )


class ScoredReward:
    """A TRL reward function over our `RewardScorer`: the same EOS and truncation rule as PPO and evaluation.

    TRL decodes completions without special tokens; an answer ended if its ids end with an EOS (TRL keeps the
    tokens up to and including the first one), and then gets it back before scoring."""

    def __init__(self, scorer, eos_token_ids: list[int], missing_eos_penalty: float | None, name: str):
        self.scorer, self.eos, self.penalty = scorer, set(eos_token_ids), missing_eos_penalty
        self.__name__ = name  # TRL logs each reward function's mean as rewards/<__name__>/mean

    def ended(self, completion_ids: list[list[int]]) -> list[bool]:
        return [bool(ids) and ids[-1] in self.eos for ids in completion_ids]

    def __call__(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]], **kwargs):
        ended = self.ended(completion_ids)
        scores = self.scorer(prompts, completions, ended).tolist()
        if self.penalty:
            scores = [s if e else s - self.penalty for s, e in zip(scores, ended)]
        return scores


def reward_function(script_args: OnlineScriptArguments, model_args, tokenizer, device, remote_code: bool):
    scorer = RewardScorer(script_args.reward_model_path, script_args.reward_fn, model_args, device,
                          script_args.reward_batch_size, remote_code)  # fmt: skip
    name = "reward_model" if script_args.reward_model_path else script_args.reward_fn.rsplit(":", 1)[-1]
    return ScoredReward(scorer, [tokenizer.eos_token_id], script_args.missing_eos_penalty, name)


# --- the run -------------------------------------------------------------------------------------------------


def train_policy(
    stage: str, configs: tuple, load_data, build_trainer, callbacks=None, training_context=None
) -> dict:
    """GRPO, RLOO or DPO from its parsed `configs`: `load_data()` reads and checks the data before anything is
    written or loaded; the start model (`load_start_model`) goes to `build_trainer(model, tokenizer, data, callbacks)`
    -> the TRL trainer; the artifact is the policy (`save_policy`) with TRL's log; returns the metrics."""
    script_args, training_args, model_args = configs
    final_dir = Path(training_args.output_dir)
    start = None  # the plain model the policy starts from, as loaded in build

    def build(data, resume, stage_callbacks):
        nonlocal start
        model, tokenizer, start = load_start_model(model_args, training_args.trust_remote_code)
        return build_trainer(model, tokenizer, data, stage_callbacks)

    def measure(trainer, train_result, resume):
        return {**train_result.metrics, "start_model": start,
                "resumed_from_checkpoint": None if resume is None else str(resume)}  # fmt: skip

    def fill_artifact(trainer, folder, metrics):
        save_policy(trainer, folder, trainer.processing_class, script_args.merge_adapter, model_args)
        if trainer.is_world_process_zero():
            write_log(trainer, folder)

    metrics = run_trainer_stage(stage, configs, load_data=load_data, build_trainer=build, measure=measure,
                                fill_artifact=fill_artifact, callbacks=callbacks,
                                training_context=training_context)  # fmt: skip
    if training_args.process_index == 0:
        print(f"Saved to {final_dir}")
    return metrics


def write_log(trainer, folder: Path) -> None:
    """TRL's log (every logged step's metrics, the evaluations) as `metrics.jsonl`, one JSON line per entry."""
    with open(folder / "metrics.jsonl", "w") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps({"step": entry.get("step"), **entry}) + "\n")


def train_online(stage: str, trainer_class, configs: tuple, callbacks=None) -> dict:
    """GRPO or RLOO: TRL's trainer on our prompts, scored by our scorer, sampling with our settings only."""
    script_args, training_args, model_args = configs

    def load_data():
        check_on_policy(training_args, stage.upper())
        return Dataset.from_dict({"prompt": load_prompts(script_args.prompts_path, "prompt")})

    def build_trainer(model, tokenizer, prompts, stage_callbacks):
        reward = reward_function(script_args, model_args, tokenizer, training_args.device,
                                 training_args.trust_remote_code)  # fmt: skip
        model, lora = start_adapter(model, script_args.init_adapter_path, model_args)
        trainer = trainer_class(model=model, reward_funcs=[reward], args=training_args, train_dataset=prompts,
                                processing_class=tokenizer, peft_config=lora, callbacks=stage_callbacks)  # fmt: skip
        # TRL ends an answer at every EOS id the model declares (an end-of-turn token too): so does the scorer.
        reward.eos = set(getattr(trainer, "eos_token_ids", None) or [tokenizer.eos_token_id])
        return trainer

    def sampling_with_our_config_only(trainer):
        # TRL's GenerationConfig leaves every field it does not set to the model's generation_config: ours,
        # every logits processor off, stands in for the model's own while it trains (restored before saving).
        tokenizer = trainer.processing_class
        neutral = generation_config(training_args.max_completion_length, training_args.temperature, tokenizer)
        return our_config_only(trainer.model, neutral)

    return train_policy(stage, configs, load_data, build_trainer, callbacks, sampling_with_our_config_only)
