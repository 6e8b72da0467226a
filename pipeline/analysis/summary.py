"""eval.json from the evaluation's per-prompt records: one record per policy, health checks, warnings, settings.

`policies.<name>` is the record of every policy, SFT and PPO included: the leaderboard the report, the model card
and the printed headline read. The top-level figures that scripts have read since before the leaderboard
(`ppo_reward_model_score`, `kl_ppo_from_sft`, ...) are copies of fields of those records, made in
`top_level_figures` alone, so the two can never disagree.
"""

from __future__ import annotations

import statistics

from pipeline.analysis.health import few_prompts_warning, policy_checks
from pipeline.common.outputs import fingerprint, read_run, same_model_path
from pipeline.common.redact import is_secret
from pipeline.lm.scoring import accuracy

# eval.json's top-level copies of policy fields: key -> (policy, field of its record). They sit before `policies`
# in eval.json, and the labeler comparisons (only with a labeler) after it, where they have always been.
SCORE_FIGURES = {
    "sft_reward_model_score": ("sft", "reward_model_score"),
    "ppo_reward_model_score": ("ppo", "reward_model_score"),
    "sft_labeler_score": ("sft", "labeler_score"),
    "ppo_labeler_score": ("ppo", "labeler_score"),
    "kl_ppo_from_sft": ("ppo", "kl_from_sft"),
}
LABELER_FIGURES = {
    "ppo_labeler_win_rate": ("ppo", "labeler_win_rate_vs_sft"),
    "labeler_tie_rate": ("ppo", "labeler_tie_rate_vs_sft"),
}

KL_ESTIMATOR = "k1 on each policy's own samples, summed over response tokens, logits / temperature"


def top_level_figures(policies: dict[str, dict], figures: dict[str, tuple[str, str]]) -> dict:
    """The top-level keys of eval.json that copy a policy's field (SCORE_FIGURES or LABELER_FIGURES)."""
    return {key: policies[name][field] for key, (name, field) in figures.items()}


def mean_of(records: list[dict], key: str) -> float | None:
    """Mean of a record field over the prompts that have it; None when none has (no labeler, say)."""
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.fmean(values) if values else None


