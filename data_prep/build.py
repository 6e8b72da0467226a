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
