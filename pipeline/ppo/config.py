"""PPOConfig: the old TRL PPOConfig field names (so practitioners, and the benchmark, can drive both) on top of
`transformers.TrainingArguments`, as TRL's OnPolicyConfig did.

Subclassing TrainingArguments gives, under the names everyone knows, the fields in `HONOURED_TRAINING_ARGUMENTS`
(optimizer and schedule, precision, checkpointing, logging and trackers, seeds, processes). Every other
TrainingArguments field (eval_strategy, push_to_hub, torch_compile, ...) has no meaning in this loop: setting one
is an error that names it, never a silent no-op.

Batch sizes, as in old TRL (the properties and methods at the end of PPOConfig):
    local_batch_size      = per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches
    local_mini_batch_size = local_batch_size / num_mini_batches   (rows per optimizer step, per process)
    batch_size            = local_batch_size * num_processes      (prompts rolled out per PPO step)
    num_steps             = ceil(total_episodes / batch_size)     (max_steps, when set, wins)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from pipeline.common.config import ConfigError, nulls_to_none, required
from pipeline.lm.sampling import check_untruncated

# The TrainingArguments fields the PPO loop reads. The tracker fields are read by pipeline.common.tracking; ddp_* and
# local_rank by the process-group start-up (args.device); deepspeed by Accelerate.
HONOURED_TRAINING_ARGUMENTS = frozenset(
    [
        "output_dir",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
        "max_steps",
        "learning_rate",
        "lr_scheduler_type",
        "lr_scheduler_kwargs",
        "warmup_steps",
        "optim",
        "optim_args",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "bf16",
        "fp16",
        "activation_checkpointing",
        "gradient_checkpointing",
        "logging_steps",
        "disable_tqdm",  # PPO prints a line every logging_steps, never a progress bar: nothing to disable
        "save_steps",
        "save_total_limit",
        "resume_from_checkpoint",
        "seed",
        "use_cpu",
        "report_to",
        "run_name",
        "project",
        "trackio_space_id",
        "trackio_bucket_id",
        "trackio_static_space_id",
        "ddp_backend",
        "ddp_timeout",
        "local_rank",
        "deepspeed",
    ]
)
REFUSAL_HINTS = {
    "push_to_hub": "push the finished policy with `make push STAGE=ppo` (python -m pipeline.push)",
    "hub_model_id": "push the finished policy with `make push STAGE=ppo HUB_REPO=...`",
    "eval_strategy": "PPO samples `eval_prompts_path` every `sample_every` steps; `make eval` scores the policy",
    "save_strategy": "PPO saves every `save_steps` steps (0: never)",
    "fsdp": "choose FSDP in the Accelerate config (recipes/accelerate/fsdp.yaml)",
    "gradient_checkpointing_kwargs": "PPO always checkpoints with use_reentrant=False",
    "activation_checkpointing_kwargs": "PPO always checkpoints with use_reentrant=False",
}


@dataclass
class PPOConfig(TrainingArguments):
    # --- models and data -----------------------------------------------------------------------------------
    sft_model_path: str | None = required(
        "SFT policy: a PEFT adapter dir (the policy continues that adapter) or a plain model"
    )
    init_policy_path: str | None = field(
        default=None,
        metadata={"help": "start the policy (and its value head) from this one instead: an earlier PPO run's output on "
                  "the same SFT model, a round of `make rounds`; the KL reference stays the SFT policy. None: the SFT policy"},
    )  # fmt: skip
    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "AutoModelForSequenceClassification dir; its tokenizer may differ from the policy's"
        },
    )
    reward_fn: str | None = field(
        default=None,
        metadata={
            "help": "'module:function' with f(prompts, responses) -> list[float]; replaces the reward model"
        },
    )
    prompts_path: str | None = required("datasets dir with `prompt` (runs/<recipe>/data/prompts)")
    eval_prompts_path: str | None = field(
        default=None, metadata={"help": "held-out prompts for the sample table (none: no table)"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run model code from the hub (off: only transformers' own classes)"}
    )
    prompt_field: str = "prompt"
    max_prompt_length: int = field(default=512, metadata={"help": "longer prompts keep their last tokens"})
    value_head: str = field(
        default="shared",
        metadata={
            "help": "'shared': value head on the policy trunk (one forward for logits and values); "
            "'adapter': its own LoRA value adapter on the same frozen base, initialised from the reward "
            "model's adapter when they share a base"
        },
    )
    packing: bool = field(
        default=False,
        metadata={
            "help": "forward passes (rollout, reference, PPO epochs) on each batch's real tokens packed into rows, "
            "each text attending only to itself (pipeline.lm.packing): the padded batch's outputs without computing "
            "its padding; every position gets logits, so it pays for short answers and small vocabularies, not "
            "for long prompts under a large vocabulary. Checked against the padded forward on the first batch"
        },
    )
    reuse_rollout_forward: bool = field(
        default=True,
        metadata={
            "help": "the rollout's policy forward on the first PPO micro-batch runs with grad and is that micro-batch's "
            "forward in the first PPO epoch (the weights have not moved yet): one forward of "
            "per_device_train_batch_size rows saved per step, the same numbers. Its activations are held through "
            "the reference and reward passes; false frees them at once. Single process and DDP only"
        },
    )
    # --- budget and batching -------------------------------------------------------------------------------
    total_episodes: int | None = field(
        default=None,
        metadata={"help": "prompts to roll out in total; default num_train_epochs * len(prompts)"},
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    num_mini_batches: int = field(
        default=1, metadata={"help": "mini-batches (optimizer steps) per PPO epoch"}
    )
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "per-process batch for generation and no-grad forward passes"}
    )
    # --- sampling ------------------------------------------------------------------------------------------
    response_length: int = field(default=53, metadata={"help": "max new tokens per response"})
    temperature: float = 0.7
    # Accepted under TRL's names, refused unless neutral: the log-probs are softmax(logits / temperature) over the
    # whole vocabulary, so truncated sampling would make every update off-policy (README, "How PPO samples").
    top_k: int | None = field(default=None, metadata={"help": "must stay unset (or 0): no top-k truncation"})
    top_p: float = field(default=1.0, metadata={"help": "must stay 1.0: no nucleus truncation"})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "subtracted from the score of responses that never emit EOS"}
    )
    # --- PPO -----------------------------------------------------------------------------------------------
    kl_coef: float = field(
        default=0.05, metadata={"help": "KL penalty coefficient (initial value if adaptive)"}
    )
    kl_estimator: str = field(
        default="k1", metadata={"help": "'k1' (log p/q) or 'k3' (lower variance, >= 0)"}
    )
    adaptive_kl: bool = field(default=False, metadata={"help": "Ziegler et al. adaptive KL controller"})
    target_kl: float = 6.0
    max_kl: float | None = field(
        default=None,
        metadata={
            "help": "stop PPO (and save the policy of that step) once KL(policy || SFT) per answer passes this"
        },
    )
    kl_horizon: int = 10000
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    normalize_scores: bool = field(
        default=False,
        metadata={
            "help": "standardise every score by the mean and std of the reward model's scores on the first "
            "rollout's answers (the SFT policy's; init_policy_path's when set), as Ziegler et al. 2019 normalise "
            "their reward model: kl_coef, target_kl and missing_eos_penalty then mean the same whatever the reward "
            "model's scale (a reward model whose scores span tens of units would otherwise outweigh the KL "
            "penalty). Fixed for the run, stored in its checkpoints"
        },
    )
    # --- outputs -------------------------------------------------------------------------------------------
    sample_every: int = field(
        default=10, metadata={"help": "print/save a table of sample generations every N steps"}
    )
    num_samples: int = field(default=4, metadata={"help": "rows in the sample table"})
    eval_reward_fn: str | None = field(
        default=None,
        metadata={"help": "gold labeler 'module:function' f(prompts, responses) -> scores: every eval_every steps "
                  "the policy answers eval_num_prompts held-out prompts, scored by it and by the reward model, with "
                  "its KL from the SFT policy (the over-optimisation curve in the report)"},
    )  # fmt: skip
    eval_every: int = field(default=0, metadata={"help": "steps between gold evaluations (0: none)"})
    eval_num_prompts: int = field(default=32, metadata={"help": "held-out prompts per gold evaluation"})
    log_timing: bool = field(
        default=True,
        metadata={
            "help": "per-phase seconds per step in the metrics and log line; off: no timers, no device syncs"
        },
    )
    save_merged: bool = field(default=True, metadata={"help": "also write merged/ (a plain merged policy)"})
    keep_checkpoints: bool = field(
        default=False, metadata={"help": "keep <output_dir>.checkpoints after a successful run"}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "replace an output_dir that holds another config's run (otherwise an error)"},
    )
    # --- TrainingArguments defaults changed for PPO --------------------------------------------------------
    output_dir: str | None = required("where the policy is written (runs/<recipe>/ppo)")
    learning_rate: float = 3e-6
    optim: str = field(
        default="adamw_torch",
        metadata={"help": "any TrainingArguments optimizer name; default torch's AdamW"},
    )
    per_device_train_batch_size: int = 64
    logging_steps: float = 1
    adam_epsilon: float = 1e-5  # N+ implementation details: Adam eps 1e-5, as in the OpenAI code
    save_steps: float = 0
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "true: the newest checkpoint of this run (<output_dir>.checkpoints); a path; false"
        },
    )

    # Checked by pipeline.common.config.parse_config against the keys a recipe or command line gives.
    @staticmethod
    def refused_fields() -> set[str]:
        return unused_training_arguments()

    @staticmethod
    def refusal(names: list[str], source: str) -> str:
        return refusal(names, source)

    def __post_init__(self):
        super().__post_init__()

        nulls_to_none(self, ("init_policy_path", "reward_model_path", "reward_fn", "eval_prompts_path", "resume_from_checkpoint",
                             "eval_reward_fn"))  # fmt: skip

        if self.value_head not in ("shared", "adapter"):
            raise ConfigError(f"value_head must be 'shared' or 'adapter', got {self.value_head!r}.")
        if self.kl_estimator not in ("k1", "k3"):
            raise ConfigError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        if (self.reward_model_path is None) == (self.reward_fn is None):
            raise ConfigError("Set exactly one of reward_model_path and reward_fn (set the other to null).")
        if self.reward_fn is not None and ":" not in self.reward_fn:
            raise ConfigError(f"reward_fn must look like 'package.module:function', got {self.reward_fn!r}.")
        if self.eval_every and self.eval_reward_fn is None:
            raise ConfigError(
                "eval_every needs eval_reward_fn (a 'module:function' labeler), or set it to 0."
            )
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0: PPO needs sampled rollouts.")

        check_untruncated(self.top_k, self.top_p, "PPO")
        for name in (
            "num_ppo_epochs",
            "num_mini_batches",
            "response_length",
            "local_rollout_forward_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")

    # --- batch sizes, as in old TRL --------------------------------------------------------------------------
    @property
    def local_batch_size(self) -> int:
        """Prompts each process rolls out per PPO step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches

    @property
    def local_mini_batch_size(self) -> int:
        """Rows of the rollout per optimizer step, per process."""
        return self.local_batch_size // self.num_mini_batches

    def batch_size(self, num_processes: int) -> int:
        """Prompts rolled out per PPO step, over every process."""
        return self.local_batch_size * num_processes

    def num_steps(self, num_processes: int, num_prompts: int) -> int:
        """PPO steps in the run: max_steps when set (it wins over the episode budget, as in the Trainer), else
        total_episodes (default num_train_epochs passes over the prompts) in whole batches."""
        if self.max_steps > 0:
            return self.max_steps
        total = self.total_episodes or int(self.num_train_epochs * num_prompts)
        return max(1, math.ceil(total / self.batch_size(num_processes)))

    def checkpoint_interval(self, num_steps: int) -> int:
        """PPO steps between checkpoints (0: none); a save_steps below 1 is that fraction of the run, as in the
        Trainer."""
        return math.ceil(self.save_steps * num_steps) if 0 < self.save_steps < 1 else int(self.save_steps)


def unused_training_arguments() -> set[str]:
    """The TrainingArguments fields the PPO loop never reads."""
    own = {f.name for f in dataclasses.fields(PPOConfig)} - {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    return {
        f.name
        for f in dataclasses.fields(TrainingArguments)
        if f.init and f.name not in HONOURED_TRAINING_ARGUMENTS and f.name not in own
    }


def refusal(names: list[str], source: str) -> str:
    hints = "; ".join(f"{name}: {REFUSAL_HINTS[name]}" for name in names if name in REFUSAL_HINTS)
    return (
        f"{source}: PPO does not use {', '.join(names)} (TrainingArguments field(s) with no meaning in the PPO "
        "loop): remove them from the recipe or the command line." + (f" {hints}." if hints else "")
    )
