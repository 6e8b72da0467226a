"""Session fixtures: the built-in recipe's stages run once per test session, in order, on reduced budgets.

Each fixture calls a stage's `main(argv)` exactly as `make <stage>` does (the YAML recipe plus overrides), so
the tests exercise the real scripts. Set RLHF_TEST_CACHE=/some/dir to keep the built run between sessions
while developing (stages whose output already exists there are not rebuilt); CI always builds from scratch.
"""

from __future__ import annotations

import os
import sys

# Before anything imports huggingface_hub: never touch the network, never send telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny"
ACCELERATE = Path(sys.executable).with_name("accelerate")  # the venv's launcher, for multi-process tests
SHARED_DATA = Path(os.environ.get("RLHF_SHARED_DATA", REPO.parent / "shared" / "data"))
# The seed of every training stage in the session fixtures and in the learning tests. `make test-kernels` runs
# the learning tests on seeds 0-2 under each CPU kernel set to size their thresholds (BENCHMARKS.md).
TEST_SEED = int(os.environ.get("RLHF_TEST_SEED", "0"))
LEARNING_LOG = os.environ.get("RLHF_LEARNING_LOG")  # where record_learning appends, for the matrix


def pytest_report_header(config) -> list[str]:
    """The arithmetic the numeric tests ran on: PyTorch's CPU kernel set, threads, and the training seed."""
    import torch

    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    return [
        f"torch CPU kernels: {torch.backends.cpu.get_cpu_capability()}"
        f" ({'ATEN_CPU_CAPABILITY=' + forced if forced else 'the machine default'}),"
        f" {torch.get_num_threads()} threads, training seed {TEST_SEED}"
    ]


def load_recipe_file(path, dataclass_types, extra_args=()) -> tuple:
    """Validate one YAML recipe file against its dataclasses and build them, as a stage's `--config` does."""
    from pipeline.common.config import parse_config

    return parse_config(dataclass_types, ["--config", str(path), *extra_args])


def pair_accuracy(reward_model_path: str, pairs, batch_size: int = 32, device="cpu") -> float:
    """Held-out accuracy of a saved reward model on `pairs` (a Dataset or a list of prompt/chosen/rejected rows),
    in one process: what the reward stage reports, recomputed."""
    from pipeline.lm.scoring import RewardScorer, accuracy, preference_margins

    rows = (
        pairs if isinstance(pairs, list) else pairs.select_columns(["prompt", "chosen", "rejected"]).to_list()
    )
    return accuracy(
        preference_margins(RewardScorer(reward_model_path, device=device, batch_size=batch_size), rows)
    )


def record_learning(name: str, value: float, threshold: float, higher_is_better: bool = True) -> None:
    """Print a learning test's measured value beside its threshold; append it to RLHF_LEARNING_LOG when set.

    The matrix (tests/benchmarks/bench_learning.py) reads those lines to report each test's worst case."""
    import json

    import torch

    print(f"{name}: {value:.4f} (threshold {'>' if higher_is_better else '<'} {threshold})")
    if LEARNING_LOG:
        row = {
            "name": name, "value": value, "threshold": threshold, "higher_is_better": higher_is_better,
            "kernels": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "seed": TEST_SEED,
        }  # fmt: skip
        with open(LEARNING_LOG, "a") as f:
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    cache = os.environ.get("RLHF_TEST_CACHE")
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        return Path(cache)
    return tmp_path_factory.mktemp("tiny-run")


def _run_stage(main, yaml_name: str, output: Path, overrides: list[str]) -> Path:
    if not output.exists() or not any(output.iterdir()):  # an empty folder is what a killed run may leave
        main(["--config", str(RECIPE / yaml_name), *overrides])
    assert output.exists() and any(output.iterdir()), f"stage {yaml_name} did not write {output}"
    return output


@pytest.fixture(scope="session")
def tiny_data(run_dir) -> Path:
    from data_prep.__main__ import main

    out = run_dir / "data"
    return _run_stage(lambda a: main(["build", *a]), "data.yaml", out, ["--output_dir", str(out)])


@pytest.fixture(scope="session")
def tiny_base(run_dir, tiny_data) -> Path:
    from pipeline.base import main

    out = run_dir / "base"
    overrides = [
        "--corpus_path",
        str(tiny_data / "pretrain"),
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        "--seed",
        str(TEST_SEED),
    ]
    return _run_stage(main, "base.yaml", out, overrides)


@pytest.fixture(scope="session")
def tiny_sft(run_dir, tiny_data, tiny_base) -> Path:
    from pipeline.sft import main

    out = run_dir / "sft"
    overrides = [
        "--model_name_or_path", str(tiny_base),
        "--dataset_path", str(tiny_data / "sft"),
        "--output_dir", str(out),
        "--disable_tqdm", "true", "--seed", str(TEST_SEED),
    ]  # fmt: skip
    return _run_stage(main, "sft.yaml", out, overrides)


@pytest.fixture(scope="session")
def tiny_reward(run_dir, tiny_data, tiny_base) -> Path:
    from pipeline.reward import main

    out = run_dir / "reward"
    overrides = [
        "--model_name_or_path", str(tiny_base),
        "--dataset_path", str(tiny_data / "preference"),
        "--output_dir", str(out),
        "--disable_tqdm", "true", "--seed", str(TEST_SEED),
    ]  # fmt: skip
    return _run_stage(main, "reward.yaml", out, overrides)


@pytest.fixture(scope="session")
def tiny_grpo(run_dir, tiny_data, tiny_sft, tiny_reward) -> Path:
    """A short real GRPO run (TRL's trainer) from the SFT policy, scored by the reward model: a stage-3
    alternative for the evaluation and push tests (tests/test_alternatives.py checks that GRPO learns)."""
    from pipeline.grpo import main

    out = run_dir / "grpo"
    overrides = [
        "--model_name_or_path", str(tiny_sft), "--reward_model_path", str(tiny_reward),
        "--prompts_path", str(tiny_data / "prompts"), "--output_dir", str(out),
        "--max_steps", "8", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", str(TEST_SEED),
    ]  # fmt: skip
    return _run_stage(main, "grpo.yaml", out, overrides)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The fake Hub (tests/fake_hub.py), with the client online and pointed at it (HF_HUB_OFFLINE=1 holds for
    everything else). huggingface_hub and datasets read these settings at import, so their copies are patched too."""
    import datasets.config
    from huggingface_hub import constants

    from tests.fake_hub import TOKEN, FakeHub

    with FakeHub() as fake:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
        monkeypatch.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", fake.endpoint)
        # Xet storage needs its own CAS service; the legacy LFS protocol is the one the fake speaks.
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login of the developer is used
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        yield fake
