"""`python -m data_prep build`: one recipe's data.yaml -> runs/<name>/data/ (built-in task or converted sets)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from data_prep.builtin import generate_builtin, save_datasets
from data_prep.config import DataConfig
from data_prep.sources import convert_recipe_data
from data_prep.validate import DROPPED_FILE, dropped_note, write_dropped
from pipeline.analysis.health import few_prompts_warning
from pipeline.common.config import UserError
from pipeline.common.lock import one_writer
from pipeline.common.outputs import write_atomically

INFO_FILE = "data_info.json"  # sizes, labeler statistics and dropped-row reports, next to the data sets


def build(config: DataConfig) -> dict:
    """Write every data set of `config` into `config.output_dir` atomically; returns the summary it saved."""
    with one_writer(config.output_dir, "data"):
        return _build(config)


def _build(config: DataConfig) -> dict:
    start = time.perf_counter()
    if config.source == "builtin":
        (datasets, info), reports = generate_builtin(config), []
    else:
        datasets, info, reports = convert_recipe_data(config)

    check_none_empty(datasets, info)
    info["eval_prompt_count"] = n_eval = len(datasets["eval_prompts"])
    if warning := few_prompts_warning(n_eval):  # data_info.json holds the count and the warning
        info.setdefault("warnings", []).append(warning)

    def fill(tmp: Path) -> None:
        info["sizes"] = save_datasets(datasets, tmp)
        # Always written (empty when nothing was dropped), inside the same rename as the data: never stale.
        info["dropped_rows"] = write_dropped(tmp / DROPPED_FILE, reports)
        info["seconds"] = round(time.perf_counter() - start, 2)
        info["config"] = dataclasses.asdict(config)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    write_atomically(config.output_dir, fill, overwrite=config.overwrite)
    return info


# The data sets a later stage reads (the stage that refuses them empty, for the message).
NEEDED = {("sft", "train"): "SFT", ("preference", "train"): "the reward stage and DPO",
          ("preference", "test"): "the reward stage's and evaluation's held-out accuracy",
          ("prompts", None): "PPO, GRPO, RLOO and the rounds", ("eval_prompts", None): "evaluation"}  # fmt: skip


def check_none_empty(datasets: dict, info: dict) -> None:
    """Stop at `make data`, not in a later stage, when a data set that stage needs came out empty."""
    for (name, split), reader in NEEDED.items():
        data = datasets.get(name)
        if data is None or len(data[split] if split else data):
            continue
        label = f"{name}/{split}" if split else name
        removed = info.get("eval_prompts_removed_as_seen_in_train", 0)
        if name == "eval_prompts" and removed:
            raise UserError(
                f"the data build leaves {label} empty: all held-out prompts ({removed}) also appear in training (the "
                "preference train split, the demonstrations or the RL prompts), and evaluation never uses a prompt "
                "that training saw. Give evaluation prompts of their own (eval_prompts_data), or hold out prompts "
                "that training never sees (a preference test split whose prompts are not in train)."
            )
        raise UserError(
            f"the data build leaves {label} empty, which {reader} cannot run without. Check the input it comes "
            "from (the file, its column mapping, rows dropped as invalid) and the recipe's size settings (num_*, "
            "test_fraction)."
        )


def describe_data(info: dict, output_dir: str) -> str:
    lines = [f"Wrote {output_dir} in {info['seconds']} s:"]
    for name, splits in info["sizes"].items():
        lines.append(f"  {name:13s} " + ", ".join(f"{split}={n}" for split, n in splits.items()))
    if "sft_train_mean_labeler_score" in info:
        lo, hi = info["labeler_range"]
        lines.append(
            f"  labeler: SFT demonstrations score {info['sft_train_mean_labeler_score']:.2f} on average "
            f"(range {lo:g}..{hi:g}; {info['sft_train_fraction_at_max']:.0%} at the maximum)"
        )
    for summary in info.get("reports", {}).values():
        lines.append("  " + summary["summary"])
    for note in info.get("notes", []):
        lines.append(f"  note: {note}")
    for warning in info.get("warnings", []):
        lines.append(f"  warning: {warning}")
    if info.get("reports"):
        lines.append("  " + dropped_note(info["dropped_rows"], Path(output_dir) / DROPPED_FILE))
    return "\n".join(lines)
