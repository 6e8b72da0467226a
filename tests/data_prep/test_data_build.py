"""`python -m data_prep build`: the contract's layout, determinism, speed, held-out prompts, atomic writes."""

import json
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from data_prep import task
from data_prep.__main__ import main
from data_prep.config import CONFIG_TYPES, DataConfig
from pipeline.common.config import ConfigError, UserError
from tests.conftest import load_recipe_file

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny" / "data.yaml"
SMALL = [
    "--num_pretrain", "2000", "--num_sft_train", "300", "--num_sft_test", "50", "--num_preference_prompts", "100",
    "--num_preference_test_prompts", "40", "--num_rl_prompts", "200", "--num_eval_prompts", "64",
]  # fmt: skip


def build(out, *extra):
    return main(["build", "--config", str(TINY), "--output_dir", str(out), *SMALL, *extra])


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "data"
    build(out)
    return out


def test_layout_matches_the_contract(small_data):
    assert load_from_disk(small_data / "pretrain").column_names == ["text"]
    sft = load_from_disk(small_data / "sft")
    assert set(sft) == {"train", "test"} and sft["train"].column_names == ["prompt", "completion"]
    pref = load_from_disk(small_data / "preference")
    assert set(pref) == {"train", "test"}
    assert pref["train"].column_names == ["prompt", "chosen", "rejected", "margin"]
    assert load_from_disk(small_data / "prompts").column_names == ["prompt"]
    assert load_from_disk(small_data / "eval_prompts").column_names == ["prompt"]
    assert len(sft["train"]) == 300 and len(load_from_disk(small_data / "eval_prompts")) == 64
    info = json.loads((small_data / "data_info.json").read_text())
    assert info["sizes"]["pretrain"] == {"all": 2000}


def test_text_format(small_data):
    sft = load_from_disk(small_data / "sft")["train"]
    for row in sft:
        assert row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:")
        assert row["completion"].startswith(" ") and "</s>" not in row["completion"]
    for text in load_from_disk(small_data / "pretrain")["text"][:200]:
        assert text.count("\n\nAssistant: ") == 1


def test_preference_pairs_are_ranked_by_the_labeler(small_data):
    pref = load_from_disk(small_data / "preference")
    for split in ("train", "test"):
        rows = pref[split]
        assert len(rows) > 2 * (100 if split == "train" else 40)  # up to 6 pairs from K=4, ties skipped
        for row in rows:
            chosen = task.labeler_score(row["prompt"], row["chosen"])
            rejected = task.labeler_score(row["prompt"], row["rejected"])
            assert chosen > rejected and row["margin"] == pytest.approx(chosen - rejected)


def test_held_out_prompts_are_never_trained_on(small_data):
    train_prompts = set(load_from_disk(small_data / "prompts")["prompt"])
    train_prompts |= set(load_from_disk(small_data / "sft")["train"]["prompt"])
    train_prompts |= set(load_from_disk(small_data / "preference")["train"]["prompt"])
    train_prompts |= {
        t[: t.index("\n\nAssistant:") + len("\n\nAssistant:")]
        for t in load_from_disk(small_data / "pretrain")["text"]
    }
    heldout = set(load_from_disk(small_data / "eval_prompts")["prompt"])
    heldout |= set(load_from_disk(small_data / "preference")["test"]["prompt"])
    heldout |= set(load_from_disk(small_data / "sft")["test"]["prompt"])
    assert heldout and not heldout & train_prompts
    assert len(set(load_from_disk(small_data / "eval_prompts")["prompt"])) == 64  # distinct


def test_sft_demonstrations_are_mixed_quality(small_data):
    info = json.loads((small_data / "data_info.json").read_text())
    assert 0.3 < info["sft_train_mean_labeler_score"] < task.LABELER_MAX - 1.5


def test_build_is_deterministic_and_seeded(tmp_path, small_data):
    build(tmp_path / "again")
    build(tmp_path / "other", "--seed", "1")
    for name in ("pretrain", "prompts", "eval_prompts"):
        assert load_from_disk(tmp_path / "again" / name)[:] == load_from_disk(small_data / name)[:]
        assert load_from_disk(tmp_path / "other" / name)[:] != load_from_disk(small_data / name)[:]
    for name in ("sft", "preference"):
        for split in ("train", "test"):
            assert (
                load_from_disk(tmp_path / "again" / name)[split][:]
                == load_from_disk(small_data / name)[split][:]
            )


def test_default_tiny_recipe_builds_in_a_few_seconds(tmp_path):
    start = time.perf_counter()
    main(["build", "--config", str(TINY), "--output_dir", str(tmp_path / "data")])
    assert time.perf_counter() - start < 15  # measured ~2 s on 2 cores
    assert len(load_from_disk(tmp_path / "data" / "pretrain")) == 30000


def test_a_failed_build_keeps_the_old_data(tmp_path, small_data, monkeypatch):
    out = tmp_path / "data"
    build(out)
    before = load_from_disk(out / "prompts")[:]

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("data_prep.build.save_datasets", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        build(out, "--seed", "5")
    assert load_from_disk(out / "prompts")[:] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left behind


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    bad = tmp_path / "data.yaml"
    bad.write_text("source: builtin\nnum_pretrian: 10\n")
    with pytest.raises(ConfigError, match=r"num_pretrian.*did you mean num_pretrain"):
        main(["build", "--config", str(bad)])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "files"], "source 'files' is unknown"),
        (["--source", "datasets"], "needs preference_data"),
        (["--responses_per_prompt", "1"], "at least 2"),
        (["--preference_format", "hh"], "preference_format 'hh' is unknown"),
    ],
)
def test_bad_config_values_are_user_errors(args, message, tmp_path):
    with pytest.raises(UserError, match=message):
        main(["build", "--config", str(TINY), "--output_dir", str(tmp_path / "x"), *args])


def test_unknown_command():
    with pytest.raises(ConfigError, match="Unknown command 'bild'"):
        main(["bild"])


def test_recipes_validate_against_config_types():
    for path in sorted(REPO.glob("recipes/*/data.yaml")):
        (config,) = load_recipe_file(path, CONFIG_TYPES)
        assert isinstance(config, DataConfig)
        assert config.output_dir == f"runs/{path.parent.name}/data", path
