"""Scoring text with a reward model (or a Python function): one tokenization and truncation rule for PPO's
rollouts, evaluation, and the reward stage's held-out accuracy.

The reward stage trains on `prompt + response + EOS` (TRL's RewardTrainer), and the score is read at the last
token that is not padding. So an answer that ended gets its EOS back before scoring (decoding dropped it), one cut
off at the length limit does not, padding is on the right, and a text longer than the reward model's
`model_max_length` (the reward stage saves its training `max_length` there) keeps its last tokens: the end, where
the score is read. The model runs on the device it is given (each rank's accelerator), in batches.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import gather_object

from pipeline.common.config import UserError
from pipeline.common.models import load_reward_model, load_scoring_function, load_tokenizer, use_distinct_pad

UNLIMITED = 10**6  # tokenizers without a length limit report int(1e30) as model_max_length


class RewardScorer:
    """`scorer(prompts, responses, ended) -> scores` (float32 tensor on `device`)."""

    def __init__(self, reward_model_path: str | None = None, reward_fn: str | None = None, model_args=None,
                 device=None, batch_size: int = 32, trust_remote_code: bool = False):  # fmt: skip
        self.batch_size = batch_size
        self.device = torch.device(device or "cpu")
        self.fn: Callable | None = None
        self.model = None
        if reward_fn:
            self.fn = load_scoring_function(reward_fn, "reward_fn")
            return
        if reward_model_path is None or not Path(reward_model_path).exists():
            raise UserError(
                f"reward_model_path {reward_model_path} does not exist. Run the reward stage (make reward) first."
            )
        self.tokenizer = load_tokenizer(reward_model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"
        limit = self.tokenizer.model_max_length
        self.max_length = limit if limit and limit < UNLIMITED else None
        self.model = load_reward_model(reward_model_path, model_args, trust_remote_code)
        self.model.eval().requires_grad_(False)
        use_distinct_pad(self.model, self.tokenizer)  # the score is read at the EOS of a finished answer
        if not getattr(self.model, "is_quantized", False):  # 4/8-bit weights were placed at load time
            self.model.to(self.device)

    def texts(self, prompts: list[str], responses: list[str], ended: list[bool]) -> list[str]:
        eos = self.tokenizer.eos_token or ""
        return [p + r + (eos if e else "") for p, r, e in zip(prompts, responses, ended)]

    @torch.no_grad()
    def __call__(self, prompts: list[str], responses: list[str], ended: list[bool]) -> torch.Tensor:
        if self.fn is not None:
            return torch.tensor(self.fn(prompts, responses), dtype=torch.float32, device=self.device)
        texts = self.texts(prompts, responses, ended)
        scores = [torch.zeros(0, device=self.device)]
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True,
                                   truncation=self.max_length is not None, max_length=self.max_length)  # fmt: skip
            logits = self.model(**batch.to(self.model.device)).logits
            scores.append(logits[:, 0].float().to(self.device))
        return torch.cat(scores)


def preference_margins(scorer: RewardScorer, pairs: list[dict]) -> list[float]:
    """score(chosen) - score(rejected) per pair; both are complete answers (EOS appended)."""
    prompts = [p["prompt"] for p in pairs]
    ended = [True] * len(pairs)
    chosen = scorer(prompts, [p["chosen"] for p in pairs], ended)
    rejected = scorer(prompts, [p["rejected"] for p in pairs], ended)
    return (chosen - rejected).tolist()


def sharded_pair_scores(scorer: RewardScorer, pairs: list[dict], state) -> tuple[list, list, list[int]]:
    """Scores of every pair's chosen and rejected response, each process scoring its contiguous share on its own
    device; returns both lists in order (on every rank) and how many pairs each rank scored."""
    with state.split_between_processes(pairs, apply_padding=True) as shard:
        shard = list(shard)
        prompts, ended = [p["prompt"] for p in shard], [True] * len(shard)
        chosen = scorer(prompts, [p["chosen"] for p in shard], ended).tolist()
        rejected = scorer(prompts, [p["rejected"] for p in shard], ended).tolist()
    counts = gather_object([len(shard)])
    # Shards are contiguous and the last one padded by repeating its end: the first n gathered items are exact.
    return gather_object(chosen)[: len(pairs)], gather_object(rejected)[: len(pairs)], counts


def sharded_margins(scorer: RewardScorer, pairs: list[dict], state) -> tuple[list[float], list[int]]:
    """`preference_margins` over every pair, sharded as `sharded_pair_scores`; and each rank's pair count."""
    chosen, rejected, counts = sharded_pair_scores(scorer, pairs, state)
    return [c - r for c, r in zip(chosen, rejected)], counts


def accuracy(margins: list[float]) -> float:
    """Share of pairs whose chosen response gets the strictly higher reward."""
    return sum(m > 0 for m in margins) / max(len(margins), 1)
