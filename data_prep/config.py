"""Config of `python -m data_prep build` (one `data.yaml` per recipe) and `python -m data_prep convert`."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import required

SOURCES = ("builtin", "datasets")
PREFERENCE_FORMATS = ("hh_rlhf", "pairs", "ranked")
SFT_FORMATS = ("prompt_completion", "messages")


@dataclass
class DataConfig:
    """What `data.yaml` may hold. `source: builtin` generates the synthetic task; `source: datasets` converts
    files or hub data sets (`preference_data`, optional `sft_data`) into the same canonical layout."""

    source: str = field(
        default="builtin", metadata={"help": f"Where the data comes from: one of {', '.join(SOURCES)}."}
    )
    output_dir: str | None = required(
        "Folder to write pretrain/, sft/, preference/, prompts/, eval_prompts/ into (runs/<recipe>/data)."
    )
    seed: int = field(default=0, metadata={"help": "Seed of the generator and of every shuffle or split."})
    overwrite: bool = field(
        default=True, metadata={"help": "Replace an existing output_dir (written atomically)."}
    )

    # --- built-in task sizes ------------------------------------------------------------------------------
    num_pretrain: int = field(default=30000, metadata={"help": "Dialogues in the pretraining corpus."})
    num_sft_train: int = field(default=2000, metadata={"help": "SFT demonstrations (train split)."})
    num_sft_test: int = field(
        default=200, metadata={"help": "SFT demonstrations on held-out prompts (test)."}
    )
    num_preference_prompts: int = field(
        default=600,
        metadata={"help": "Train prompts ranked into preference pairs (up to K*(K-1)/2 pairs each)."},
    )
    num_preference_test_prompts: int = field(
        default=100, metadata={"help": "Held-out prompts ranked into the preference test split."}
    )
    responses_per_prompt: int = field(
        default=4, metadata={"help": "K: responses the labeler ranks per prompt (InstructGPT uses 4 to 9)."}
    )
    num_rl_prompts: int = field(default=1000, metadata={"help": "Prompts for PPO (train prompts)."})
    num_eval_prompts: int = field(default=128, metadata={"help": "Held-out prompts for evaluation."})
    heldout_fraction: float = field(
        default=0.15,
        metadata={"help": "Fraction of the task's distinct prompts kept out of all training data."},
    )

    # --- converted data sets (source: datasets) -----------------------------------------------------------
    preference_data: str | None = field(
        default=None,
        metadata={
            "help": "Preference data: a .jsonl/.json/.csv/.parquet file (or glob) or a hub data set id."
        },
    )
    preference_format: str = field(
        default="hh_rlhf",
        metadata={"help": f"Format of preference_data: one of {', '.join(PREFERENCE_FORMATS)}."},
    )
    preference_data_dir: str | None = field(
        default=None,
        metadata={"help": "Hub data sets only: subfolder (e.g. harmless-base for Anthropic/hh-rlhf)."},
    )
    preference_train_split: str = field(
        default="train", metadata={"help": "Split of preference_data to train on."}
    )
    preference_test_split: str | None = field(
        default="test",
        metadata={
            "help": "Held-out split of preference_data; none: hold out test_fraction of the train split."
        },
    )
    preference_test_data: str | None = field(
        default=None,
        metadata={"help": "A separate file/hub id for the held-out pairs (overrides the test split)."},
    )
    sft_data: str | None = field(
        default=None,
        metadata={
            "help": "SFT demonstrations (file or hub id); none: the preferred response of each train pair."
        },
    )
    sft_format: str = field(
        default="prompt_completion",
        metadata={"help": f"Format of sft_data: one of {', '.join(SFT_FORMATS)}."},
    )
    sft_train_split: str = field(default="train", metadata={"help": "Split of sft_data to train on."})
    sft_test_split: str | None = field(
        default=None, metadata={"help": "Held-out split of sft_data; none: hold out test_fraction of it."}
    )
    column_mapping: str | None = field(
        default=None,
        metadata={
            "help": "Rename input columns to canonical ones, e.g. 'prompt=question,chosen=good,rejected=bad'."
        },
    )
    test_fraction: float = field(
        default=0.05, metadata={"help": "Fraction held out when a data set has no test split of its own."}
    )
    max_rows: int | None = field(
        default=None, metadata={"help": "Use at most this many rows of each input split (quick runs)."}
    )
    max_chars: int = field(
        default=20000,
        metadata={"help": "Rows with a prompt+response longer than this (characters) are dropped."},
    )
    strict: bool = field(
        default=False,
        metadata={"help": "Fail on the first bad row instead of dropping bad rows with a summary."},
    )

    def __post_init__(self):
        from pipeline.config import ConfigError

        if self.source not in SOURCES:
            raise ConfigError(
                f"data config: source '{self.source}' is unknown; use one of {', '.join(SOURCES)}."
            )
        if self.preference_format not in PREFERENCE_FORMATS:
            raise ConfigError(
                f"data config: preference_format '{self.preference_format}' is unknown; "
                f"use one of {', '.join(PREFERENCE_FORMATS)}."
            )
        if self.sft_format not in SFT_FORMATS:
            raise ConfigError(
                f"data config: sft_format '{self.sft_format}' is unknown; use one of {', '.join(SFT_FORMATS)}."
            )
        if self.source == "datasets" and not self.preference_data:
            raise ConfigError(
                "data config: source 'datasets' needs preference_data (a file path or hub data set id)."
            )
        if self.responses_per_prompt < 2:
            raise ConfigError("data config: responses_per_prompt must be at least 2 to form pairs.")
        if not 0.0 < self.heldout_fraction < 1.0 or not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(
                "data config: heldout_fraction and test_fraction must lie strictly between 0 and 1."
            )


CONFIG_TYPES = (DataConfig,)


@dataclass
class ConvertConfig:
    """`python -m data_prep convert`: one input file/hub set in one format -> one canonical data set."""

    input: str = field(metadata={"help": "A .jsonl/.json/.csv/.parquet file (or glob) or a hub data set id."})
    output: str = field(metadata={"help": "Folder for datasets.save_to_disk, or a file ending in .jsonl."})
    format: str = field(
        metadata={
            "help": "hh_rlhf, pairs, ranked (-> prompt/chosen/rejected) or prompt_completion, messages."
        }
    )
    split: str = field(
        default="train", metadata={"help": "Split to read (hub sets; files are one 'train' split)."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "Hub data sets only: subfolder to read."})
    column_mapping: str | None = field(
        default=None,
        metadata={"help": "Rename input columns, e.g. 'prompt=question,chosen=good,rejected=bad'."},
    )
    margin: bool = field(
        default=True, metadata={"help": "ranked only: add a margin column (score difference)."}
    )
    max_chars: int = field(default=20000, metadata={"help": "Drop rows longer than this many characters."})
    max_rows: int | None = field(default=None, metadata={"help": "Read at most this many rows."})
    strict: bool = field(default=False, metadata={"help": "Fail on the first bad row."})

    def __post_init__(self):
        from pipeline.config import ConfigError

        formats = PREFERENCE_FORMATS + SFT_FORMATS
        if self.format not in formats:
            raise ConfigError(f"convert: format '{self.format}' is unknown; use one of {', '.join(formats)}.")
