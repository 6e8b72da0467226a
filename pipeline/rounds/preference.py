"""Round n's reward-model data: every round's rankings so far turned into pairs (InstructGPT: all K(K-1)/2 pairs of a
prompt's ranked answers), plus the recipe's own preference data unless the rounds train alone.

Each round holds out `heldout_fraction` of its prompts (chosen by prompt id, so a prompt is held out in every round
or in none): their pairs are the split `round_<k>`, on which the reward stage reports accuracy separately. Written
with `save_to_disk` to `<output_dir>/<n>/preference`:
    train     the recipe's train pairs (when kept) + every round's training pairs
    test      the recipe's held-out pairs (the reward model's usual held-out accuracy); without them, every
              round's held-out pairs
    round_k   round k's held-out pairs, for k = 1..n
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value, concatenate_datasets

from pipeline.common.config import UserError
from pipeline.common.data import load_pairs
from pipeline.common.outputs import write_atomically
from pipeline.common.pairs import pairs_from_ranks, pairs_from_scores
from pipeline.rounds.comparisons import RANKED, read_jsonl
from pipeline.rounds.config import RoundsConfig


def is_held_out(prompt_id: str, fraction: float) -> bool:
    """Whether a prompt is held out: a fixed function of its id, the same in every round and on every machine."""
    return int(hashlib.sha256(f"heldout-{prompt_id}".encode()).hexdigest()[:8], 16) < fraction * 16**8


def ranking_pairs(row: dict) -> list[dict]:
    if row.get("scores") is not None:
        pairs = pairs_from_scores(row["prompt"], row["responses"], row["scores"], margin=True)
    else:
        pairs = pairs_from_ranks(row["prompt"], row["responses"], row["ranks"])
    return pairs


def round_pairs(path: Path, fraction: float) -> tuple[list[dict], list[dict]]:
    """(training pairs, held-out pairs) of one round's rankings."""
    train, held_out = [], []
    for row in read_jsonl(path, "Rankings file"):
        (held_out if is_held_out(row["id"], fraction) else train).extend(ranking_pairs(row))
    return train, held_out


def features(with_margin: bool) -> Features:
    types = {"prompt": Value("string"), "chosen": Value("string"), "rejected": Value("string")}
    return Features({**types, "margin": Value("float64")} if with_margin else types)


def as_dataset(pairs: list[dict], with_margin: bool) -> Dataset:
    schema = features(with_margin)
    return Dataset.from_dict({c: [p.get(c) for p in pairs] for c in schema}, features=schema)


def build_preference(config: RoundsConfig, n: int) -> Path:
    rounds = {}
    for k in range(1, n + 1):
        ranked = config.round_dir(k) / RANKED
        if not ranked.exists():
            raise UserError(f"{ranked} does not exist: round {k} is not ranked yet (make rank ROUND={k}).")
        rounds[k] = round_pairs(ranked, config.heldout_fraction)
    original_train = original_test = None
    if config.original_preference_path:
        original_train, original_test = load_pairs(config.original_preference_path, "train", "test")
    # margin (the score gap) only when every source has it: pairs from ranks, or data without one, have none
    every = [p for train, held in rounds.values() for p in train + held]
    with_margin = all("margin" in p for p in every) and all(
        d is None or "margin" in d.column_names for d in (original_train, original_test)
    )

    def original(data):
        schema = features(with_margin)
        return data.select_columns(list(schema)).cast(schema)

    round_train = as_dataset([p for train, _ in rounds.values() for p in train], with_margin)
    splits = {
        "train": concatenate_datasets([original(original_train), round_train])
        if original_train
        else round_train
    }
    held = {f"round_{k}": as_dataset(held, with_margin) for k, (_, held) in rounds.items() if held}
    if original_test is not None:
        splits["test"] = original(original_test)
    elif held:
        splits["test"] = concatenate_datasets(list(held.values()))
    splits.update(held)
    if len(splits["train"]) == 0:
        raise UserError(f"Round {n}'s rankings hold no preference pairs to train on (all tied?).")
    final = config.round_dir(n) / "preference"
    write_atomically(final, lambda tmp: DatasetDict(splits).save_to_disk(str(tmp)))
    counts = ", ".join(f"{name} {len(d)}" for name, d in splits.items())
    print(f"Round {n}: reward-model pairs -> {final} ({counts})", flush=True)
    return final
