"""Your own data (recipes/custom-example): per-input column mappings, prompt files, the `make base` corpus of a
converted recipe, the offline flag, and the example's files and labeler. The full `make all` of the example is a
measurement (README, "Your own data"), not a test."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from datasets import load_from_disk

from data_prep.__main__ import main
from data_prep.build import describe_data
from data_prep.examples import units
from data_prep.sources import pretrain_texts
from data_prep.validate import MissingColumnsError
from pipeline.analysis.health import MIN_EVAL_PROMPTS
from pipeline.common.config import ConfigError
from pipeline.common.pairs import pairs_from_scores

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "custom-example"
FILES = RECIPE / "files"
TEMPLATE = "\n\nHuman: {prompt}\n\nAssistant:"


def build(out: Path, config: Path = RECIPE / "data.yaml", *extra: str) -> dict:
    """`make data` for a recipe whose paths are relative to the repository root, as in the Makefile."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        return main(["build", "--config", str(config), "--output_dir", str(out), *extra])


def templated(question: str) -> str:
    return TEMPLATE.replace("{prompt}", question)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def questions(path: Path) -> list[str]:
    if path.suffix == ".csv":
        return [r["question"] for r in read_csv(path)]
    return [json.loads(line)["question"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("custom") / "data"
    return out, build(out)


def write_recipe(tmp_path: Path, **keys) -> Path:
    """A data.yaml beside the example's: the same files, with keys changed (None removes a key)."""
    config = yaml.safe_load((RECIPE / "data.yaml").read_text())
    config.update(keys)
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not None}))
    return path


# --- the example builds, with one column mapping per input --------------------------------------------------


def test_example_data_builds_cleanly_with_per_input_mappings(example):
    out, info = example
    import pyarrow.parquet as pq

    ranked = pq.read_table(FILES / "ranked.parquet").to_pylist()
    expected_pairs = sum(len(pairs_from_scores(r["question"], r["answers"], r["grades"])) for r in ranked)
    pref = load_from_disk(out / "preference")
    assert (
        len(pref["train"]) + len(pref["test"]) == expected_pairs
    )  # every ranked row converted, none dropped
    assert pref["train"].column_names == ["prompt", "chosen", "rejected", "margin"]
    sft = load_from_disk(out / "sft")
    assert len(sft["train"]) + len(sft["test"]) == len(read_csv(FILES / "sft.csv"))
    assert all(r["kept"] == r["total"] for r in info["reports"].values()), info["reports"]
    row = sft["train"][0]  # the CSV's question/output, in the canonical prompt format
    source = {templated(r["question"]): " " + r["output"] for r in read_csv(FILES / "sft.csv")}
    assert source[row["prompt"]] == row["completion"]
    assert "warnings" not in info and info["eval_prompt_count"] == 128


def test_a_shared_mapping_cannot_map_both_files_and_the_error_names_the_key(tmp_path):
    """The ranked file's question/answers/grades and the CSV's question/output need a mapping each."""
    recipe = write_recipe(
        tmp_path,
        column_mapping="prompt=question,completion=output",
        preference_column_mapping=None,
    )
    with pytest.raises(MissingColumnsError, match="answers|responses") as err:
        build(tmp_path / "out", recipe)
    assert "preference_column_mapping" in str(err.value)


def test_the_shared_mapping_is_the_fallback(tmp_path):
    """RL and eval prompts have no mapping of their own in the example; without the shared one they fail."""
    recipe = write_recipe(tmp_path, column_mapping=None)
    with pytest.raises(MissingColumnsError, match="rl_prompts_column_mapping"):
        build(tmp_path / "out", recipe)
    recipe = write_recipe(tmp_path, column_mapping=None, rl_prompts_column_mapping="prompt=question",
                          eval_prompts_column_mapping="prompt=question")  # fmt: skip
    n_rl = len(questions(FILES / "rl_prompts.jsonl"))
    assert build(tmp_path / "out", recipe)["sizes"]["prompts"] == {"all": n_rl}


# --- prompt files --------------------------------------------------------------------------------------------


def test_named_prompt_files_are_used(example):
    out, _ = example
    rl = load_from_disk(out / "prompts")["prompt"]
    assert sorted(rl) == sorted(templated(q) for q in questions(FILES / "rl_prompts.jsonl"))
    evaluation = load_from_disk(out / "eval_prompts")["prompt"]
    assert len(evaluation) == 128 and set(evaluation) <= {
        templated(q) for q in questions(FILES / "eval_prompts.csv")
    }


def test_without_prompt_files_the_pairs_prompts_are_used(tmp_path):
    recipe = write_recipe(tmp_path, rl_prompts_data=None, eval_prompts_data=None)
    info = build(tmp_path / "out", recipe)
    pref = load_from_disk(tmp_path / "out" / "preference")
    assert set(load_from_disk(tmp_path / "out" / "prompts")["prompt"]) == set(pref["train"]["prompt"])
    assert set(load_from_disk(tmp_path / "out" / "eval_prompts")["prompt"]) == set(pref["test"]["prompt"])
    assert info["eval_prompt_count"] == 90  # 15% of 600 questions held out


