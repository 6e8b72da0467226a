"""Every YAML under recipes/ must validate against its stage's config dataclasses, so no recipe can rot."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from pipeline.common.config import ConfigError
from tests.conftest import load_recipe_file

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STAGE_MODULES = {
    "data": "data_prep.config",
    "base": "pipeline.base",
    "sft": "pipeline.sft",
    "reward": "pipeline.reward",
    "ppo": "pipeline.ppo",
    "grpo": "pipeline.grpo",
    "rloo": "pipeline.rloo",
    "dpo": "pipeline.dpo",
    "eval": "pipeline.evaluate",
    "push": "pipeline.push",
    "rounds": "pipeline.rounds.config",
}
RECIPE_FILES = sorted(p for p in RECIPES.glob("*/*.yaml") if p.parent.name != "accelerate")


def config_types_for(path: Path):
    stage = path.stem
    assert stage in STAGE_MODULES, f"{path}: file name must be one of {sorted(STAGE_MODULES)}.yaml"
    return importlib.import_module(STAGE_MODULES[stage]).CONFIG_TYPES


def cpu_override(types) -> list[str]:
    """GPU recipes set bf16 (TRL's configs default to it), which TrainingArguments rejects without a GPU: validate
    them as if run with --use_cpu true on a machine without one; every other field is checked as written."""
    import torch
    from transformers import TrainingArguments

    needs = any(isinstance(t, type) and issubclass(t, TrainingArguments) for t in types)
    return ["--use_cpu", "true"] if needs and not torch.cuda.is_available() else []


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_validates_against_its_dataclasses(path):
    types = config_types_for(path)
    configs = load_recipe_file(path, types, extra_args=cpu_override(types))
    assert all(c is not None for c in configs)


def test_tiny_and_two_real_recipes_exist():
    names = {p.parent.name for p in RECIPE_FILES}
    assert "tiny" in names
    assert len(names) >= 3, (
        f"expected the tiny recipe and at least two real GPU recipes, found {sorted(names)}"
    )


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path):
    from pipeline.base import CONFIG_TYPES

    bad = tmp_path / "base.yaml"
    bad.write_text("hiden_size: 64\noutput_dir: out\n")
    with pytest.raises(ConfigError) as err:
        load_recipe_file(bad, CONFIG_TYPES)
    message = str(err.value)
    assert "'hiden_size'" in message and str(bad) in message and "hidden_size" in message


def test_command_line_overrides_the_yaml(tmp_path):
    from pipeline.base import CONFIG_TYPES
    from pipeline.common.config import parse_config

    model_args, training_args = parse_config(
        CONFIG_TYPES, ["--config", str(RECIPES / "tiny" / "base.yaml"), "--hidden_size", "32", "--seed", "7"]
    )
    assert model_args.hidden_size == 32 and training_args.seed == 7
    assert model_args.vocab_size == 1000  # untouched YAML value


def test_missing_or_malformed_config_file_is_a_clear_error(tmp_path):
    from pipeline.base import CONFIG_TYPES

    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe_file(tmp_path / "nope.yaml", CONFIG_TYPES)
    listy = tmp_path / "base.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe_file(listy, CONFIG_TYPES)


ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads_and_says_when_to_use_it(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1
    assert path.read_text().startswith("#"), f"{path.name} must open with a comment on when to use it"


def test_accelerate_configs_cover_every_engine():
    names = {p.stem for p in ACCELERATE_CONFIGS}
    wanted = {
        "single_gpu",
        "multi_gpu",
        "multi_cpu",
        "zero2",
        "zero2_offload",
        "zero3",
        "zero3_offload",
        "fsdp",
        "multi_node",
    }
    assert wanted <= names, sorted(wanted - names)


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED"])
def test_sharding_config_on_cpu_warns_that_weights_are_replicated(engine, monkeypatch, capsys):
    """Accelerate silently runs DDP when an FSDP launch config meets a CPU run (or DeepSpeed meets cpu=True); the
    stages say so instead of letting the user believe the weights are sharded."""
    from accelerate import Accelerator

    from pipeline.common.training import report_engine

    accelerator = Accelerator(cpu=True)
    report_engine(accelerator)
    assert capsys.readouterr().out == ""

    monkeypatch.setenv(f"ACCELERATE_USE_{engine}", "true")  # what `accelerate launch` sets from the config
    report_engine(accelerator)
    out = capsys.readouterr().out
    assert "Warning" in out and "not sharded" in out and ("FSDP" if engine == "FSDP" else "DeepSpeed") in out


@pytest.mark.parametrize(
    "field, value",
    [
        ("eval_strategy", "steps"),
        ("push_to_hub", "true"),
        ("torch_compile", "true"),
        ("label_smoothing_factor", "0.1"),
    ],
)
def test_ppo_refuses_a_trainer_field_it_would_ignore(field, value):
    """PPOConfig is a TrainingArguments, but its loop is not the Trainer's: a field it would silently ignore is an
    error naming the field (and where the job is done instead, when there is such a place)."""
    from pipeline.ppo import CONFIG_TYPES

    with pytest.raises(ConfigError, match=rf"PPO does not use {field}\b"):
        load_recipe_file(RECIPES / "tiny" / "ppo.yaml", CONFIG_TYPES, [f"--{field}", value])


def test_ppo_honours_optim_and_max_steps():
    """The Trainer fields PPO does read: the optimizer by transformers' name, max_steps over the episode budget."""
    import torch

    from pipeline.ppo import CONFIG_TYPES
    from pipeline.ppo.distributed import build_optimizer

    ppo_args, _ = load_recipe_file(
        RECIPES / "tiny" / "ppo.yaml", CONFIG_TYPES, ["--optim", "sgd", "--max_steps", "3"]
    )
    assert ppo_args.max_steps == 3
    params = [torch.nn.Parameter(torch.zeros(2))]
    accelerator = type("NoEngine", (), {"distributed_type": None})()
    assert type(build_optimizer(params, ppo_args, accelerator)) is torch.optim.SGD
    default, _ = load_recipe_file(RECIPES / "tiny" / "ppo.yaml", CONFIG_TYPES)
    optimizer = build_optimizer(params, default, accelerator)  # torch's AdamW with PPO's eps, as before
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["eps"] == 1e-5


@pytest.mark.parametrize(
    "stage, key", [("sft", "dataset_path"), ("ppo", "prompts_path"), ("eval", "run_dir")]
)
def test_a_missing_path_is_an_error_naming_key_and_file(stage, key, tmp_path):
    """No stage falls back to the built-in recipe's folders: a real recipe that forgets a path is told so."""
    source = RECIPES / "tiny" / f"{stage}.yaml"
    recipe = tmp_path / f"{stage}.yaml"
    recipe.write_text(
        "".join(line for line in source.read_text().splitlines(True) if not line.startswith(f"{key}:"))
    )
    types = config_types_for(source)
    with pytest.raises(ConfigError) as err:
        load_recipe_file(recipe, types, extra_args=cpu_override(types))
    assert key in str(err.value) and str(recipe) in str(err.value)
