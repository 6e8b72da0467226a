"""The evaluation report: `report.md` with PNG plots a person would rather look at than read.

    plots/ppo_training.png          PPO curves over steps (reward, KL, value loss, response length)
    plots/ppo_timing.png            seconds per PPO step by phase (generate, forward, ...), when PPO timed them
    plots/reward_distributions.png  histograms of SFT vs PPO scores (reward model; labeler on the built-in task)
    plots/gold_curve.png            PPO's held-out scores against KL, when PPO ran gold evaluations
    plots/leaderboard.png           every policy's score against its KL, when alternatives sit beside PPO

It reads eval.json's `policies` (pipeline/analysis/summary.py), never its top-level copies.

Matplotlib runs on the Agg backend: no display needed.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.tables import cell, markdown_table, number

SFT_COLOR, PPO_COLOR = "#4C72B0", "#DD8452"

# (title, y label, candidate metrics.jsonl keys: first present wins per line, label per line)
TRAINING_PANELS = [
    (
        "Reward",
        "score",
        [("objective/scores", "reward-model score"), ("objective/rlhf_reward", "score - KL penalty")],
    ),
    ("KL from the SFT policy", "nats per answer", [("objective/kl", "KL")]),
    ("Value loss", "loss", [("loss/value_avg", "value loss")]),
    ("Response length", "tokens", [("response_length", "mean length")]),
]


def _pyplot():
    """pyplot on the Agg backend. Imported here, not at module level: matplotlib takes about half a second to import,
    only a report that draws needs it, and the backend must be chosen before pyplot is first imported."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average, so short runs stay visible and long noisy runs show their trend."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training(metrics: list[dict], path: Path) -> bool:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # lazy, as _pyplot

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    drawn = False
    window = max(1, len(metrics) // 20)
    for ax, (title, ylabel, series) in zip(axes.flat, TRAINING_PANELS):
        for key, label in series:
            points = [
                (row.get("step", i + 1), row[key])
                for i, row in enumerate(metrics)
                if row.get(key) is not None
            ]
            if not points:
                continue
            steps, values = zip(*points)
            color = PPO_COLOR if key != "objective/rlhf_reward" else "#55A868"
            if window > 1:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            marker = "o" if len(steps) <= 30 else None  # a short run: show each logged step
            ax.plot(steps, smooth(list(values), window), color=color, linewidth=2, label=label, marker=marker)
            drawn = True
        ax.set_title(title)
        ax.set_xlabel("PPO step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize=9)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle("PPO training" + (f" (lines: moving average over {window} steps)" if window > 1 else ""))
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def timing_phases(metrics: list[dict]) -> list[str]:
    """The phases PPO timed (`time/<phase>` keys, in logged order, without time/step and the token rates)."""
    phases: dict[str, None] = {}
    for row in metrics:
        for key in row:
            if key.startswith("time/") and key != "time/step" and not key.endswith("_per_s"):
                phases.setdefault(key.removeprefix("time/"))
    return list(phases)


def plot_timing(metrics: list[dict], path: Path) -> bool:
    """Stacked bars of each step's seconds by phase; False (nothing drawn) when PPO ran with log_timing off."""
    rows = [row for row in metrics if row.get("time/step") is not None]
    phases = timing_phases(rows)
    if not rows or not phases:
        return False
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # lazy, as _pyplot

    fig, ax = plt.subplots(figsize=(11, 4.5), constrained_layout=True)
    steps = [row.get("step", i + 1) for i, row in enumerate(rows)]
    bottom = [0.0] * len(rows)
    colors = plt.get_cmap("tab10").colors
    for i, phase in enumerate(phases):
        seconds = [row.get(f"time/{phase}", 0.0) for row in rows]
        ax.bar(steps, seconds, bottom=bottom, width=0.9, color=colors[i % len(colors)], label=phase)
        bottom = [b + s for b, s in zip(bottom, seconds)]
    ax.set_xlabel("PPO step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("seconds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9)
    fig.suptitle("Seconds per PPO step by phase")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def timing_summary(metrics: list[dict]) -> str | None:
    """One line: the mean seconds per step of each phase and its share of the phases' total; None untimed."""
    rows = [row for row in metrics if row.get("time/step") is not None]
    phases = timing_phases(rows)
    if not rows or not phases:
        return None
    means = {phase: sum(row.get(f"time/{phase}", 0.0) for row in rows) / len(rows) for phase in phases}
    total = sum(means.values()) or 1.0
    parts = ", ".join(f"{phase} {mean:.2f} s ({mean / total:.0%})" for phase, mean in means.items())
    step = sum(row["time/step"] for row in rows) / len(rows)
    return f"Mean seconds per PPO step by phase (share of the total): {parts}; {step:.2f} s per step."


def plot_gold_curve(metrics: list[dict], path: Path) -> int:
    """Reward-model and labeler score of PPO's gold evaluations against their KL from the SFT policy (Gao et al.,
    2022); returns the number of points drawn (0: PPO ran no gold evaluation)."""
    points = [row for row in metrics if row.get("eval/kl") is not None]
    if not points:
        return 0
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    kl = [row["eval/kl"] for row in points]
    ax.plot(
        kl,
        [row["eval/reward_model_score"] for row in points],
        "o-",
        color=PPO_COLOR,
        label="reward-model score",
    )
    ax.set_xlabel("KL(policy || SFT), nats per answer")
    ax.set_ylabel("reward-model score", color=PPO_COLOR)
    gold = ax.twinx()
    gold.plot(kl, [row["eval/labeler_score"] for row in points], "s-", color="#55A868", label="labeler score")
    gold.set_ylabel("labeler score (gold)", color="#55A868")
    for row in points:
        ax.annotate(f"step {row['step']}", (row["eval/kl"], row["eval/reward_model_score"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))  # fmt: skip
    ax.grid(alpha=0.3)
    fig.suptitle(
        "Held-out scores against KL during PPO: the labeler falling while the reward model rises is over-optimisation"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(points)


def plot_distributions(records: list[dict], path: Path) -> None:
    plt = _pyplot()
    kinds = [("reward_model_score", "Reward-model score")]
    if any(r.get("sft_labeler_score") is not None for r in records):
        kinds.append(("labeler_score", "Labeler score (built-in task)"))
    fig, axes = plt.subplots(
        1, len(kinds), figsize=(5.5 * len(kinds), 4), constrained_layout=True, squeeze=False
    )
    for ax, (key, title) in zip(axes[0], kinds):
        sft = [r[f"sft_{key}"] for r in records]
        ppo = [r[f"ppo_{key}"] for r in records]
        series = (("SFT", sft, SFT_COLOR), ("PPO", ppo, PPO_COLOR))
        levels = sorted(set(sft + ppo))
        if len(levels) <= 15:  # a discrete score (the labeler's): side-by-side bars per value read best
            width = 0.4 * min((b - a for a, b in zip(levels, levels[1:])), default=1.0)
            for offset, (name, values, color) in zip((-width / 2, width / 2), series):
                counts = [values.count(v) for v in levels]
                label = f"{name} (mean {sum(values) / len(values):.2f})"
                ax.bar([v + offset for v in levels], counts, width=width, color=color, label=label)
        else:
            low, high = levels[0], levels[-1]
            for name, values, color in series:
                label = f"{name} (mean {sum(values) / len(values):.2f})"
                ax.hist(values, bins=20, range=(low, high), histtype="stepfilled", alpha=0.3, color=color)
                ax.hist(
                    values, bins=20, range=(low, high), histtype="step", linewidth=2, color=color, label=label
                )
        for _, values, color in series:
            ax.axvline(sum(values) / len(values), color=color, linestyle="--", linewidth=2)
        ax.set_title(title)
        ax.set_xlabel("score (higher is better; dashed: mean)")
        ax.set_ylabel("held-out prompts")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Scores of SFT and PPO answers on {len(records)} held-out prompts")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def leaderboard_rows(result: dict) -> tuple[list[str], list[list]]:
    """One row per policy, best first (by labeler score where there is a labeler, else reward-model score)."""
    policies = result["policies"]
    labeled = policies["sft"]["labeler_score"] is not None
    key = "labeler_score" if labeled else "reward_model_score"
    columns = ["policy", "reward-model score", *(["labeler score", "labeler wins vs SFT"] if labeled else []),
               "KL from SFT (nats)", "length (tokens)", "from this SFT", "warnings"]  # fmt: skip
    rows = []
    for name, p in sorted(policies.items(), key=lambda item: -(item[1][key] or float("-inf"))):
        start = {True: "yes", False: "**no**", None: "unknown"}[p.get("started_from_this_sft", True)]
        warned = len(result.get("health", {}).get(name, {}).get("warnings", []))
        wins = "-" if name == "sft" else p["labeler_win_rate_vs_sft"]
        labeler = [p["labeler_score"], wins] if labeled else []
        rows.append([name.upper(), p["reward_model_score"], *labeler, p["kl_from_sft"], p["response_length_mean"],
                     "-" if name == "sft" else start, str(warned) if warned else "-"])  # fmt: skip
    return columns, rows


def plot_leaderboard(result: dict, path: Path) -> None:
    """Each policy's held-out score against its KL from SFT: one point per method."""
    plt = _pyplot()
    policies = result["policies"]
    kinds = [("reward_model_score", "reward-model score")]
    if policies["sft"]["labeler_score"] is not None:
        kinds.append(("labeler_score", "labeler score (gold)"))
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), constrained_layout=True,
                             squeeze=False)  # fmt: skip
    for ax, (key, label) in zip(axes[0], kinds):
        for i, (name, p) in enumerate(policies.items()):
            color = SFT_COLOR if name == "sft" else PPO_COLOR if name == "ppo" else f"C{i + 2}"
            ax.scatter(p["kl_from_sft"], p[key], s=70, color=color, zorder=3)
            ax.annotate(name.upper(), (p["kl_from_sft"], p[key]), textcoords="offset points", xytext=(6, 4))
        ax.set_xlabel("KL(policy || SFT), nats per answer")
        ax.set_ylabel(label)
        ax.margins(0.15)  # room for the labels
        ax.grid(alpha=0.3)
    fig.suptitle("Every policy on the same held-out prompts: higher at lower KL is better")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_table(records: list[dict], n: int) -> list[str]:
    labeled = records and records[0].get("sft_labeler_score") is not None
    key = "labeler_score" if labeled else "reward_model_score"
    lines = [
        f"| prompt | SFT answer | {key.replace('_', ' ')} | PPO answer | {key.replace('_', ' ')} |",
        "|---|---|---|---|---|",
    ]
    for r in records[:n]:
        prompt = r["prompt"].replace("\n\nHuman:", " Human:").replace("\n\nAssistant:", " Assistant:")
        lines.append(
            f"| {cell(prompt, 120)} | {cell(r['sft_response'])} | {number(r[f'sft_{key}'])} "
            f"| {cell(r['ppo_response'])} | {number(r[f'ppo_{key}'])} |"
        )
    return lines


def warning_box(result: dict) -> list[str]:
    """A blockquote at the top of the report, one line per failed check of `pipeline.analysis.health`, with its numbers
    (plus the evaluation's own: too few prompts to tell the policies apart)."""
    if not result.get("warnings"):
        return []
    policy = any(checks["warnings"] for checks in result.get("health", {}).values())
    policy_title = "this policy may be worse than its reward-model score says"
    title = policy_title if policy else "read this before the figures"
    box = [f"> **Warning: {title}.**", ">"]
    box += [f"> - {w}" for w in result["warnings"]]
    return [*box, ""]


def write_report(
    run_dir: Path,
    result: dict,
    records: list[dict],
    metrics_path: Path,
    num_samples: int = 8,
    trackers: list[str] = (),
) -> Path:
    """`trackers`: one line per experiment tracker that holds this run, saying how to open it."""
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    metrics = read_metrics(metrics_path)
    has_curves = plot_training(metrics, plots / "ppo_training.png") if metrics else False
    has_timing = plot_timing(metrics, plots / "ppo_timing.png")
    gold_points = plot_gold_curve(metrics, plots / "gold_curve.png")
    plot_distributions(records, plots / "reward_distributions.png")
    policies = result["policies"]
    sft, ppo = policies["sft"], policies["ppo"]
    counts = result["counts"]
    labeled = sft["labeler_score"] is not None

    lines = [f"# Evaluation of {run_dir.name}", "", *warning_box(result)]
    lines += [
        f"{counts['num_prompts']} held-out prompts, answered by the SFT and the PPO policy with the same sampling "
        f"settings (temperature {result['settings']['temperature']}, at most {result['settings']['max_new_tokens']} "
        f"new tokens, seed {result['settings']['seed']}).",
        "",
        "| | SFT | PPO |",
        "|---|---|---|",
        f"| reward-model score (mean) | {number(sft['reward_model_score'])} | {number(ppo['reward_model_score'])} |",
    ]
    if labeled:
        lines.append(
            f"| labeler score (mean) | {number(sft['labeler_score'])} | {number(ppo['labeler_score'])} |"
        )
    lines += [
        f"| response length (tokens) | {number(sft['response_length_mean'])} | {number(ppo['response_length_mean'])} |",
        f"| answers that ended (EOS) | {number(sft['ended_fraction'])} | {number(ppo['ended_fraction'])} |",
        "",
        f"- **KL(PPO ‖ SFT)**: {number(ppo['kl_from_sft'])} nats per answer (on PPO's samples).",
        f"- **Reward-model accuracy** on {counts['num_preference_pairs']} held-out preference pairs: "
        f"{number(result['reward_model_accuracy'])} (chance: 0.5).",
    ]
    if labeled:
        rm_gain = ppo["reward_model_score"] - sft["reward_model_score"]
        labeler_gain = ppo["labeler_score"] - sft["labeler_score"]
        lines.append(
            f"- **Gain over SFT**: reward model {rm_gain:+.3f}, labeler {labeler_gain:+.3f} (a reward-model gain "
            "without a labeler gain is the reward model being exploited)."
        )
    if ppo.get("labeler_win_rate_vs_sft") is not None:
        lines.append(
            f"- PPO's answer scores higher than SFT's with the labeler on {ppo['labeler_win_rate_vs_sft']:.0%} of "
            f"prompts (ties {ppo['labeler_tie_rate_vs_sft']:.0%})."
        )
    if len(policies) > 2:  # alternatives beside PPO (make compare)
        plot_leaderboard(result, plots / "leaderboard.png")
        columns, rows = leaderboard_rows(result)
        lines += ["", "## Leaderboard", "",
                  "Every policy answered the same held-out prompts with the same sampling settings and seed, scored "
                  "by the same reward model" + (" and labeler" if labeled else "")
                  + "; KL is each policy's own, on its own answers. *From this SFT* checks each policy's run record "
                  "against the SFT model evaluated here.", "", *markdown_table(columns, rows), "",
                  "![Score against KL](plots/leaderboard.png)"]  # fmt: skip
    lines += ["", "## Score distributions", "", "![Score distributions](plots/reward_distributions.png)", ""]
    lines += ["## PPO training", ""]
    if has_curves:
        lines += [
            f"{len(metrics)} logged steps from `{metrics_path}`.",
            "",
            "![PPO training](plots/ppo_training.png)",
        ]
    else:
        lines.append(f"No training metrics found at `{metrics_path}`.")
    if has_timing:
        lines += ["", timing_summary(metrics), "", "![PPO time per step](plots/ppo_timing.png)"]
    if gold_points:
        lines += [
            "",
            f"Gold evaluations during PPO ({gold_points} points, `eval_reward_fn`): the reward-model score and the "
            "labeler's against the KL from the SFT policy. Where the labeler flattens or falls while the reward "
            "model still rises, PPO is being paid by the reward model for what the labeler does not want.",
            "",
            "![Scores against KL](plots/gold_curve.png)",
        ]
    if trackers:
        lines += ["", "The training curves, sample tables and these figures in the experiment trackers:", ""]
        lines += [f"- {line}" for line in trackers]
    lines += ["", "## Sample answers", "", *sample_table(records, num_samples), ""]
    lines += ["All answers and scores: `eval_samples.jsonl`; all figures: `eval.json`.", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
