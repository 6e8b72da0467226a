"""Rank a round's comparisons into `<output_dir>/<n>/ranked.jsonl`, from every source there is:
- people, on the labeling page (`<n>/labels/<rater>.jsonl`, make label);
- a file of rankings made in another tool (`--from_file`: ranked .jsonl or a CSV, imports.py);
- the recipe's labeler (`labeler: module:function`, the stand-in for raters), for the prompts nobody ranked.
A prompt several raters ranked is merged (labels.merge) and their agreement reported; every row is checked
against the comparisons it ranks, and the file is written whole or not at all, with `rank_summary.json` beside
it: how many prompts each rater ranked, what the labeler filled, the agreement.

    python -m pipeline.rounds.rank --config recipes/tiny/rounds.yaml --round 1
    python -m pipeline.rounds.rank --config recipes/tiny/rounds.yaml --round 1 --from_file rankings.csv
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.common.config import UserError, parse_config, run_main
from pipeline.common.outputs import write_file_atomically
from pipeline.common.pairs import pairs_from_ranks, pairs_from_scores
from pipeline.rounds.comparisons import COMPARISONS, RANKED, check_rankings, read_comparisons, write_jsonl
from pipeline.rounds.config import CONFIG_TYPES
from pipeline.rounds.imports import read_rankings_file
from pipeline.rounds.labels import LABELS, agreement, merge, people_rows, rater_file, read_labels

SUMMARY = "rank_summary.json"


def rank_with_labeler(comparisons: dict[str, dict], spec: str) -> list[dict]:
    """The labeler's scores of every answer, checked as any rankings are (a NaN is named by its row)."""
    from pipeline.common.models import load_scoring_function  # transformers: only when a labeler ranks

    labeler = load_scoring_function(spec, "labeler")
    rows = list(comparisons.values())
    prompts = [r["prompt"] for r in rows for _ in r["responses"]]
    scores = labeler(prompts, [a for r in rows for a in r["responses"]])
    out, i = [], 0
    for row in rows:
        k = len(row["responses"])
        out.append(
            {"id": row["id"], "scores": scores[i : i + k], "rater": f"labeler:{spec}", "_row": row["_row"]}
        )
        i += k
    return check_rankings(Path(f"the labeler {spec}'s scores"), out, comparisons, Path("comparisons.jsonl"))


def pair_count(rankings: list[dict]) -> int:
    count = 0
    for r in rankings:
        make = pairs_from_scores if "scores" in r else pairs_from_ranks
        count += len(make(r["prompt"], r["responses"], r.get("scores") or r["ranks"]))
    return count


def main(args=None):
    config, _ = parse_config(CONFIG_TYPES, args)
    n = config.need_round()
    folder = config.round_dir(n)
    comparisons_path = folder / COMPARISONS
    if not comparisons_path.exists():
        raise UserError(
            f"{comparisons_path} does not exist: collect round {n} first (make collect ROUND={n})."
        )
    comparisons = read_comparisons(comparisons_path, n, config.policy_of(n))
    out = folder / RANKED
    if out.exists():
        raise UserError(f"{out} exists already: round {n} was ranked. Delete it to rank again.")
    rows = []
    for rater, records in read_labels(
        folder
    ).items():  # checked file by file, so an error names the rater's file
        rows += check_rankings(
            rater_file(folder, rater), people_rows({rater: records}), comparisons, comparisons_path
        )
    if config.from_file:
        rows += read_rankings_file(Path(config.from_file), comparisons, comparisons_path)
    merged = merge(rows)
    left = {i: c for i, c in comparisons.items() if i not in {r["id"] for r in merged}}
    if left and config.labeler:
        merged += rank_with_labeler(left, config.labeler)
    if not merged:
        raise UserError(f"Round {n} has no rankings: nobody ranked on the page ({folder / LABELS}/ is empty), no "
                        f"file was given and the recipe has no labeler (rounds.yaml: labeler). Rank in the browser "
                        f"(make label ROUND={n}) or pass another tool's rankings (make rank ROUND={n} FROM=file).")  # fmt: skip
    order = {prompt_id: i for i, prompt_id in enumerate(comparisons)}
    merged.sort(key=lambda r: order[r["id"]])
    summary = {
        "prompts": len(comparisons),
        "ranked": len(merged),
        "pairs": pair_count(merged),
        "by_rater": dict(Counter(r["rater"] for r in rows)),
        "filled_by_labeler": sum(r["rater"].startswith("labeler:") for r in merged),
        "several_raters": sum("by_rater" in r for r in merged),
        "agreement": agreement(rows),
        "agreement_with_labeler": labeler_agreement(rows, comparisons, config.labeler),
    }
    write_jsonl(out, merged)
    write_file_atomically(folder / SUMMARY, json.dumps(summary, indent=2) + "\n")
    print(f"Round {n}: {describe(summary)} -> {out}")


def labeler_agreement(rows: list[dict], comparisons: dict[str, dict], labeler: str | None) -> dict:
    """Each rater against the labeler on the prompts that rater ranked: how far a person and the stand-in for
    people agree (a careless rater, or a labeler that misses what people want, shows here)."""
    if not rows or not labeler:
        return {}
    scored = rank_with_labeler({i: comparisons[i] for i in dict.fromkeys(r["id"] for r in rows)}, labeler)
    out = {}
    for rater in dict.fromkeys(r["rater"] for r in rows):
        own = [r for r in rows if r["rater"] == rater]
        figures = agreement(own + [s for s in scored if s["id"] in {r["id"] for r in own}])
        out[rater] = {"prompts": len(own), "pairs": figures["pairs"], "agreement": figures["agreement"]}
    return out


def describe(summary: dict) -> str:
    """'400 of 400 prompts ranked (1875 preference pairs): ana 12, ben 10, the labeler 380; raters agree on 74.0% of
    the 40 answer pairs both ordered; with the labeler: ana 90.0% of 60, ben 85.0% of 50 pairs'."""
    who = [f"{rater} {count}" for rater, count in summary["by_rater"].items()]
    if summary["filled_by_labeler"]:
        who.append(f"the labeler {summary['filled_by_labeler']}")
    text = (
        f"{summary['ranked']} of {summary['prompts']} prompts ranked ({summary['pairs']} preference pairs): "
    )
    text += ", ".join(who)
    agreed = summary["agreement"]
    if agreed["agreement"] is not None:
        text += (
            f"; raters agree on {agreed['agreement']:.1%} of the {agreed['pairs']} answer pairs both ordered"
        )
    with_labeler = [f"{rater} {f['agreement']:.1%} of {f['pairs']}" for rater, f in
                    summary.get("agreement_with_labeler", {}).items() if f["agreement"] is not None]  # fmt: skip
    if with_labeler:
        text += "; with the labeler: " + ", ".join(with_labeler) + " pairs"
    unranked = summary["prompts"] - summary["ranked"]
    return text + (f"; {unranked} prompts not ranked" if unranked else "")


if __name__ == "__main__":
    run_main(main)
