"""Pushing a stage to the Hub, end to end through the real `huggingface_hub` client against a local fake Hub.

Nothing of the client is mocked: only its endpoint points at tests/fake_hub.py (loopback), which records what
arrives over HTTP. The token is a made-up string; the test checks it reached the server as a Bearer header and
appears nowhere in the output or the card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.common.config import ConfigError, UserError
from tests.fake_hub import TOKEN

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny"
EVAL = {
    "reward_model_accuracy": 0.8125,
    "sft_reward_model_score": -0.25,
    "ppo_reward_model_score": 1.5,
    "sft_labeler_score": 0.75,
    "ppo_labeler_score": 2.25,
    "kl_ppo_from_sft": 3.125,
    # Each policy's record, where the card reads its figures (the top-level keys above are copies of these).
    "policies": {
        "sft": {"reward_model_score": -0.25, "labeler_score": 0.75, "kl_from_sft": 0.0},
        "ppo": {"reward_model_score": 1.5, "labeler_score": 2.25, "kl_from_sft": 3.125},
    },
    "counts": {"num_prompts": 128, "num_preference_pairs": 466},
}


@pytest.fixture
def run_with_sft(tmp_path, tiny_sft) -> Path:
    """A run dir holding the real SFT stage output (adapter at the root, merged/ plain model) and an eval.json."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "sft").symlink_to(tiny_sft, target_is_directory=True)
    (run / "eval.json").write_text(json.dumps(EVAL))
    return run


def push(run: Path, *extra: str):
    from pipeline.push import main

    return main(
        ["--config", str(RECIPE / "push.yaml"), "--run_dir", str(run), "--recipe_dir", str(RECIPE), *extra]
    )


def test_push_uploads_adapter_and_card_privately_without_leaking_the_token(hub, run_with_sft, capfd):
    url = push(run_with_sft, "--stage", "sft", "--repo_id", "alice/tiny-sft")

    out = capfd.readouterr()
    assert hub.unexpected == []
    repo = hub.repos["alice/tiny-sft"]
    assert repo.visibility == "private"  # private by default
    assert url.startswith(f"{hub.endpoint}/alice/tiny-sft/commit/")

    # Exactly the adapter's files (byte for byte), the card and the eval figures; not the merged model.
    sft = run_with_sft / "sft"
    expected = {
        p.name for p in sft.iterdir() if p.is_file() and p.name not in ("README.md", "training_args.bin")
    }
    assert set(repo.files) == expected | {"README.md", "rlhf_eval.json"}
    for name in expected:
        assert repo.files[name] == (sft / name).read_bytes(), name
    assert "adapter_model.safetensors" in repo.lfs_files  # weights went through the LFS protocol
    assert "adapter_config.json" not in repo.lfs_files  # small text inline in the commit
    assert not any(name.startswith("merged") for name in repo.files)

    card = repo.files["README.md"].decode()
    assert card.startswith("---\n") and "library_name: peft" in card
    assert "supervised fine-tuned (SFT) policy" in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("alice/tiny-sft")' in card
    assert "| reward-model accuracy on held-out preference pairs | 0.812 |" in card  # eval.json figures
    assert "| mean labeler score, PPO policy (built-in task) | 2.250 |" in card
    assert "learning_rate" in card  # key hyperparameters from recipes/tiny/sft.yaml
    assert "source" in card and "builtin" in card  # data sets from recipes/tiny/data.yaml

    # The token authenticated every call and shows up nowhere else.
    assert hub.auth_headers and all(h == f"Bearer {TOKEN}" for h in hub.auth_headers if h is not None)
    assert sum(h is not None for h in hub.auth_headers) >= 3  # create, preupload, commit at least
    for text in (out.out, out.err, card, *(f.decode(errors="ignore") for f in repo.files.values())):
        assert TOKEN not in text
        assert TOKEN[3:20] not in text  # not even a part of it


def test_push_merged_weights_public_with_base_model_repo(hub, run_with_sft):
    push(run_with_sft, "--stage", "sft", "--repo_id", "alice/tiny-sft-merged", "--weights", "merged",
         "--private", "false")  # fmt: skip
    repo = hub.repos["alice/tiny-sft-merged"]
    assert repo.visibility == "public"
    assert "model.safetensors" in repo.lfs_files and "config.json" in repo.files
    assert "adapter_config.json" not in repo.files
    assert 'AutoModelForCausalLM.from_pretrained("alice/tiny-sft-merged")' in repo.files["README.md"].decode()


def test_adapter_points_at_the_base_model_repo_when_given(hub, run_with_sft):
    push(run_with_sft, "--stage", "sft", "--repo_id", "alice/a", "--base_model_repo", "alice/tiny-base")
    repo = hub.repos["alice/a"]
    assert json.loads(repo.files["adapter_config.json"])["base_model_name_or_path"] == "alice/tiny-base"
    assert "base_model: alice/tiny-base" in repo.files["README.md"].decode()