def test_eval_prompts_seen_in_training_are_dropped_and_few_are_a_warning(tmp_path):
    sft_question = read_csv(FILES / "sft.csv")[0]["question"]
    rl_question = questions(FILES / "rl_prompts.jsonl")[0]
    fresh = questions(FILES / "eval_prompts.csv")[:8]
    (tmp_path / "few.jsonl").write_text(
        "".join(json.dumps({"question": q}) + "\n" for q in [sft_question, rl_question, *fresh])
    )
    info = build(tmp_path / "out", write_recipe(tmp_path, eval_prompts_data=str(tmp_path / "few.jsonl")))
    evaluation = set(load_from_disk(tmp_path / "out" / "eval_prompts")["prompt"])
    assert evaluation == {templated(q) for q in fresh}  # the two seen in training are gone
    assert info["eval_prompts_removed_as_seen_in_train"] == 2
    assert info["eval_prompt_count"] == 8 < MIN_EVAL_PROMPTS
    saved = json.loads((tmp_path / "out" / "data_info.json").read_text())
    assert saved["eval_prompt_count"] == 8 and "only 8 evaluation prompts" in saved["warnings"][0]
    assert "warning: only 8 evaluation prompts" in describe_data(info, str(tmp_path / "out"))


# --- the corpus of `make base` --------------------------------------------------------------------------------


def test_base_corpus_holds_every_train_text_and_no_heldout_one(example):
    out, info = example
    corpus = set(load_from_disk(out / "pretrain")["text"])
    sft, pref = load_from_disk(out / "sft"), load_from_disk(out / "preference")
    train = {r["prompt"] + r["completion"] for r in sft["train"]}
    train |= {r["prompt"] + r[k] for r in pref["train"] for k in ("chosen", "rejected")}
    train |= {p.removesuffix("\n\nAssistant:") for p in load_from_disk(out / "prompts")["prompt"]}
    notes = {line for line in (FILES / "notes.txt").read_text().splitlines() if line}
    assert train | notes == corpus and info["pretrain_texts"]["text_files"] == len(notes)
    # Held out: evaluation prompts, the preference test split and the SFT test split, as questions.
    heldout = set(load_from_disk(out / "eval_prompts")["prompt"]) | set(pref["test"]["prompt"])
    heldout |= set(sft["test"]["prompt"])
    questions_in_corpus = {t.split("\n\nAssistant:")[0] for t in corpus}
    assert heldout and not {p.removesuffix("\n\nAssistant:") for p in heldout} & questions_in_corpus


def test_corpus_leaves_out_a_train_text_whose_prompt_is_held_out():
    p, q = templated("Convert 3 meters to centimeters."), templated("Convert 4 meters to centimeters.")
    sft = [{"prompt": p, "completion": " 300 centimeters."}, {"prompt": q, "completion": " 400 centimeters."}]
    pref = [{"prompt": q, "chosen": " 400 centimeters.", "rejected": " 40 centimeters."}]
    texts = pretrain_texts(sft, pref, [p, q], heldout={p}, template=TEMPLATE)
    assert not any(t.startswith(p.removesuffix("\n\nAssistant:")) for t in texts)
    assert set(texts) == {q + " 400 centimeters.", q + " 40 centimeters.", q.removesuffix("\n\nAssistant:")}


def test_builtin_recipe_keeps_its_own_pretrain_split(tmp_path):
    info = main(["build", "--config", str(REPO / "recipes/tiny/data.yaml"), "--output_dir", str(tmp_path / "d"),
                 "--num_pretrain", "50", "--pretrain_corpus", "true"])  # fmt: skip
    assert info["sizes"]["pretrain"] == {"all": 50}


def test_make_base_trains_on_the_custom_corpus(example, tmp_path):
    """pipeline.base on the example's corpus: its tokenizer is trained on the task's words."""
    from pipeline.base import main as base_main

    out, _ = example
    base_main(["--config", str(RECIPE / "base.yaml"), "--corpus_path", str(out / "pretrain"),
               "--output_dir", str(tmp_path / "base"), "--max_steps", "1", "--disable_tqdm", "true"])  # fmt: skip
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "base")
    assert len(tok(" millimeters")["input_ids"]) <= 2  # a word of the task, not bytes
    assert len(tok(" photosynthesis")["input_ids"]) > 3  # a word it never saw


