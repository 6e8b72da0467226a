"""The rounds at a glance: one row per round (eval.json's `rounds`), the rounds report and its plot.

A row joins what each step of round n measured: how many comparisons were collected and ranked, the round's reward
model on the recipe's held-out pairs and on this round's own held-out slice, and the round's policy, evaluated with
that reward model: its labeler score, its KL from the SFT policy, and how well the reward model orders pairs of the
policy's own answers (`rm_accuracy_on_own_samples`: near 0.5, the next round is due).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.analysis.report import _pyplot
from pipeline.common.tables import markdown_table, number


def round_record(
    n: int,
    evaluation: dict,
    reward_metrics: dict,
    comparisons: int,
    pairs: int,
    policy: str,
    rank_summary: dict | None = None,
) -> dict:
    record = evaluation["policies"][policy]
    return {
        "round": n,
        "policy": record["model_path"],
        "reward_model": evaluation["settings"]["reward_model_path"],
        "comparisons": comparisons,
        "pairs": pairs,
        "reward_model_accuracy": evaluation["reward_model_accuracy"],
        "reward_model_accuracy_on_round": reward_metrics.get(f"eval_accuracy_round_{n}"),
        "rm_accuracy_on_own_samples": record["rm_accuracy_on_own_samples"],
        "sft_rm_accuracy_on_own_samples": evaluation["policies"]["sft"]["rm_accuracy_on_own_samples"],
        "labeler_score": record["labeler_score"],
        "sft_labeler_score": evaluation["policies"]["sft"]["labeler_score"],
        "reward_model_score": record["reward_model_score"],
        "kl_from_sft": record["kl_from_sft"],
        "ranked_by": ranked_by(rank_summary),
        "rater_agreement": rank_summary["agreement"]["agreement"] if rank_summary else None,
    }


def ranked_by(summary: dict | None) -> dict | None:
    """Prompts ranked per rater ('labeler' for what the labeler ranked), from make rank's summary."""
    if summary is None:
        return None
    counts = dict(summary["by_rater"])
    if summary["filled_by_labeler"]:
        counts["labeler"] = summary["filled_by_labeler"]
    return counts


COLUMNS = {
    "round": "round",
    "comparisons": "comparisons (prompts)",
    "pairs": "pairs",
    "reward_model_accuracy": "RM acc., held-out pairs",
    "reward_model_accuracy_on_round": "RM acc., round's slice",
    "rm_accuracy_on_own_samples": "RM acc., policy's own answers",
    "labeler_score": "labeler score",
    "kl_from_sft": "KL from SFT",
    "ranked_by": "ranked by (prompts)",
}


def cell(value) -> str:
    if isinstance(value, float):
        return number(value)
    if isinstance(value, dict):
        return ", ".join(f"{name.removeprefix('labeler:')} {count}" for name, count in value.items())
    return "n/a" if value is None else value


def rounds_markdown(rounds: list[dict]) -> str:
    rows = [[r["round"], *(cell(r.get(k)) for k in list(COLUMNS)[1:])] for r in rounds]
    return "\n".join(markdown_table(list(COLUMNS.values()), rows))


def plot_rounds(rounds: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    x = [r["round"] for r in rounds]
    labeler = [r["labeler_score"] for r in rounds]
    if all(v is not None for v in labeler):
        left.plot(x, labeler, marker="o", label="round's policy")
        left.axhline(rounds[0]["sft_labeler_score"], color="gray", linestyle="--", label="SFT policy")
        left.legend()
    left.set(title="Labeler score per round", xlabel="round", ylabel="labeler score", xticks=x)
    own = [r["rm_accuracy_on_own_samples"] for r in rounds]
    if all(v is not None for v in own):
        right.plot(x, own, marker="o", label="on the round's policy's answers")
    right.plot(x, [r["reward_model_accuracy"] for r in rounds], marker="s", label="on held-out pairs")
    right.axhline(0.5, color="gray", linestyle=":", label="chance")
    right.set(
        title="Reward-model accuracy per round", xlabel="round", ylabel="accuracy", ylim=(0.3, 1.0), xticks=x
    )
    right.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_rounds_report(folder: Path, rounds: list[dict]) -> Path:
    """`<rounds folder>/report.md` with the table and `plots/rounds.png`."""
    plot_rounds(rounds, folder / "plots" / "rounds.png")
    text = "\n".join([
        "# Rounds",
        "",
        "Each round collects K answers per prompt from the policy the previous round ended with (round 1: the SFT "
        "policy), ranks them, retrains the reward model on every round's rankings so far, and runs RL again from "
        "there, the KL reference always the SFT policy. Each round's policy is evaluated with that round's reward "
        "model on the held-out prompts (`<n>/eval.json`, `<n>/report.md`).",
        "",
        rounds_markdown(rounds),
        "",
        "![rounds](plots/rounds.png)",
        "",
    ])  # fmt: skip
    (folder / "report.md").write_text(text)
    return folder / "report.md"
