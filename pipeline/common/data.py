"""The data sets the stages read, as `data_prep` writes them (`datasets.save_to_disk`): demonstrations (SFT),
preference pairs (reward, DPO) and prompts (PPO, GRPO, RLOO). One loader each, so every stage that reads a kind of
set refuses a missing or malformed one with the same message, naming the folder and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

from pipeline.common.config import UserError


def load_splits(
    path: str | None,
    what: str,
    train_split: str,
    eval_split: str | None,
    column_problem: Callable[[set], str | None],
) -> tuple[Dataset, Dataset | None]:
    """The train split (and the held-out one, when `eval_split` names it) of a saved DatasetDict;
    `column_problem(columns)` says what is wrong with the train split's columns, or None."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path} does not exist. Build it first (make data) or set dataset_path.")
    data = read_saved(path, what)
    if not isinstance(data, DatasetDict) or train_split not in data:
        found = list(data) if isinstance(data, DatasetDict) else "a single Dataset"
        raise UserError(
            f"{what} {path} must be a DatasetDict with a '{train_split}' split; found {found}. "
            "Set train_split/eval_split or rebuild it with data_prep."
        )
    problem = column_problem(set(data[train_split].column_names))
    if problem:
        raise UserError(f"{what} {path} {problem}")
    if eval_split and eval_split not in data:
        raise UserError(f"{what} {path} has no '{eval_split}' split (splits: {list(data)}); set eval_split.")
    for split in (train_split, eval_split):
        if split and len(data[split]) == 0:
            raise UserError(f"{what} {path}: its '{split}' split holds no rows. Rebuild it (make data) with more "
                            "data" + (", or set eval_split '' to train without a held-out split." if split == eval_split
                                      else "."))  # fmt: skip
    return data[train_split], data[eval_split] if eval_split else None


def read_saved(path: Path, what: str) -> Dataset | DatasetDict:
    """`load_from_disk`, with the one failure a user can cause named: a set saved with no rows has no Arrow file,
    and `datasets` fails on it with a bare IndexError."""
    try:
        return load_from_disk(str(path))
    except IndexError:
        raise UserError(
            f"{what} {path} holds an empty data set. Rebuild it (make data) with more data."
        ) from None


def load_demonstrations(path: str | None, train_split: str, eval_split: str | None):
    """SFT's {prompt, completion} or {messages} rows."""

    def column_problem(columns: set) -> str | None:
        if {"prompt", "completion"} <= columns or "messages" in columns:
            return None
        return f"has columns {sorted(columns)}; expected 'prompt' + 'completion' or 'messages'."

    return load_splits(path, "SFT data", train_split, eval_split, column_problem)


def load_pairs(path: str | None, train_split: str, eval_split: str | None, use_margin: bool = True):
    """The reward model's and DPO's {prompt, chosen, rejected[, margin]} rows; `use_margin=False` drops margin."""

    def column_problem(columns: set) -> str | None:
        missing = {"prompt", "chosen", "rejected"} - columns
        return f"lacks column(s) {sorted(missing)}; rebuild it with data_prep." if missing else None

    train, held_out = load_splits(path, "Preference data", train_split, eval_split, column_problem)
    if not use_margin and "margin" in train.column_names:
        train = train.remove_columns("margin")
        if held_out is not None and "margin" in held_out.column_names:
            held_out = held_out.remove_columns("margin")
    return train, held_out


def load_prompts(path: str | None, field: str) -> list[str]:
    """The `field` column of a saved prompt data set (a DatasetDict: its train split), for PPO and the TRL stages."""
    if path is None:
        return []
    if not Path(path).exists():
        raise UserError(f"Prompt data set {path} does not exist. Run the data stage (make data) first.")
    data = read_saved(Path(path), "Prompt data set")
    if hasattr(data, "keys"):  # a DatasetDict: take its train split
        data = data["train"]
    if field not in data.column_names:
        raise UserError(f"{path} has no '{field}' column (columns: {data.column_names}); rebuild it with data_prep "
                        "or name its prompt column (PPO: prompt_field).")  # fmt: skip
    prompts = list(data[field])
    if not prompts:
        raise UserError(f"{path} holds no prompts.")
    return prompts
