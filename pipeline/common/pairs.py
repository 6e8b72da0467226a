"""K ranked responses -> preference pairs, InstructGPT style (the built-in task, the converter and the rounds)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations


def pairs_from_scores(
    prompt: str, responses: Sequence[str], scores: Sequence[float], margin: bool = True
) -> list[dict]:
    """Every pair of responses with different scores, the higher-scored one as `chosen`.

    K responses give up to K*(K-1)/2 pairs; ties (equal scores, or identical texts) carry no preference and are
    skipped. With `margin`, each pair also holds `margin` = score(chosen) - score(rejected) (>0), which
    TRL's RewardTrainer adds to its loss when the column is present.
    """
    pairs = []
    for i, j in combinations(range(len(responses)), 2):
        if scores[i] == scores[j] or responses[i] == responses[j]:
            continue
        hi, lo = (i, j) if scores[i] > scores[j] else (j, i)
        pair = {"prompt": prompt, "chosen": responses[hi], "rejected": responses[lo]}
        if margin:
            pair["margin"] = float(scores[hi] - scores[lo])
        pairs.append(pair)
    return pairs


def pairs_from_ranks(prompt: str, responses: Sequence[str], ranks: Sequence[float]) -> list[dict]:
    """Like `pairs_from_scores` for ranks, where rank 1 is the best (so a lower rank is preferred); no margin."""
    return pairs_from_scores(prompt, responses, [-r for r in ranks], margin=False)
