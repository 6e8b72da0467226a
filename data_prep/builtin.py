"""Generate the built-in task's data sets (pretrain, sft, preference, prompts, eval_prompts) from a seed.

Every split is drawn from its own seeded stream, so changing one size leaves the other data sets unchanged.
Train data uses only the train prompt combinations; eval prompts, held-out pairs and the SFT test split use
only the held-out ones (`task.split_prompt_specs`), so no evaluation prompt is seen verbatim in training.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import datasets as datasets_lib
from datasets import Dataset, DatasetDict

from data_prep import task
from data_prep.config import DataConfig
from pipeline.common.pairs import pairs_from_scores


def _cycled(rng: random.Random, specs: list[task.PromptSpec], n: int) -> list[task.PromptSpec]:
    """n specs covering all of `specs` evenly (a fresh shuffle per pass)."""
    out: list[task.PromptSpec] = []
    while len(out) < n:
        batch = list(specs)
        rng.shuffle(batch)
        out += batch[: n - len(out)]
    return out


def _demonstrations(rng: random.Random, specs: list[task.PromptSpec], n: int) -> list[dict]:
    rows = []
    for spec in _cycled(rng, specs, n):
        prompt, response = task.generate_example(rng, spec)
        rows.append({"prompt": prompt, "completion": response.text})
    return rows


def _ranked_pairs(rng: random.Random, specs: list[task.PromptSpec], n_prompts: int, k: int) -> list[dict]:
    """K responses per prompt, scored by the labeler, turned into every non-tied ordered pair."""
    pairs = []
    for spec in _cycled(rng, specs, n_prompts):
        responses = [task.generate_response(rng, spec.topic).text for _ in range(k)]
        scores = task.labeler_scores([spec.text] * k, responses)
        pairs += pairs_from_scores(spec.text, responses, scores, margin=True)
    return pairs


def generate_builtin(config: DataConfig) -> tuple[dict[str, Dataset | DatasetDict], dict]:
    """The five data sets of the built-in task and a summary (sizes, labeler statistics)."""
    train_specs, heldout_specs = task.split_prompt_specs(config.seed, config.heldout_fraction)

    def rng(name: str) -> random.Random:
        return random.Random(f"{config.seed}-{name}")

    pretrain_rng = rng("pretrain")
    pretrain = [
        {"text": prompt + response.text}
        for prompt, response in (
            task.generate_example(pretrain_rng, spec, mix="pretrain")
            for spec in _cycled(pretrain_rng, train_specs, config.num_pretrain)
        )
    ]
    sft_train = _demonstrations(rng("sft-train"), train_specs, config.num_sft_train)
    sft_test = _demonstrations(rng("sft-test"), heldout_specs, config.num_sft_test)
    k = config.responses_per_prompt
    pref_train = _ranked_pairs(rng("pref-train"), train_specs, config.num_preference_prompts, k)
    pref_test = _ranked_pairs(rng("pref-test"), heldout_specs, config.num_preference_test_prompts, k)
    rl_prompts = [s.text for s in _cycled(rng("rl"), train_specs, config.num_rl_prompts)]
    eval_prompts = [s.text for s in _cycled(rng("eval"), heldout_specs, config.num_eval_prompts)]

    datasets = {
        "pretrain": Dataset.from_list(pretrain),
        "sft": DatasetDict(train=Dataset.from_list(sft_train), test=Dataset.from_list(sft_test)),
        "preference": DatasetDict(train=Dataset.from_list(pref_train), test=Dataset.from_list(pref_test)),
        "prompts": Dataset.from_dict({"prompt": rl_prompts}),
        "eval_prompts": Dataset.from_dict({"prompt": eval_prompts}),
    }
    sft_scores = task.labeler_scores([r["prompt"] for r in sft_train], [r["completion"] for r in sft_train])
    info = {
        "source": "builtin",
        "labeler_range": [task.LABELER_MIN, task.LABELER_MAX],
        "sft_train_mean_labeler_score": round(statistics.fmean(sft_scores), 4),
        "sft_train_fraction_at_max": round(
            sum(s == task.LABELER_MAX for s in sft_scores) / len(sft_scores), 4
        ),
        "distinct_train_prompts": len(train_specs),
        "distinct_heldout_prompts": len(heldout_specs),
    }
    return datasets, info


def save_datasets(datasets: dict[str, Dataset | DatasetDict], out: Path) -> dict[str, dict[str, int]]:
    """save_to_disk each data set under `out/<name>/`; returns the row counts per split."""
    datasets_lib.disable_progress_bars()  # seven progress bars of a split second each are only noise
    sizes = {}
    for name, ds in datasets.items():
        ds.save_to_disk(str(out / name))
        splits = ds if isinstance(ds, DatasetDict) else {"all": ds}
        sizes[name] = {split: len(d) for split, d in splits.items()}
    return sizes