def test_dry_run_lists_files_and_sends_nothing(hub, run_with_sft, capfd, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token
    assert push(run_with_sft, "--stage", "sft", "--dry_run", "true") is None
    out = capfd.readouterr().out
    assert hub.requests == []
    assert "Would upload" in out
    for name in ("README.md", "adapter_model.safetensors", "adapter_config.json", "rlhf_eval.json"):
        assert name in out


def test_clear_errors(hub, run_with_sft, monkeypatch, tmp_path):
    with pytest.raises(UserError, match="make ppo"):
        push(run_with_sft, "--stage", "ppo", "--repo_id", "alice/x")
    with pytest.raises(ConfigError, match="repo_id"):
        push(run_with_sft, "--stage", "sft")
    with pytest.raises(ConfigError, match="stage must be one of"):
        push(run_with_sft, "--stage", "critic", "--dry_run", "true")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UserError, match="No Hugging Face token"):
        push(run_with_sft, "--stage", "sft", "--repo_id", "alice/x")
    assert hub.requests == []


def test_offline_mode_is_a_clear_error(run_with_sft, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest's setting, untouched here
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        push(run_with_sft, "--stage", "sft", "--repo_id", "alice/x")


def test_push_command_line_prints_one_line_errors(run_with_sft):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pipeline.push", "--config", str(RECIPE / "push.yaml"), "--run_dir",
         str(run_with_sft), "--stage", "reward", "--dry_run", "true"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "make reward" in result.stderr


def test_push_an_alternative_stage_with_its_own_leaderboard_figures(hub, run_with_sft, tiny_grpo):
    """GRPO's output (adapter + merged/, as every policy stage writes) goes up with a card that names the method and
    quotes GRPO's own row of the leaderboard, not PPO's."""
    (run_with_sft / "grpo").symlink_to(tiny_grpo, target_is_directory=True)
    board = {"sft": {"reward_model_score": -0.25, "labeler_score": 0.75, "kl_from_sft": 0.0},
             "grpo": {"reward_model_score": 1.75, "labeler_score": 2.125, "kl_from_sft": 2.5,
                      "labeler_win_rate_vs_sft": 0.625}}  # fmt: skip
    (run_with_sft / "eval.json").write_text(json.dumps({**EVAL, "policies": board}))
    push(run_with_sft, "--stage", "grpo", "--repo_id", "alice/tiny-grpo")
    repo = hub.repos["alice/tiny-grpo"]
    assert {"adapter_config.json", "README.md", "rlhf_eval.json"} <= set(repo.files)
    card = repo.files["README.md"].decode()
    assert "GRPO-tuned policy" in card and "- grpo" in card.split("---\n")[1]
    assert "| KL(GRPO || SFT) per answer, nats | 2.500 |" in card
    assert "| mean labeler score, GRPO policy (built-in task) | 2.125 |" in card
    assert "PPO policy" not in card  # not the PPO headline
    assert "| `beta` |" in card  # the recipe's KL coefficient
    push(run_with_sft, "--stage", "grpo", "--repo_id", "alice/tiny-grpo-merged", "--weights", "merged")
    assert "model.safetensors" in hub.repos["alice/tiny-grpo-merged"].lfs_files


def test_reward_model_card_says_how_to_score():
    from pipeline.analysis.model_card import CardInfo, render_card

    card = render_card(
        CardInfo(repo_id="bob/rm", stage="reward", weights="merged", base_model="Qwen/Qwen2.5-0.5B",
                 base_model_is_local=False, data={"preference_data": "Anthropic/hh-rlhf"}, license="apache-2.0")
    )  # fmt: skip
    metadata = card.split("---\n")[1]
    assert "base_model: Qwen/Qwen2.5-0.5B" in metadata and "- Anthropic/hh-rlhf" in metadata
    assert "pipeline_tag: text-classification" in metadata and "license: apache-2.0" in metadata
    assert 'AutoModelForSequenceClassification.from_pretrained("bob/rm")' in card
    assert "## Evaluation" not in card  # no eval.json, no made-up figures


def test_a_token_in_the_recipe_stays_off_the_card(run_with_sft, tmp_path, monkeypatch):
    """What the card quotes from the recipe passes the one secret rule (pipeline.common.redact): a value that holds
    the environment's token is left out, the rest shown as before."""
    import shutil

    import yaml

    from pipeline.push import PushArguments, plan_upload

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    recipe = tmp_path / "recipe"
    shutil.copytree(RECIPE, recipe)
    for name, key in (("sft.yaml", "model_name_or_path"), ("data.yaml", "sft_data")):
        config = yaml.safe_load((recipe / name).read_text())
        config[key] = f"https://user:{TOKEN}@example.com/{key}"
        (recipe / name).write_text(yaml.safe_dump(config))
    args = PushArguments(stage="sft", run_dir=str(run_with_sft), recipe_dir=str(recipe), dry_run=True)
    _, uploads, _ = plan_upload(args)
    card = uploads["README.md"].decode()
    assert TOKEN not in card and TOKEN[3:20] not in card
    assert "model_name_or_path" not in card and "sft_data" not in card
    assert "| `learning_rate` |" in card and "- `source`: `builtin`" in card  # the rest, as before
