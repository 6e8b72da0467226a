"""Config of `python -m data_prep build` (one `data.yaml` per recipe) and `python -m data_prep convert`."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_prep.readers import is_file_like
from pipeline.common.config import ConfigError, required

SOURCES = ("builtin", "datasets")
PREFERENCE_FORMATS = ("hh_rlhf", "pairs", "ranked")
SFT_FORMATS = ("prompt_completion", "messages")
PROMPT_FORMATS = ("prompts",)


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
            "help": "Rename input columns to canonical ones, e.g. 'prompt=question,chosen=good,rejected=bad'; "
            "applies to every input without a mapping of its own (the *_column_mapping keys)."
        },
    )
    preference_column_mapping: str | None = field(
        default=None,
        metadata={"help": "column_mapping of preference_data, e.g. 'prompt=question,responses=answers,scores=grades'."},
    )  # fmt: skip
    sft_column_mapping: str | None = field(
        default=None,
        metadata={"help": "column_mapping of sft_data, e.g. 'prompt=question,completion=output'."},
    )
    rl_prompts_data: str | None = field(
        default=None,
        metadata={"help": "Prompts for PPO (file or hub id, a `prompt` column); none: the train pairs' prompts."},
    )  # fmt: skip
    rl_prompts_split: str = field(
        default="train", metadata={"help": "Hub sets only: split of rl_prompts_data."}
    )
    rl_prompts_column_mapping: str | None = field(
        default=None, metadata={"help": "column_mapping of rl_prompts_data, e.g. 'prompt=question'."}
    )
    eval_prompts_data: str | None = field(
        default=None,
        metadata={"help": "Held-out prompts for evaluation (file or hub id); none: the held-out pairs' prompts. "
                  "Prompts also found in any training data are dropped (counted in data_info.json)."},
    )  # fmt: skip
    eval_prompts_split: str = field(
        default="train", metadata={"help": "Hub sets only: split of eval_prompts_data."}
    )
    eval_prompts_column_mapping: str | None = field(
        default=None, metadata={"help": "column_mapping of eval_prompts_data, e.g. 'prompt=question'."}
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Wrap every prompt of every input, e.g. '\\n\\nHuman: {prompt}\\n\\nAssistant:' (the tiny "
                  "base's chat format); answers then start with one space unless it ends in one. None: prompts as they are."},
    )  # fmt: skip
    pretrain_corpus: bool = field(
        default=False,
        metadata={"help": "source datasets: also write pretrain/, the corpus `make base` trains on: every train "
                  "text (SFT demonstrations, each preference response, RL prompts) plus pretrain_text_files, "
                  "never a held-out one."},
    )  # fmt: skip
    pretrain_text_files: str | None = field(
        default=None,
        metadata={"help": "Extra UTF-8 .txt files (comma-separated paths or globs) for pretrain/, one text per line."},
    )  # fmt: skip
    offline: bool = field(
        default=False,
        metadata={"help": "The recipe needs no network (local files, a base model built by `make base`): make runs "
                  "every stage with HF_HUB_OFFLINE=1, and a hub data set id here is an error."},
    )  # fmt: skip
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
        if self.prompt_template is not None and "{prompt}" not in self.prompt_template:
            raise ConfigError(
                f"data config: prompt_template {self.prompt_template!r} must contain {{prompt}}, where each "
                "input's prompt goes."
            )
        if self.offline and self.source == "datasets":
            hub = [s for s in self.inputs() if not is_file_like(s)]
            if hub:
                raise ConfigError(
                    f"data config: offline is true but {hub[0]!r} is no local file (a hub data set id?); point "
                    "it at a local .jsonl/.json/.csv/.parquet file, or set offline: false."
                )
        if self.responses_per_prompt < 2:
            raise ConfigError("data config: responses_per_prompt must be at least 2 to form pairs.")
        if not 0.0 < self.heldout_fraction < 1.0 or not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(
                "data config: heldout_fraction and test_fraction must lie strictly between 0 and 1."
            )

    def inputs(self) -> list[str]:
        """Every input a `datasets` build reads."""
        names = (self.preference_data, self.preference_test_data, self.sft_data, self.rl_prompts_data,
                 self.eval_prompts_data)  # fmt: skip
        return [n for n in names if n]


CONFIG_TYPES = (DataConfig,)


@dataclass
class ConvertConfig:
    """`python -m data_prep convert`: one input file/hub set in one format -> one canonical data set."""

    input: str = field(metadata={"help": "A .jsonl/.json/.csv/.parquet file (or glob) or a hub data set id."})
    output: str = field(metadata={"help": "Folder for datasets.save_to_disk, or a file ending in .jsonl."})
    format: str = field(
        metadata={
            "help": "hh_rlhf, pairs, ranked (-> prompt/chosen/rejected), prompt_completion, messages (SFT) "
            "or prompts (-> prompt)."
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
        formats = PREFERENCE_FORMATS + SFT_FORMATS + PROMPT_FORMATS
        if self.format not in formats:
            raise ConfigError(f"convert: format '{self.format}' is unknown; use one of {', '.join(formats)}.")
