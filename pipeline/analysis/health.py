"""Signs that RL went wrong, stated with their numbers: in PPO's log while it trains, in the evaluation report after.

A policy can raise its reward-model score while getting worse (Gao et al., 2022): it finds what the reward model
overpays, drifts far from the SFT policy, or collapses onto a few short answers. None of that shows in the reward
curve, so these checks look elsewhere:

- over-optimisation: the policy's mean reward-model score lies above the 95th percentile of the scores of the
  held-out *chosen* responses, the best answers the reward model was trained on: it is paid outside that range;
- drift: KL(policy || SFT) per answer above a stated bound (`max_kl`);
- collapse: per-token entropy or response length below half the SFT policy's, or most answers identical;
- exploitation (with a labeler): the reward-model score rose over the SFT policy's while the labeler's fell;
- a reward model off the policy's distribution (with a labeler): it orders pairs of the policy's own answers near
  chance, so more RL against it can only exploit it; a new round of comparisons from this policy is the fix.
"""

from __future__ import annotations

import statistics
from collections import Counter

COLLAPSE_RATIO = 0.5  # entropy or length below this fraction of the reference's is a collapse
IDENTICAL_SHARE = 0.5  # more than this share of answers being one and the same answer is a collapse
OVER_OPTIMISATION_QUANTILE = 0.95
# What holds each stage-3 method nearer the SFT policy, for the warnings' advice.
KL_KNOB = {
    "ppo": "raise kl_coef, use adaptive KL, or stop PPO earlier (max_kl)",
    "grpo": "raise beta (the KL coefficient) or train fewer steps",
    "rloo": "raise beta (the KL coefficient) or train fewer steps",
    "dpo": "raise beta or train fewer steps",
}
# Fewer held-out prompts than this make the SFT-vs-PPO comparison noise (a mean's standard error is ~1/sqrt(n) of
# its spread): `data_prep build` and the evaluation report both say so.
MIN_EVAL_PROMPTS = 50
# Reward-model accuracy on pairs of a policy's own answers below this is "near chance" (0.5); on the built-in task
# the SFT policy's is ~0.8. Fewer pairs than OWN_PAIRS_MIN are too few to say.
NEAR_CHANCE_ACCURACY = 0.6
OWN_PAIRS_MIN = 30


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def entropy_per_token(records: list[dict], name: str) -> float | None:
    """-mean log-prob per token of a policy's own samples: a Monte-Carlo estimate of its per-token entropy."""
    tokens = sum(r[f"{name}_length"] for r in records)
    if not tokens or any(r.get(f"{name}_logprob") is None for r in records):
        return None
    return -sum(r[f"{name}_logprob"] for r in records) / tokens


