"""The rounds' settings (`recipes/<name>/rounds.yaml`): how comparisons are collected from the policy, who ranks
them, and what the reward model and the policy of each round start from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig

from pipeline.common.config import ConfigError, nulls_to_none, required

POLICY_INITS = ("previous", "sft")


@dataclass
class RoundsConfig:
    output_dir: str | None = required(
        "folder of the rounds: <output_dir>/<n>/ per round (runs/<recipe>/rounds)"
    )
    sft_model_path: str | None = required(
        "the SFT policy: round 1 collects from it; every round's KL reference"
    )
    prompts_path: str | None = required(
        "the RL prompt pool comparisons are collected on (runs/<recipe>/data/prompts)"
    )
    eval_prompts_path: str | None = field(
        default=None,
        metadata={
            "help": "held-out evaluation prompts: never collected on (a pool prompt among them is skipped)"
        },
    )
    round: int | None = field(
        default=None, metadata={"help": "which round (1, 2, ...): make collect|rank ROUND=n"}
    )

    # --- collect -------------------------------------------------------------------------------------------
    num_prompts: int = field(
        default=200, metadata={"help": "distinct prompts per round, drawn from the pool"}
    )
    responses_per_prompt: int = field(
        default=4, metadata={"help": "K answers per prompt for the raters to rank (InstructGPT: 4 to 9)"}
    )
    max_new_tokens: int = field(default=48, metadata={"help": "as the PPO stage's response_length"})
    temperature: float = field(default=0.7, metadata={"help": "as the PPO stage's temperature"})
    max_prompt_length: int = 512
    batch_size: int = field(default=64, metadata={"help": "prompts per generate() call, per process"})
    trust_remote_code: bool = False
    seed: int = 0

    # --- rank ----------------------------------------------------------------------------------------------
    labeler: str | None = field(
        default=None,
        metadata={"help": "'module:function' f(prompts, responses) -> scores that ranks the comparisons (make rank; "
                  "the built-in task: data_prep.task:labeler_scores); null: rankings come from people or a file"},
    )  # fmt: skip
    from_file: str | None = field(
        default=None,
        metadata={"help": "make rank FROM=file: take the round's rankings from this ranked-format .jsonl (keyed by "
                  "the comparisons' ids) instead of the labeler"},
    )  # fmt: skip

    # --- retrain and RL again ------------------------------------------------------------------------------
    heldout_fraction: float = field(
        default=0.1,
        metadata={"help": "share of each round's prompts held out of training (its accuracy slice)"},
    )
    original_preference_path: str | None = field(
        default=None,
        metadata={"help": "the recipe's own preference data (runs/<recipe>/data/preference): its train pairs join "
                  "every round's, its test pairs stay the held-out set; null: the rounds' rankings alone"},
    )  # fmt: skip
    policy_init: str = field(
        default="previous",
        metadata={"help": "what the policy of round n > 1 starts from: 'previous' (the policy round n-1 ended with) "
                  "or 'sft'; the KL reference is always the SFT policy"},
    )  # fmt: skip
    ppo_total_episodes: int | None = field(
        default=None,
        metadata={"help": "PPO's episodes in each round (null: ppo.yaml's total_episodes). Fewer than a lone PPO run's: "
                  "each round goes on from the last, and a policy that moves less past the answers its reward model "
                  "was trained on leaves that reward model less to be wrong about"},
    )  # fmt: skip
    methods: list[str] = field(
        default_factory=lambda: ["ppo"],
        metadata={
            "help": "the RL stages each round runs (ppo, grpo, rloo); the first one's policy is the round's"
        },
    )

    def __post_init__(self):
        nulls_to_none(self, ("eval_prompts_path", "labeler", "from_file", "original_preference_path"))
        if self.responses_per_prompt < 2:
            raise ConfigError(
                f"responses_per_prompt is {self.responses_per_prompt}: a ranking needs at least 2 answers to one "
                "prompt (InstructGPT used 4 to 9); set it to 2 or more."
            )
        if self.num_prompts < 1:
            raise ConfigError("num_prompts must be at least 1.")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0: K answers to one prompt must be sampled to differ.")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ConfigError("heldout_fraction must lie in [0, 1).")
        if self.policy_init not in POLICY_INITS:
            raise ConfigError(
                f"policy_init {self.policy_init!r} is unknown; choose one of {list(POLICY_INITS)}."
            )
        unknown = [m for m in self.methods if m not in ("ppo", "grpo", "rloo")]
        if unknown or not self.methods:
            raise ConfigError(f"methods {self.methods}: choose from ppo, grpo, rloo (at least one).")
        if self.round is not None and self.round < 1:
            raise ConfigError(f"round {self.round}: rounds count from 1.")

    def need_round(self) -> int:
        if self.round is None:
            raise ConfigError("Which round? Pass ROUND=n to make (--round n).")
        return self.round

    def round_dir(self, n: int) -> Path:
        return Path(self.output_dir) / str(n)

    def policy_of(self, n: int) -> str:
        """The policy round n collects from: the SFT policy in round 1, the policy round n-1 ended with after."""
        return self.sft_model_path if n == 1 else str(self.round_dir(n - 1) / self.methods[0])


# rounds.yaml may also hold model-loading keys (dtype, 4-bit, revision) for the policy it samples from.
CONFIG_TYPES = (RoundsConfig, ModelConfig)
