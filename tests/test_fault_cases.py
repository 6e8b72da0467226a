"""Faults and mistakes a new user meets, outside the data converters (tests/data_prep/test_bad_data.py has those): run
identity, fresh logs, atomic final saves, damaged folders, NaN stops, a full disk, and one `error:` line (exit 2,
no traceback) for every user mistake."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_SEED

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny"


def one_error_line(capsys, main, args) -> str:
    """Run a stage through the command-line wrapper: exit code 2, one `error:` line, no traceback."""
    from pipeline.common.config import run_main

    with pytest.raises(SystemExit) as exit_info:
        run_main(main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def ppo_args(tiny_sft, tiny_data, out, *extra) -> list[str]:
    """Two PPO steps of 4 episodes on the labeler (no reward model): about 5 s."""
    return [
        "--config", str(TINY / "ppo.yaml"), "--sft_model_path", str(tiny_sft),
        "--prompts_path", str(tiny_data / "prompts"), "--eval_prompts_path", "null", "--output_dir", str(out),
        "--reward_model_path", "null", "--reward_fn", "data_prep.task:labeler_scores", "--sample_every", "0",
        "--save_merged", "false", "--logging_steps", "10", "--total_episodes", "8",
        "--per_device_train_batch_size", "4", "--num_mini_batches", "1", "--num_ppo_epochs", "1",
        "--response_length", "12", "--save_steps", "1", "--keep_checkpoints", "true", "--seed", str(TEST_SEED),
        *extra,
    ]  # fmt: skip


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoints(out: Path) -> list[str]:
    from pipeline.common.outputs import list_checkpoints

    return [p.name for p in list_checkpoints(out)]


# --- run identity ---------------------------------------------------------------------------------------------


def test_run_identity_refuses_another_run_and_resume_takes_only_its_own(
    tiny_sft, tiny_data, tmp_path, capsys
):
    from pipeline.ppo import main

    out = tmp_path / "ppo"
    main(ppo_args(tiny_sft, tiny_data, out))
    assert logged_steps(out) == [1, 2] and checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((out / "run.json").read_text())["stage"] == "ppo"

    # The same config again: it just works, and starts afresh (new logs, not appended to the first run's).
    main(ppo_args(tiny_sft, tiny_data, out))
    assert logged_steps(out) == [1, 2]

    # Another config into the same folder is refused, naming what differs...
    line = one_error_line(capsys, main, ppo_args(tiny_sft, tiny_data, out, "--learning_rate", "1e-4"))
    assert "another run" in line and "learning_rate" in line and "--overwrite_output_dir" in line
    # ...unless asked: then the earlier run's checkpoints go (a shorter run's own are never pruned for them).
    main(ppo_args(tiny_sft, tiny_data, out, "--learning_rate", "1e-4", "--total_episodes", "4",
                  "--overwrite_output_dir", "true"))  # fmt: skip
    assert logged_steps(out) == [1] and checkpoints(out) == ["checkpoint-1"]

    # A resume that changes what the run is: refused by name, never silently ignored.
    line = one_error_line(capsys, main, ppo_args(tiny_sft, tiny_data, out, "--learning_rate", "3e-4",
                                                  "--total_episodes", "4", "--resume_from_checkpoint", "true"))  # fmt: skip
    assert "cannot resume" in line and "learning_rate: 0.0001 -> 0.0003" in line
    # A resume may lengthen the run; it continues the logs from the checkpoint's step.
    trainer = main(ppo_args(tiny_sft, tiny_data, out, "--learning_rate", "1e-4", "--total_episodes", "8",
                            "--resume_from_checkpoint", "true", "--logging_steps", "1"))  # fmt: skip
    assert trainer.step == 2 and logged_steps(out) == [1, 2]
    # Resumed from an earlier checkpoint of a finished run, the lines logged after it are redone, not doubled.
    trainer = main(ppo_args(tiny_sft, tiny_data, out, "--learning_rate", "1e-4", "--resume_from_checkpoint",
                            str(out.with_name("ppo.checkpoints") / "checkpoint-1")))  # fmt: skip
    assert logged_steps(out) == [1, 2]


def test_sft_refuses_a_folder_of_unknown_outputs_and_resume_across_stages(
    tiny_base, tiny_data, tmp_path, capsys
):
    from pipeline.common.outputs import checkpoints_dir, run_identity, write_run
    from pipeline.sft import CONFIG_TYPES, main

    out = tmp_path / "sft"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's files")
    args = ["--config", str(TINY / "sft.yaml"), "--model_name_or_path", str(tiny_base),
            "--dataset_path", str(tiny_data / "sft"), "--output_dir", str(out)]  # fmt: skip
    line = one_error_line(capsys, main, args)
    assert str(out) in line and "no run.json" in line and "--overwrite_output_dir true" in line
    assert (out / "notes.txt").is_file()  # nothing lost

    # A checkpoint folder recorded by another stage cannot be resumed by this one.
    work = checkpoints_dir(tmp_path / "other")
    (work / "checkpoint-1").mkdir(parents=True)
    from pipeline.common.config import parse_config

    write_run(work, {**run_identity("reward", parse_config(CONFIG_TYPES, args)), "stage": "reward"})
    line = one_error_line(capsys, main, [*args, "--resume_from_checkpoint", str(work / "checkpoint-1")])
    assert "it is a reward checkpoint" in line


def test_identity_holds_no_token_and_ignores_operational_fields(monkeypatch):
    from pipeline.common.config import parse_config
    from pipeline.common.outputs import config_differences, run_identity
    from pipeline.sft import CONFIG_TYPES

    base = ["--config", str(TINY / "sft.yaml")]
    a = run_identity("sft", parse_config(CONFIG_TYPES, [*base, "--hub_token", "hf_secret_value_123"]))
    assert "hf_secret_value_123" not in json.dumps(a) and "hub_token" not in a["config"]
    # The one secret rule of tracker configs and cards (pipeline.common.redact): a key that merely mentions tokens
    # stays, a value holding a token from the environment goes.
    assert "include_num_input_tokens_seen" in a["config"]
    monkeypatch.setenv("HF_TOKEN", "hf_FromTheEnvironment")
    leaked = run_identity("sft", parse_config(CONFIG_TYPES, [*base, "--run_name", "hf_FromTheEnvironment"]))
    assert "run_name" not in leaked["config"] and "hf_FromTheEnvironment" not in json.dumps(leaked)
    b = run_identity(
        "sft", parse_config(CONFIG_TYPES, [*base, "--logging_steps", "3", "--disable_tqdm", "true"])
    )
    assert config_differences(a, b) == []
    c = run_identity("sft", parse_config(CONFIG_TYPES, [*base, "--lora_r", "8"]))
    assert config_differences(a, c) == ["lora_r: 32 -> 8"]


# --- atomic final saves and damaged folders ------------------------------------------------------------------

KILL_DURING_SAVE = """
import os, signal, sys
import pipeline.ppo.final_save as final_save
from pipeline.common.config import run_main
from pipeline.ppo import main

