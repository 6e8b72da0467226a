"""PPOConfig: the old TRL PPOConfig field names (so practitioners, and the benchmark, can drive both) on top of
`transformers.TrainingArguments`, as TRL's OnPolicyConfig did.

Subclassing TrainingArguments gives, for free and under the names everyone knows: learning_rate,
lr_scheduler_type, warmup_steps/ratio, max_grad_norm, adam_*, weight_decay, bf16/fp16, gradient_checkpointing,
logging_steps, save_steps, report_to, push_to_hub, seed, resume_from_checkpoint. Fields that make no sense for
on-policy training (num_train_epochs, eval_strategy, ...) are simply ignored.

Batch sizes, as in old TRL (per process):
    local_batch_size = per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches
    batch_size       = local_batch_size * num_processes   (prompts rolled out per PPO step)
    steps            = ceil(total_episodes / batch_size)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PPOConfig(TrainingArguments):
    # --- models and data -----------------------------------------------------------------------------------
    sft_model_path: str = field(
        default="runs/tiny/sft",
        metadata={
            "help": "SFT policy: a PEFT adapter dir (the policy continues that adapter) or a plain model"
        },
    )
    reward_model_path: str | None = field(
        default="runs/tiny/reward",
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
    prompts_path: str = field(
        default="runs/tiny/data/prompts", metadata={"help": "datasets dir with `prompt`"}
    )
    eval_prompts_path: str | None = field(
        default="runs/tiny/data/eval_prompts", metadata={"help": "held-out prompts for the sample table"}
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
    kl_horizon: int = 10000
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    # --- outputs -------------------------------------------------------------------------------------------
    sample_every: int = field(
        default=10, metadata={"help": "print/save a table of sample generations every N steps"}
    )
    num_samples: int = field(default=4, metadata={"help": "rows in the sample table"})
    save_merged: bool = field(default=True, metadata={"help": "also write merged/ (a plain merged policy)"})
    # --- TrainingArguments defaults changed for PPO --------------------------------------------------------
    output_dir: str | None = "runs/tiny/ppo"
    learning_rate: float = 3e-6
    per_device_train_batch_size: int = 64
    logging_steps: float = 1
    adam_epsilon: float = 1e-5  # N+ implementation details: Adam eps 1e-5, as in the OpenAI code
    save_steps: float = 0
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "a checkpoint dir, or 'latest' for the newest in output_dir/checkpoints"},
    )

    def __post_init__(self):
        super().__post_init__()
        from pipeline.config import ConfigError

        # On the command line `--reward_model_path null` must mean None, as it does in YAML.
        for name in ("reward_model_path", "reward_fn", "eval_prompts_path", "resume_from_checkpoint"):
            if isinstance(getattr(self, name), str) and getattr(self, name).strip().lower() in (
                "",
                "null",
                "none",
            ):
                setattr(self, name, None)

        if self.value_head not in ("shared", "adapter"):
            raise ConfigError(f"value_head must be 'shared' or 'adapter', got {self.value_head!r}.")
        if self.kl_estimator not in ("k1", "k3"):
            raise ConfigError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}.")
        if (self.reward_model_path is None) == (self.reward_fn is None):
            raise ConfigError("Set exactly one of reward_model_path and reward_fn (set the other to null).")
        if self.reward_fn is not None and ":" not in self.reward_fn:
            raise ConfigError(f"reward_fn must look like 'package.module:function', got {self.reward_fn!r}.")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0: PPO needs sampled rollouts.")
        from pipeline.ppo.rollout import check_untruncated

        check_untruncated(self.top_k, self.top_p, "PPO")
        for name in (
            "num_ppo_epochs",
            "num_mini_batches",
            "response_length",
            "local_rollout_forward_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
