"""Rank a round's comparisons into `<output_dir>/<n>/ranked.jsonl`: with the recipe's labeler (the stand-in for
human raters, `labeler: module:function`), or from a file of rankings made elsewhere (`--from_file`, ranked format
keyed by the comparisons' ids: a labeling tool's export). Either way every row is checked against the comparisons
it ranks, and the file is written whole or not at all.

    python -m pipeline.rounds.rank --config recipes/tiny/rounds.yaml --round 1
    python -m pipeline.rounds.rank --config recipes/tiny/rounds.yaml --round 1 --from_file rankings.jsonl
"""

from __future__ import annotations

from pathlib import Path

from pipeline.common.config import UserError, parse_config, run_main
from pipeline.common.models import load_scoring_function
from pipeline.common.pairs import pairs_from_ranks, pairs_from_scores
from pipeline.rounds.comparisons import (
    COMPARISONS,
    RANKED,
    check_rankings,
    read_comparisons,
    read_jsonl,
    write_jsonl,
)
from pipeline.rounds.config import CONFIG_TYPES


def rank_with_labeler(comparisons: dict[str, dict], spec: str) -> list[dict]:
    """The labeler's scores of every answer, checked as any rankings are (a NaN is named by its row)."""
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
    if config.from_file:
        source = Path(config.from_file)
        rows = read_jsonl(source, "Rankings file")
        rankings = check_rankings(source, rows, comparisons, comparisons_path)
        rater = f"the file {source}"
    elif config.labeler:
        rankings = rank_with_labeler(comparisons, config.labeler)
        rater = f"the labeler {config.labeler}"
    else:
        raise UserError(f"Round {n} has no labeler (rounds.yaml: labeler) and no rankings file: rank its "
                        f"comparisons in any tool and pass the rankings (make rank ROUND={n} FROM=file.jsonl).")  # fmt: skip
    write_jsonl(out, rankings)
    unranked = len(comparisons) - len(rankings)
    print(f"Round {n}: {len(rankings)} prompts ranked by {rater} ({pair_count(rankings)} preference pairs"
          + (f"; {unranked} prompts not ranked" if unranked else "") + f") -> {out}")  # fmt: skip


if __name__ == "__main__":
    run_main(main)