# --- offline, from the recipe's own files ---------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(p.parent.name for p in REPO.glob("recipes/*/data.yaml")))
def test_make_reads_offline_from_the_recipe(recipe):
    declared = yaml.safe_load((REPO / "recipes" / recipe / "data.yaml").read_text()).get("offline", False)
    env = {k: v for k, v in os.environ.items() if k not in ("OFFLINE", "HF_HUB_OFFLINE", "MAKEFLAGS")}
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", "show: ; @echo $(OFFLINE) $(HF_HUB_OFFLINE)", "show",
         f"RECIPE=recipes/{recipe}"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.split() == (["1", "1"] if declared else ["0"])
    assert declared == (recipe in ("tiny", "custom-example"))


def test_an_offline_recipe_naming_a_hub_data_set_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="offline is true but 'someone/their-data'"):
        build(tmp_path / "out", RECIPE / "data.yaml", "--preference_data", "someone/their-data")


# --- the example's files and labeler --------------------------------------------------------------------------


def test_shipped_files_are_what_the_seeded_script_writes(tmp_path):
    import pyarrow.parquet as pq

    paths = units.write_files(tmp_path / "s0", seed=0)
    for name, path in paths.items():
        shipped = FILES / path.name
        if path.suffix == ".parquet":
            assert pq.read_table(path).to_pylist() == pq.read_table(shipped).to_pylist()
        else:
            assert path.read_bytes() == shipped.read_bytes(), name
    assert sum(p.stat().st_size for p in FILES.iterdir()) < 500_000
    other = units.write_files(tmp_path / "s1", seed=1)
    assert other["sft"].read_bytes() != paths["sft"].read_bytes()


def test_pools_of_questions_are_disjoint():
    import pyarrow.parquet as pq

    pools = [
        {r["question"] for r in pq.read_table(FILES / "ranked.parquet").to_pylist()},
        set(questions(FILES / "sft.csv")),
        set(questions(FILES / "rl_prompts.jsonl")),
        set(questions(FILES / "eval_prompts.csv")),
    ]
    assert sum(map(len, pools)) == len(set().union(*pools)) == sum(units.SIZES.values())


def test_example_labeler_ranks_good_answers_above_bad_ones():
    import random

    rng = random.Random(0)
    good = {"answer": "right", "manners": "polite", "ending": "complete"}
    qs = rng.sample(units.all_questions(), 200)
    for q in qs:
        prompt = templated(q)
        bad = {
            "answer": rng.choice(["wrong", "none"]),
            "manners": "rude",
            "ending": rng.choice(["cut", "rambling"]),
        }
        g, b = units.generate_answer(rng, q, good), units.generate_answer(rng, q, bad)
        assert units.labeler_scores([prompt, prompt], [g, b]) == [3.0, -3.0], (q, g, b)
    # One term at a time: the right number, manners, a finished brief answer.
    p = templated("How many grams are in 3 kilograms?")
    assert units.parse_question(p) == (3, "kilograms", "grams")
    score = units.explain_score
    assert score(p, "That is 3000 grams.")["answer"] == 1.5 > score(p, "That is 300 grams.")["answer"]
    assert score(p, "3 kilograms is 3,000 grams.")["answer"] == 1.5
    # the right result after a miscopied question, or in the wrong unit, is wrong
    assert score(p, "9 kilograms is 3000 grams.")["answer"] == -1.5
    assert score(p, "3 kilograms is 3000 meters.")["answer"] == -1.5
    assert score(p, "I am not sure about that.")["answer"] == -1.5
    assert score(p, "Happy to help. 3000 grams.")["manners"] == 1 > score(p, "3000 grams.")["manners"] == 0
    assert score(p, "Ugh. 3000 grams.")["manners"] == -1
    assert score(p, "That is 3000 grams.")["ending"] == 0.5 > score(p, "That is 3000")["ending"]
    assert score(p, "That is 3000 grams. That is 3000 grams.")["ending"] == -0.5
    assert (
        score(templated("Tell me about cats."), "Cats are nice.")["answer"] == 0
    )  # not a question of the task
    with pytest.raises(ValueError):
        units.labeler_scores([p], [])


def test_example_labeler_grades_the_ranked_file():
    import pyarrow.parquet as pq

    for row in pq.read_table(FILES / "ranked.parquet").to_pylist()[:100]:
        assert units.labeler_scores([templated(row["question"])] * 4, row["answers"]) == row["grades"]
        assert len(set(row["answers"])) == 4 and len(set(row["grades"])) > 1


def test_prompt_rows_are_validated_like_any_other():
    from data_prep.convert import convert_rows
    from data_prep.validate import RowReport

    rows = [
        {"prompt": "a"},
        {"prompt": ""},
        {"prompt": "a"},
        {"prompt": 3},
        {"prompt": "x" * 50},
        {"prompt": "b"},
    ]
    report = RowReport("prompts.jsonl")
    assert convert_rows(rows, "prompts", report, max_chars=40) == [{"prompt": "a"}, {"prompt": "b"}]
    assert [(p.row, p.kind) for p in report.problems] == [
        (2, "empty"), (3, "duplicate"), (4, "not a string"), (5, "too long"),
    ]  # fmt: skip