def policy_checks(records: list[dict], chosen_scores: list[float], max_kl: float, name: str = "ppo",
                  record: dict | None = None) -> dict:  # fmt: skip
    """The figures of every check for policy `name` against the SFT policy, and a warning for each that fails."""
    mean = statistics.fmean
    score = mean(r[f"{name}_reward_model_score"] for r in records)
    ceiling = quantile(chosen_scores, OVER_OPTIMISATION_QUANTILE) if chosen_scores else None
    kl = mean(r[f"{name}_log_ratio"] for r in records) if f"{name}_log_ratio" in records[0] else None
    entropy, sft_entropy = entropy_per_token(records, name), entropy_per_token(records, "sft")
    length, sft_length = mean(r[f"{name}_length"] for r in records), mean(r["sft_length"] for r in records)
    answer, count = Counter(r[f"{name}_response"] for r in records).most_common(1)[0]
    identical = count / len(records)
    checks = {
        "reward_model_score": score,
        "chosen_reward_model_score_p95": ceiling,
        "kl_from_sft": kl,
        "max_kl": max_kl,
        "entropy_per_token": entropy,
        "sft_entropy_per_token": sft_entropy,
        "response_length_mean": length,
        "sft_response_length_mean": sft_length,
        "most_common_answer_share": identical,
    }
    warnings = []
    labeled = [r for r in records if r.get(f"{name}_labeler_score") is not None]
    if labeled:  # the plainest sign: the reward model says the policy got better, the labeler says worse
        rm_gain = score - mean(r["sft_reward_model_score"] for r in records)
        labeler_gain = mean(r[f"{name}_labeler_score"] - r["sft_labeler_score"] for r in labeled)
        if rm_gain > 0 and labeler_gain < 0:
            warnings.append(
                f"exploitation: the reward-model score rose by {rm_gain:+.3f} over SFT while the labeler's fell by "
                f"{labeler_gain:+.3f}; the reward model pays for something the labeler does not want. Read the "
                "samples."
            )
    if ceiling is not None and score > ceiling:
        warnings.append(
            f"over-optimisation: the mean reward-model score {score:.3f} is above the 95th percentile "
            f"({ceiling:.3f}) of the held-out chosen responses' scores; the reward model is paid outside the range "
            f"it was trained on. Read the samples; {KL_KNOB.get(name, KL_KNOB['ppo'])}."
        )
    if kl is not None and max_kl and kl > max_kl:
        warnings.append(
            f"drift: KL from the SFT policy is {kl:.2f} nats per answer, above the bound of {max_kl:g}; "
            f"{KL_KNOB.get(name, KL_KNOB['ppo'])}."
        )
    if entropy is not None and sft_entropy and entropy < COLLAPSE_RATIO * sft_entropy:
        warnings.append(
            f"collapse: per-token entropy {entropy:.3f} is below half the SFT policy's ({sft_entropy:.3f})."
        )
    if length < COLLAPSE_RATIO * sft_length:
        warnings.append(
            f"collapse: answers average {length:.1f} tokens, below half the SFT policy's ({sft_length:.1f})."
        )
    if identical > IDENTICAL_SHARE:
        shown = " ".join(answer.split())[:60]
        warnings.append(f"collapse: {identical:.0%} of the answers are one and the same answer ({shown!r}).")
    own = (record or {}).get("rm_accuracy_on_own_samples")
    checks["rm_accuracy_on_own_samples"] = own
    if own is not None and record["own_sample_pairs"] >= OWN_PAIRS_MIN and own < NEAR_CHANCE_ACCURACY:
        warnings.append(
            f"reward model off this policy's answers: it orders pairs of the policy's own answers as the labeler "
            f"does only {own:.0%} of the time ({record['own_sample_pairs']} pairs; chance is 50%), so more RL "
            "against it can only exploit it. Collect a new round of comparisons from this policy (make rounds)."
        )
    return {**checks, "warnings": warnings}


def few_prompts_warning(n: int) -> str | None:
    if n >= MIN_EVAL_PROMPTS:
        return None
    return (
        f"only {n} evaluation prompts (fewer than {MIN_EVAL_PROMPTS}): SFT-vs-PPO figures will be noisy; name more "
        "held-out prompts in data.yaml's eval_prompts_data, or hold out more prompts (test_fraction)"
    )


class CollapseWatch:
    """PPO's in-training check: warn (once per kind) when entropy or response length fall below half their value
    at the first step."""

    KEYS = {"policy/entropy_avg": "policy entropy", "response_length": "response length"}

    def __init__(self):
        self.first: dict[str, float] = {}
        self.warned: set[str] = set()

    def update(self, metrics: dict) -> list[str]:
        messages = []
        for key, what in self.KEYS.items():
            value = metrics.get(key)
            if value is None:
                continue
            first = self.first.setdefault(key, value)
            if key not in self.warned and first > 0 and value < COLLAPSE_RATIO * first:
                self.warned.add(key)
                messages.append(
                    f"Warning: {what} fell from {first:.3f} at the first step to {value:.3f} at step "
                    f"{metrics.get('step')}: the policy may be collapsing onto a few answers. Read the samples "
                    "(sample_every); raise kl_coef or lower learning_rate."
                )
        return messages