real_save_file = final_save.save_file

def save_then_die(tensors, path, *args, **kwargs):  # the value head: the adapter is already on disk
    real_save_file(tensors, path, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

final_save.save_file = save_then_die
run_main(main, sys.argv[1:])
"""


def test_kill_during_the_final_save_keeps_the_previous_policy(tiny_sft, tiny_data, tmp_path, capsys):
    from pipeline.common.models import load_tokenizer

    out = tmp_path / "ppo"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def killed_run(*extra):
        run = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, *ppo_args(tiny_sft, tiny_data, out, *extra)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == -9, run.stderr[-2000:]

    killed_run()  # the first run dies while saving: no output folder at all, never a partial one
    assert not out.exists() and (tmp_path / "ppo.tmp" / "adapter_config.json").is_file()

    from pipeline.ppo import main

    main(ppo_args(tiny_sft, tiny_data, out))  # a complete run (it clears the dead run's leftovers)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    killed_run("--seed", "1", "--overwrite_output_dir", "true")  # a second, different run dies mid-save
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    load_tokenizer(str(out))  # the previous policy is whole


def test_damaged_folders_name_the_file(tiny_sft, tmp_path, capsys):
    from pipeline.evaluate import main as evaluate
    from pipeline.push import main as push

    run = tmp_path / "run"
    shutil.copytree(tiny_sft, run / "sft")
    shutil.copytree(tiny_sft, run / "ppo")
    (run / "ppo" / "adapter_config.json").write_text(
        ""
    )  # as a kill mid-save left it before saves were atomic
    eval_args = ["--config", str(TINY / "eval.yaml"), "--run_dir", str(run), "--sft_model_path", str(run / "sft"),
                 "--ppo_model_path", str(run / "ppo"), "--reward_model_path", str(run / "sft" / "merged"),
                 "--eval_prompts_path", str(run), "--preference_path", str(run)]  # fmt: skip
    line = one_error_line(capsys, evaluate, eval_args)
    assert "ppo is incomplete: adapter_config.json is empty or not valid JSON" in line
    line = one_error_line(capsys, push, ["--run_dir", str(run), "--stage", "ppo", "--recipe_dir", str(TINY),
                                         "--dry_run", "true"])  # fmt: skip
    assert "adapter_config.json is empty or not valid JSON" in line

    weights = run / "sft" / "merged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    line = one_error_line(capsys, push, ["--run_dir", str(run), "--stage", "sft", "--weights", "merged",
                                         "--recipe_dir", str(TINY), "--dry_run", "true"])  # fmt: skip
    assert "model.safetensors is truncated" in line


# --- non-finite numbers ----------------------------------------------------------------------------------------


def test_reward_stage_stops_on_nan_before_saving(tiny_base, tmp_path, capsys):
    """NaN margins (data that did not come through data_prep) make the loss NaN: a clear stop, nothing saved."""
    from datasets import Dataset, DatasetDict

    from pipeline.reward import main

    rows = [{"prompt": f"Question {i}?", "chosen": " Yes, gladly.", "rejected": " No.", "margin": float("nan")}
            for i in range(16)]  # fmt: skip
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "pairs"))
    out = tmp_path / "reward"
    line = one_error_line(capsys, main, [
        "--config", str(TINY / "reward.yaml"), "--model_name_or_path", str(tiny_base),
        "--dataset_path", str(tmp_path / "pairs"), "--eval_split", "", "--output_dir", str(out),
        "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "8", "--disable_tqdm", "true",
        "--use_margin", "true",  # the recipe trains without the margin; this test needs it read
    ])  # fmt: skip
    assert "NaN/Inf in the training" in line and "no checkpoint was saved yet" in line
    assert not out.exists() and not out.with_name("reward.tmp").exists()


def nan_reward(prompts, responses):
    return [float("nan")] * len(prompts)


def test_ppo_nan_stop_is_one_line_with_the_right_advice(tiny_sft, tiny_data, tmp_path, capsys):
    from pipeline.ppo import main

    args = ppo_args(tiny_sft, tiny_data, tmp_path / "nan", "--reward_fn", f"{__name__}:nan_reward")
    line = one_error_line(capsys, main, args)
    assert "NaN/Inf in the reward at step 1" in line and "no checkpoint was saved yet" in line
    assert not (tmp_path / "nan").exists()


def raising_reward(prompts, responses):
    return {}["no such key"]


CALLS = []


def reward_that_fails_at_its_second_call(prompts, responses):
    CALLS.append(len(prompts))
    if len(CALLS) == 2:
        raise ValueError("the grader is down")
    return [0.0] * len(prompts)


def test_a_reward_fn_that_raises_is_one_line_naming_it_and_where(tiny_sft, tiny_data, tmp_path, capsys):
    from pipeline.ppo import main

    args = ppo_args(tiny_sft, tiny_data, tmp_path / "raise", "--reward_fn", f"{__name__}:raising_reward")
    line = one_error_line(capsys, main, args)
    assert f"reward_fn {__name__}:raising_reward raised KeyError: 'no such key' (at {__file__}:" in line
    assert line.endswith("At step 1; no checkpoint was saved before it.")
    assert not (tmp_path / "raise").exists()

    # Failing at step 2, after the checkpoint of step 1 (save_steps 1): the line says where to resume from.
    CALLS.clear()
    out = tmp_path / "later"
    line = one_error_line(
        capsys,
        main,
        ppo_args(tiny_sft, tiny_data, out, "--reward_fn", f"{__name__}:reward_that_fails_at_its_second_call"),
    )
    assert "raised ValueError: the grader is down" in line
    assert line.endswith(
        f"At step 2; the last checkpoint is {out.with_name('later.checkpoints') / 'checkpoint-1'}: once fixed, "
        "resume with --resume_from_checkpoint latest."
    )

    # The gold-curve function (eval_reward_fn, on the held-out prompts at step 1) is a user function like any.
    gold = ppo_args(tiny_sft, tiny_data, tmp_path / "gold", "--eval_prompts_path", str(tiny_data / "eval_prompts"),
                    "--eval_reward_fn", f"{__name__}:raising_reward", "--eval_every", "1")  # fmt: skip
    line = one_error_line(capsys, main, gold)
    assert (
        f"eval_reward_fn {__name__}:raising_reward raised KeyError: 'no such key'" in line
        and "At step 1" in line
    )


def test_a_reward_fn_that_raises_in_grpo_is_one_line_saying_what_can_resume(
    tiny_sft, tiny_data, tmp_path, capsys
):
    """The same for a Trainer stage: TRL's GRPOTrainer calls the user's function inside `trainer.train()`."""
    from pipeline.grpo import main
    from tests.test_alternatives import online_args

    args = online_args("grpo", tiny_sft, tiny_data, tmp_path / "grpo", "--reward_model_path", "null",
                       "--reward_fn", f"{__name__}:raising_reward", "--max_steps", "2")  # fmt: skip
    line = one_error_line(capsys, main, args)
    assert f"reward_fn {__name__}:raising_reward raised KeyError: 'no such key'" in line
    assert line.endswith("At step 1; no checkpoint was saved before it.")
    assert not (tmp_path / "grpo").exists()


# --- a full disk -----------------------------------------------------------------------------------------------


def in_small_tmpfs(tmp_path, script: str) -> subprocess.CompletedProcess:
    """Run a shell script with a 1 MiB tmpfs mounted at tmp_path/small-disk (a user namespace, no root needed)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mount = f"mount -t tmpfs -o size=1m tmpfs {mount_point}"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (unshare: {probe.stderr.decode()[-200:]})")
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", f"{mount} && {script}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip


WRITE_TOO_MUCH = """
import sys, torch
from safetensors.torch import save_file
from pipeline.common.config import run_main

big = {"w": torch.zeros(1 << 19)}  # 2 MiB
def write(args):
    path = sys.argv[2]
    if sys.argv[1] == "torch":
        torch.save(big, path)
    elif sys.argv[1] == "safetensors":
        save_file(big, path)
    else:
        with open(path, "w") as f:
            f.write("x" * (2 << 20))
run_main(write, [])
"""


def test_a_full_disk_is_named_as_such(tmp_path):
    """The real errors of each writer on a full disk (PyTorch says only `enforce fail at inline_container.cc`,
    safetensors `I/O error`, Python ENOSPC): each becomes one line that says the disk is full."""
    disk = tmp_path / "small-disk"
    script = " ; ".join(
        f"{shlex.join([sys.executable, '-c', WRITE_TOO_MUCH, writer, str(disk / writer)])}; echo {writer}=$?"
        for writer in ("torch", "safetensors", "python")
    )
    run = in_small_tmpfs(tmp_path, f"cd {REPO} && {script}")
    assert run.stdout.split() == ["torch=2", "safetensors=2", "python=2"], run.stdout + run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all("the disk is full" in e for e in errors) and "Traceback" not in run.stderr


def test_sft_on_a_full_disk_says_so_and_publishes_nothing(tiny_base, tiny_data, tmp_path):
    disk = tmp_path / "small-disk"
    stage = [sys.executable, "-m", "pipeline.sft", "--config", str(TINY / "sft.yaml"),
             "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "sft"),
             "--output_dir", str(disk / "sft"), "--max_steps", "2", "--save_steps", "1", "--eval_split", "",
             "--disable_tqdm", "true"]  # fmt: skip
    run = in_small_tmpfs(tmp_path, f"{shlex.join(stage)}; echo rc=$?; ls {disk}")
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert "rc=2" in run.stdout and len(errors) == 1 and "the disk is full" in errors[0], run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert "sft" not in run.stdout.split("rc=2", 1)[1].split()  # no output folder was published


# --- one error line for ordinary mistakes ----------------------------------------------------------------------


def test_ordinary_mistakes_are_one_line(tiny_base, tiny_data, tmp_path, capsys):
    from pipeline.ppo import main as ppo
    from pipeline.sft import main as sft

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert "is empty" in one_error_line(capsys, sft, ["--config", str(empty)])

    args = ["--config", str(TINY / "sft.yaml"), "--model_name_or_path", str(tiny_base),
            "--dataset_path", str(tiny_data / "sft")]  # fmt: skip
    line = one_error_line(capsys, sft, [*args, "--lerning_rate", "1e-3"])
    assert "unknown command-line option --lerning_rate (did you mean --learning_rate?)" in line
    line = one_error_line(capsys, sft, [*args, "--learning_rate", "fast"])
    assert "invalid float value: 'fast'" in line

    listed = tmp_path / "list.yaml"
    listed.write_text(
        (TINY / "sft.yaml").read_text().replace("learning_rate: 2.0e-3", "learning_rate: [1, 2]")
    )
    line = one_error_line(capsys, sft, ["--config", str(listed)])
    assert "learning_rate must be a float, got list [1, 2]" in line

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_error_line(capsys, sft, [*args, "--output_dir", str(blocker / "sft")])
    assert "cannot write" in line and str(blocker) in line

    line = one_error_line(capsys, ppo, ppo_args(tmp_path / "no-such-sft", tiny_data, tmp_path / "ppo"))
    assert "sft_model_path" in line and "does not exist" in line


def test_help_exits_zero():
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.sft", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert run.returncode == 0 and "--learning_rate" in run.stdout and "error" not in run.stderr


def test_two_processes_print_the_error_once_and_both_exit(tiny_data, tmp_path):
    """Under accelerate launch, rank 0 prints the one line; every rank exits (none hangs at a collective)."""
    from tests.conftest import ACCELERATE

    command = [str(ACCELERATE), "launch", "--config_file", str(REPO / "recipes/accelerate/multi_cpu.yaml"),
               "--num_processes", "2", "-m", "pipeline.ppo",
               *ppo_args(tmp_path / "no-such-sft", tiny_data, tmp_path / "ppo")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode != 0 and len(errors) == 1 and "does not exist" in errors[0], run.stderr[-3000:]


# --- a recipe with a key twice, a data set with no rows --------------------------------------------------------


def test_a_recipe_with_a_key_twice_is_refused_by_name(tmp_path, capsys):
    """PyYAML keeps the last of two equal keys in silence; a stage refuses the file, naming the key, both lines
    and the file, before anything loads. The model card's reading of a recipe refuses it too."""
    from pipeline.analysis.model_card import read_hyperparameters
    from pipeline.common.config import ConfigError, load_yaml_text
    from pipeline.sft import main

    recipe = tmp_path / "sft.yaml"
    text = (TINY / "sft.yaml").read_text()
    recipe.write_text(text + "\nlearning_rate: 1.0e-4\n")
    first = 1 + next(i for i, line in enumerate(text.splitlines()) if line.startswith("learning_rate:"))
    last = len(recipe.read_text().splitlines())
    line = one_error_line(capsys, main, ["--config", str(recipe)])
    assert line == (f"error: Config file {recipe}: key 'learning_rate' appears twice (lines {first} and {last}); "
                    "keep one.")  # fmt: skip
    with pytest.raises(ConfigError, match="key 'learning_rate' appears twice"):
        read_hyperparameters(recipe)
    with pytest.raises(ConfigError, match=r"^T: key 'a' appears twice \(lines 1 and 1\); keep one\.$"):
        load_yaml_text("{a: 1, a: 2}", "T")  # twice on one line
    assert load_yaml_text("a: 1\nb: {a: 2}\n", "T") == {
        "a": 1,
        "b": {"a": 2},
    }  # one key in two mappings is fine


def test_a_data_set_with_no_rows_is_refused_in_one_line(tmp_path):
    """An empty set saved by `datasets` does not load back (a bare IndexError from inside the library), and an
    empty held-out split would fail later; every loader names the set and the fix instead."""
    from datasets import Dataset, DatasetDict

    from pipeline.common.config import UserError
    from pipeline.common.data import load_demonstrations, load_pairs, load_prompts

    Dataset.from_dict({"prompt": []}).save_to_disk(str(tmp_path / "prompts"))
    with pytest.raises(UserError, match=r"^Prompt data set .*prompts holds an empty data set\. Rebuild it"):
        load_prompts(str(tmp_path / "prompts"), "prompt")
    pair = {"prompt": ["p"], "chosen": [" a"], "rejected": [" b"]}
    DatasetDict(train=Dataset.from_dict(pair), test=Dataset.from_dict(pair).select([])).save_to_disk(
        str(tmp_path / "pairs")
    )
    with pytest.raises(
        UserError, match=r"^Preference data .*pairs(: its 'test' split holds no rows| holds an empty)"
    ):
        load_pairs(str(tmp_path / "pairs"), "train", "test")
    demo = {"prompt": ["p"], "completion": [" a"]}
    DatasetDict(train=Dataset.from_dict(demo).select([]), test=Dataset.from_dict(demo)).save_to_disk(
        str(tmp_path / "sft")
    )
    with pytest.raises(
        UserError, match=r"^SFT data .*sft(: its 'train' split holds no rows| holds an empty)"
    ):
        load_demonstrations(str(tmp_path / "sft"), "train", "test")
