"""Where a reward model of the built-in task errs: held-out pair accuracy by which labeler terms differ.

Not a test. Scores every held-out pair with the reward model (the scorer PPO and evaluation use) and groups the
pairs by the labeler terms (`data_prep.task.explain_score`: topic, manners, ending, length) on which the chosen
and the rejected answer differ, and by the labeler's margin:

    .venv/bin/python -m tests.benchmarks.reward_errors --reward_model runs/tiny/reward \\
        --preference runs/tiny/data/preference
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from datasets import load_from_disk

from data_prep.task import explain_score
from pipeline.lm.scoring import RewardScorer, preference_margins


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reward_model", required=True)
    parser.add_argument("--preference", required=True, help="data_prep's preference DatasetDict")
    parser.add_argument("--split", default="test")
    a = parser.parse_args()

    pairs = load_from_disk(a.preference)[a.split].to_list()
    right = [m > 0 for m in preference_margins(RewardScorer(a.reward_model, batch_size=64), pairs)]
    by_margin, by_terms = defaultdict(list), defaultdict(list)
    for pair, ok in zip(pairs, right):
        chosen, rejected = (
            explain_score(pair["prompt"], pair["chosen"]),
            explain_score(pair["prompt"], pair["rejected"]),
        )
        terms = " + ".join(t for t in chosen if t != "total" and chosen[t] != rejected[t])
        by_terms[terms].append(ok)
        by_margin[chosen["total"] - rejected["total"]].append(ok)

    print(f"accuracy {sum(right) / len(right):.3f} on {len(right)} pairs of {a.preference}[{a.split}]\n")
    print("| terms that differ | pairs | accuracy |\n|---|---|---|")
    for terms, oks in sorted(by_terms.items(), key=lambda kv: -len(kv[1])):
        print(f"| {terms} | {len(oks)} | {sum(oks) / len(oks):.3f} |")
    print("\n| labeler margin | pairs | accuracy |\n|---|---|---|")
    for margin, oks in sorted(by_margin.items()):
        print(f"| {margin:g} | {len(oks)} | {sum(oks) / len(oks):.3f} |")


if __name__ == "__main__":
    main()