def std_of(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return statistics.pstdev(values) if values else None


def labeler_rate(records: list[dict], name: str, compare) -> float:
    """Share of prompts where compare(policy's labeler score, SFT's) holds."""
    return statistics.fmean(compare(r[f"{name}_labeler_score"], r["sft_labeler_score"]) for r in records)


def started_from(policy_path: str, sft_path: str) -> bool | None:
    """Whether the policy's run started from this very SFT model: the SFT path its run record names, and that
    folder's fingerprint then and now. None when the policy has no run record (made elsewhere)."""
    run = read_run(policy_path)
    if run is None:
        return None
    config, inputs = run.get("config", {}), run.get("inputs", {})
    key = "sft_model_path" if "sft_model_path" in config else "model_name_or_path"
    recorded = config.get(key)
    if not recorded or not same_model_path(recorded, sft_path):
        return False
    return inputs.get(key) in (None, fingerprint(sft_path))


def own_sample_pairs(groups: list[dict]) -> dict:
    """How often the reward model orders two answers of one policy to one prompt as the labeler does: over every pair
    of a group's answers that the labeler does not tie (identical texts are ties); a reward-model tie counts wrong.
    Near 0.5, the reward model can no longer tell this policy's better answers from its worse ones."""
    right = total = 0
    for group in groups:
        if "labels" not in group:
            continue
        answers = list(zip(group["responses"], group["rm_scores"], group["labels"]))
        for i, (text_a, rm_a, label_a) in enumerate(answers):
            for text_b, rm_b, label_b in answers[i + 1 :]:
                if label_a == label_b or text_a == text_b:
                    continue
                total += 1
                right += (rm_a - rm_b) * (label_a - label_b) > 0
    return {"accuracy": right / total if total else None, "pairs": total}


def policy_record(records: list[dict], name: str, model_path: str, sft_path: str, labeled: bool,
                  own_pairs: dict | None = None) -> dict:  # fmt: skip
    """One policy's entry in `policies`: its scores on the held-out prompts and, beside SFT, how it compares."""
    record = {
        "model_path": model_path,
        "reward_model_score": mean_of(records, f"{name}_reward_model_score"),
        "reward_model_score_std": std_of(records, f"{name}_reward_model_score"),
        "labeler_score": mean_of(records, f"{name}_labeler_score"),
        "labeler_score_std": std_of(records, f"{name}_labeler_score"),
        "kl_from_sft": 0.0 if name == "sft" else mean_of(records, f"{name}_log_ratio"),
        "response_length_mean": mean_of(records, f"{name}_length"),
        "ended_fraction": mean_of(records, f"{name}_ended"),
        "rm_accuracy_on_own_samples": (own_pairs or {}).get("accuracy"),
        "own_sample_pairs": (own_pairs or {}).get("pairs", 0),
    }
    if name != "sft":
        record["labeler_win_rate_vs_sft"] = (
            labeler_rate(records, name, lambda a, b: a > b) if labeled else None
        )
        record["labeler_tie_rate_vs_sft"] = (
            labeler_rate(records, name, lambda a, b: a == b) if labeled else None
        )
        record["started_from_this_sft"] = started_from(model_path, sft_path)
    return record


def summarize(
    records: list[dict],
    margins: list[float],
    args,
    num_processes: int,
    chosen: list[float],
    policies: dict[str, str] | None = None,
    own_pairs: dict[str, dict] | None = None,
) -> dict:
    """eval.json's figures. `args`: the evaluation's settings (pipeline.evaluate.EvalArguments); `margins` and
    `chosen`: the reward model's chosen-minus-rejected margins and chosen scores on held-out pairs; `policies`
    (name -> path): the policies compared with SFT, by default PPO alone; `own_pairs`: `own_sample_pairs` of each
    policy."""
    policies = policies or {"ppo": args.ppo_model_path}
    labeled = bool(args.labeler)
    # The leaderboard: every policy on the same prompts, sampling settings and scorers.
    board = {
        name: policy_record(records, name, path, args.sft_model_path, labeled, (own_pairs or {}).get(name))
        for name, path in {"sft": args.sft_model_path, **policies}.items()
    }
    result = {
        "reward_model_accuracy": accuracy(margins),
        **top_level_figures(board, SCORE_FIGURES),
        "policies": board,
    }
    if labeled:
        result.update(top_level_figures(board, LABELER_FIGURES))
    result["reward_model_margin_mean"] = statistics.fmean(margins)
    result["health"] = {
        name: policy_checks(records, chosen, args.max_kl, name, board[name]) for name in policies
    }
    result["warnings"] = [
        f"{name.upper()} {w}" for name in policies for w in result["health"][name]["warnings"]
    ]
    for name in policies:
        if board[name]["started_from_this_sft"] is False:
            result["warnings"].append(
                f"{name.upper()} did not start from this SFT model ({args.sft_model_path}), or that model changed "
                f"since (its run record, {policies[name]}/run.json, says otherwise): its gain and KL are not "
                "measured against its own start."
            )
    if few := few_prompts_warning(len(records)):
        result["warnings"].append(f"evaluation: {few}")
    result["counts"] = {"num_prompts": len(records), "num_preference_pairs": len(margins)}
    result["settings"] = settings(args, num_processes)
    return result


def settings(args, num_processes: int) -> dict:
    """What the figures were measured with. eval.json is pushed with a model card (rlhf_eval.json), so a value
    that holds a credential is left out (pipeline.common.redact)."""
    values = {
        "reward_model_path": args.reward_model_path,
        "reward_fn": args.reward_fn,
        "eval_prompts_path": args.eval_prompts_path,
        "preference_path": f"{args.preference_path}[{args.preference_split}]",
        "labeler": args.labeler,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "num_processes": num_processes,
        "kl_estimator": KL_ESTIMATOR,
    }
    return {key: value for key, value in values.items() if not is_secret(key, value)}
