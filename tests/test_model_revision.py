"""A recipe that pins `model_revision` gets that revision in every stage: SFT, reward, PPO and evaluation load the
base from the revision the recipe names, and the adapters record it so the later stages do too.

The fixture is a hub-like local cache (huggingface_hub's own layout: refs/<name> -> snapshots/<commit>), read
through the real offline resolution path. Its `main` branch holds a config no library can load, so a stage that
drops the revision fails instead of quietly training on the default branch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RECIPE, REPO

REPO_ID = "fixture-org/tiny-llama"
PINNED = "v2"


def hub_cache(root: Path, model_dir: Path) -> Path:
    """A hub cache holding REPO_ID with a broken `main` and the real model at revision PINNED."""
    repo = root / f"models--{REPO_ID.replace('/', '--')}"
    commits = {"main": "a" * 40, PINNED: "b" * 40}
    for ref, commit in commits.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    broken = repo / "snapshots" / commits["main"]
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"model_type": "not-the-pinned-revision"}))
    shutil.copytree(model_dir, repo / "snapshots" / commits[PINNED])
    return root


STAGES = """
import sys
from pathlib import Path
run, data, repo, rev = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
recipe = Path(sys.argv[5])
from transformers import AutoConfig
try:
    AutoConfig.from_pretrained(repo)
    raise SystemExit("the fixture's main branch loaded: it must not")
except ValueError:
    pass
from pipeline.sft import main as sft
from pipeline.reward import main as reward
from pipeline.ppo import main as ppo
from pipeline.evaluate import main as evaluate
quick = ["--max_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]
sft(["--config", str(recipe / "sft.yaml"), "--model_name_or_path", repo, "--model_revision", rev,
     "--dataset_path", str(data / "sft"), "--output_dir", str(run / "sft"), "--eval_split", "",
     "--merge_adapter", "true", "--per_device_train_batch_size", "4", *quick])
reward(["--config", str(recipe / "reward.yaml"), "--model_name_or_path", repo, "--model_revision", rev,
        "--dataset_path", str(data / "preference"), "--output_dir", str(run / "reward"), "--eval_split", "",
        "--per_device_train_batch_size", "4", *quick])
ppo(["--config", str(recipe / "ppo.yaml"), "--sft_model_path", str(run / "sft"),
     "--reward_model_path", str(run / "reward"), "--prompts_path", str(data / "prompts"),
     "--eval_prompts_path", "null", "--output_dir", str(run / "ppo"), "--max_steps", "1",
     "--per_device_train_batch_size", "4", "--num_mini_batches", "1", "--num_ppo_epochs", "1",
     "--response_length", "8", "--save_steps", "0", "--sample_every", "0", "--save_merged", "true"])
(run / "data").symlink_to(data)
evaluate(["--config", str(recipe / "eval.yaml"), "--run_dir", str(run), "--num_prompts", "4", "--num_pairs", "4",
          "--max_new_tokens", "8"])
print("EVERY STAGE LOADED", rev)
"""


@pytest.mark.slow
def test_a_pinned_revision_is_loaded_by_every_stage(tiny_base, tiny_data, tmp_path):
    cache = hub_cache(tmp_path / "hub", tiny_base)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", STAGES, str(run), str(tiny_data), REPO_ID, PINNED, str(RECIPE)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0 and f"EVERY STAGE LOADED {PINNED}" in result.stdout, result.stderr[-4000:]
    for adapter in ("sft", "ppo"):  # the adapters name the base and its revision, for whoever loads them next
        config = json.loads((run / adapter / "adapter_config.json").read_text())
        assert (config["base_model_name_or_path"], config["revision"]) == (REPO_ID, PINNED), adapter
    assert (run / "ppo" / "merged" / "config.json").is_file() and (run / "eval.json").is_file()
