"""The seeds' step 2, repeated: collect K answers from our own policy, have them ranked (the labeler, a person on
the labeling page, an imported file), retrain the reward model on every round's rankings, RL again.

    loop.py         make rounds ROUNDS=N: every step of rounds 1..N, resumable
    collect.py      make collect ROUND=n: comparisons.jsonl from the round's policy
    label.py        make label ROUND=n: the page a person ranks on (one file per rater in <n>/labels/)
    labels.py       the raters' files: written as ranked, read back, merged, agreement between raters
    rank.py         make rank ROUND=n: ranked.jsonl from the raters, an imported file and the labeler
    imports.py      rankings made in other tools (ranked .jsonl or a CSV of (id, answer, rank))
    preference.py   every round's rankings as preference pairs for the reward stage
    push_data.py    make push-data ROUND=n: a round's comparisons and rankings as a Hub data set
"""
