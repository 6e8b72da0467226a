"""Experiment trackers in their offline/local modes, read back with their own readers.

TensorBoard: its EventAccumulator. Trackio: its local SQLite store (TRACKIO_DIR in tmp). W&B: WANDB_MODE=offline, the
run's `.wandb` transaction log decoded with wandb's own protobuf records (wandb 0.31 no longer ships a Python reader
of that file). One tiny PPO run logs to all three; a second resumes it from its checkpoint; evaluation then adds its
figures to the same tracker runs. Nothing here reaches the network.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest

from pipeline.common.config import ConfigError, run_main
from tests.ppo.test_ppo_train import ppo_args, read_metrics

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny"
ALL = "tensorboard,trackio,wandb"
# 3 PPO steps of 4 episodes, a checkpoint at step 2, sample tables at steps 2 and 3.
TINY = ["--total_episodes", "12", "--per_device_train_batch_size", "4", "--num_mini_batches", "1",
        "--num_ppo_epochs", "1", "--response_length", "8", "--sample_every", "2", "--num_samples", "2",
        "--save_steps", "2", "--keep_checkpoints", "true", "--report_to", ALL, "--project", "rlhf-test"]  # fmt: skip
SECRETS = {"HF_TOKEN": "hf_EnvSecret0123456789", "WANDB_API_KEY": "0123456789abcdef" * 2 + "feedbeef" * 1}
CLI_TOKEN = "hf_CliSecret0123456789"


@pytest.fixture(scope="module")
def trackio_dir(tmp_path_factory):
    """Trackio's local store in tmp. Trackio reads TRACKIO_DIR when imported: patched too if it already was."""
    path = tmp_path_factory.mktemp("trackio")
    patch = pytest.MonkeyPatch()
    patch.setenv("TRACKIO_DIR", str(path))
    for name, module in list(sys.modules.items()):
        if name == "trackio" or name.startswith("trackio."):
            for attr, value in (("TRACKIO_DIR", path), ("MEDIA_DIR", path / "media")):
                if hasattr(module, attr):
                    patch.setattr(module, attr, value)
    yield path
    patch.undo()


@pytest.fixture
def offline(tmp_path, monkeypatch, trackio_dir):
    """Every tracker local: W&B offline with its own folders in tmp, no tracker folder taken from the user's env."""
    for var in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    return trackio_dir


# --- readers ---------------------------------------------------------------------------------------------------


def tensorboard_events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    return events


def tb_scalars(events) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def tb_text(events, tag: str) -> list[tuple[int, str]]:
    from tensorboard.util import tensor_util

    return [
        (e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
        for e in events.Tensors(f"{tag}/text_summary")
    ]


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` file: a 7-byte W&B header, then LevelDB-log framed records."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", path
    pos, chunk = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += block - pos % block
            continue
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def wandb_runs(folder: Path) -> list[dict]:
    """Each offline run under `folder/wandb`, in order: its id, history rows and summary updates."""
    runs = []
    for run_dir in sorted((folder / "wandb").glob("offline-run-*")):
        run = {"id": None, "history": [], "summary": {}, "config": {}}
        for record in wandb_records(next(run_dir.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run["id"] = record.run.run_id
                run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                run["history"].append(row)
            elif kind == "summary":
                run["summary"].update(
                    {i.key: json.loads(i.value_json) for i in record.summary.update if i.key}
                )
        runs.append(run)
    return runs


def trackio_logs(project: str, name: str) -> list[dict]:
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage.get_logs(project, name)


def assert_ppo_metrics(
    series: dict[str, list[tuple[int, float]]], expected: list[dict], tracker: str
) -> None:
    """Every metric of metrics.jsonl (episode included) arrived at its PPO step with its value."""
    for key in sorted(
        {key for row in expected for key in row} - {"step"}
    ):  # gold evaluations: some steps only
        want = [(row["step"], row[key]) for row in expected if key in row]
        got = series.get(key)
        assert got is not None, f"{tracker}: {key} missing"
        assert [s for s, _ in got] == [s for s, _ in want], f"{tracker}: {key} steps {got}"
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-5), f"{tracker}: {key}"


def by_step(rows: list[dict], step_key: str) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, int | float) and not key.startswith("_"):
                series.setdefault(key, []).append((row[step_key], value))
    return series


# --- the PPO stage, resumed, then evaluation ---------------------------------------------------------------------


def test_ppo_resume_and_eval_log_to_tensorboard_trackio_and_wandb(
    tiny_sft, tiny_data, tmp_path, offline, monkeypatch
):
    from pipeline.ppo import main

    for var, secret in SECRETS.items():
        monkeypatch.setenv(var, secret)
    monkeypatch.setattr(sys, "argv", ["pipeline.ppo", "--hub_token", CLI_TOKEN])  # what W&B copies
    run = tmp_path / "run"
    out = run / "ppo"
    main(ppo_args(tiny_sft, tiny_data, out, *TINY))  # PPO refuses --hub_token: it never pushes
    first = read_metrics(out)
    assert [m["step"] for m in first] == [1, 2, 3]
    ident = json.loads((out / "tracking.json").read_text())
    assert ident["name"].startswith("run-ppo-") and ident["step"] == 3

    # TensorBoard: every metric at its step, the sample table as text at steps 2 and 3.
    tb_dir = run / "tensorboard" / ident["name"]
    assert Path(ident["tensorboard_dir"]) == tb_dir
    events = tensorboard_events(tb_dir)
    assert_ppo_metrics(tb_scalars(events), first, "tensorboard")
    tables = tb_text(events, "samples")
    assert [s for s, _ in tables] == [2, 3] and "| step | prompt | response | score |" in tables[0][1]

    # Trackio: the same, in its local store; the table as a trackio Table.
    logs = trackio_logs("rlhf-test", ident["name"])
    assert_ppo_metrics(by_step([r for r in logs if "episode" in r], "step"), first, "trackio")
    assert [r["step"] for r in logs if "samples" in r] == [2, 3]
    assert all(r["samples"]["_type"] == "trackio.table" for r in logs if "samples" in r)

    # W&B offline: the same in the run's history; the table as a wandb.Table.
    (wandb_run,) = wandb_runs(run)
    assert wandb_run["id"] == ident["wandb_id"] and Path(ident["wandb_sync_dir"]).parent == run / "wandb"
    history = wandb_run["history"]
    assert_ppo_metrics(by_step([r for r in history if "episode" in r], "_step"), first, "wandb")
    assert [r["_step"] for r in history if "samples/_type" in r] == [2, 3]
    assert {r["samples/_type"] for r in history if "samples/_type" in r} == {"table-file"}
    assert wandb_run["config"]["kl_coef"] == 0.04 and "hub_token" not in wandb_run["config"]  # the recipe's

    # Resume from the step-2 checkpoint, as after a crash: the same tracker runs continue at step 3.
    main(ppo_args(tiny_sft, tiny_data, out, *TINY, "--resume_from_checkpoint", "latest"))
    resumed = read_metrics(out)[2:]  # the logs continue from the checkpoint: step 3 is redone, not repeated
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]
    assert json.loads((out / "tracking.json").read_text())["name"] == ident["name"]
    scalars = tb_scalars(tensorboard_events(tb_dir))  # the first run's step 3 is purged: one point per step
    assert [s for s, _ in scalars["episode"]] == [1, 2, 3]
    assert scalars["objective/scores"][-1][1] == pytest.approx(resumed[0]["objective/scores"], rel=1e-5)
    from trackio.sqlite_storage import SQLiteStorage

    assert [r["name"] for r in SQLiteStorage.get_run_records("rlhf-test")] == [ident["name"]]
    last = [r for r in trackio_logs("rlhf-test", ident["name"]) if "episode" in r][-1]
    assert last["step"] == 3 and last["objective/scores"] == pytest.approx(resumed[0]["objective/scores"])
    # W&B cannot resume offline (wandb/wandb#4624): a second offline folder under the same run id, from step 3.
    runs = wandb_runs(run)
    assert [r["id"] for r in runs] == [ident["wandb_id"]] * 2
    assert [r["_step"] for r in runs[1]["history"] if "episode" in r] == [3]

    # Evaluation adds its headline, plots and sample table to the PPO run, at its last step.
    result = write_eval_outputs(run, out)
    events = tensorboard_events(tb_dir)
    accuracy = tb_scalars(events)["eval/reward_model_accuracy"]
    assert accuracy == [(3, pytest.approx(result["reward_model_accuracy"]))]
    assert {"eval/reward_distributions", "eval/ppo_training"} <= set(events.Tags()["images"])
    assert [s for s, _ in tb_text(events, "eval/samples")] == [3]
    eval_row = next(r for r in trackio_logs("rlhf-test", ident["name"]) if "eval/reward_model_accuracy" in r)
    ppo_length = result["policies"]["ppo"]["response_length_mean"]
    assert eval_row["step"] == 3 and eval_row["eval/ppo/response_length_mean"] == pytest.approx(ppo_length)
    assert eval_row["eval/reward_distributions"]["_type"] == "trackio.image"
    runs = wandb_runs(run)
    assert [r["id"] for r in runs] == [ident["wandb_id"]] * 3
    assert runs[2]["summary"]["eval/ppo_labeler_win_rate"] == pytest.approx(result["ppo_labeler_win_rate"])
    assert any("eval/reward_distributions/_type" in r for r in runs[2]["history"])
    report = (run / "report.md").read_text()
    assert f"tensorboard --logdir {run / 'tensorboard'}" in report
    assert "trackio show --project rlhf-test" in report and f"wandb sync {run / 'wandb'}" in report

    # No token reached any tracker: not the environment's, not the command line's.
    for path in [*tmp_path.rglob("*"), *offline.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            for secret in (*SECRETS.values(), CLI_TOKEN):
                assert secret.encode() not in data, f"{secret} in {path}"


def write_eval_outputs(run: Path, ppo_dir: Path) -> dict:
    """The evaluation's output step (eval.json, report, trackers) on made-up answers: no model needed."""
    from pipeline.evaluate import EvalArguments, summarize, write_outputs

    args = EvalArguments(run_dir=str(run), ppo_model_path=str(ppo_dir), labeler="data_prep.task:labeler_scores",
                         report_to=ALL, num_report_samples=2)  # fmt: skip
    records = [
        {"prompt": f"Human: question {i}?", "sft_response": "no", "ppo_response": "yes, because " * (i % 3),
         "sft_ended": True, "ppo_ended": i % 2 == 0, "sft_length": 2, "ppo_length": 4 + i % 4, "ppo_log_ratio": 0.1 * i,
         "sft_reward_model_score": 0.1 * i, "ppo_reward_model_score": 0.2 * i, "sft_labeler_score": float(i % 2),
         "ppo_labeler_score": float(i % 3)}
        for i in range(6)
    ]  # fmt: skip
    result = summarize(records, [0.5, -0.1, 0.3], args, 1, chosen=[0.4, 0.2, 0.9])
    write_outputs(args, result, records, ["tensorboard", "trackio", "wandb"])
    return result


# --- the Trainer stages ------------------------------------------------------------------------------------------


def test_sft_logs_at_global_steps_and_a_resumed_run_continues_the_same_tensorboard_run(
    tiny_base, tiny_data, tmp_path, offline
):
    from datasets import DatasetDict, load_from_disk

    from pipeline.sft import main

    small = tmp_path / "sft-data"  # 4 steps of 2 short rows: the Trainer path, not the learning, is tested
    DatasetDict(train=load_from_disk(str(tiny_data / "sft"))["train"].select(range(16))).save_to_disk(
        str(small)
    )
    out = tmp_path / "run" / "sft"
    argv = ["--config", str(RECIPE / "sft.yaml"), "--model_name_or_path", str(tiny_base),
            "--dataset_path", str(small), "--output_dir", str(out), "--eval_split", "",
            "--disable_tqdm", "true", "--merge_adapter", "false", "--per_device_train_batch_size", "2",
            "--max_length", "32", "--logging_steps", "1", "--save_steps", "2", "--keep_checkpoints", "true",
            "--report_to", "tensorboard"]  # fmt: skip
    main([*argv, "--max_steps", "2"])
    main([*argv, "--max_steps", "4", "--resume_from_checkpoint", "true"])
    (tb_dir,) = (tmp_path / "run" / "tensorboard").iterdir()  # one run, continued
    assert tb_dir.name.startswith("run-sft-")
    scalars = tb_scalars(tensorboard_events(tb_dir))
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert [s for s, _ in scalars["train/learning_rate"]] == [1, 2, 3, 4]


# --- errors and the small rules ----------------------------------------------------------------------------------

STAGES = {
    "base": ("pipeline.base", "base.yaml"),
    "sft": ("pipeline.sft", "sft.yaml"),
    "reward": ("pipeline.reward", "reward.yaml"),
    "ppo": ("pipeline.ppo", "ppo.yaml"),
    "eval": ("pipeline.evaluate", "eval.yaml"),
}


@pytest.mark.parametrize("tracker", ["tensorboard", "trackio", "wandb"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_missing_tracker_package_is_one_line_naming_the_extra(stage, tracker, monkeypatch, capsys):
    module_name, config = STAGES[stage]
    original = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a, **k: None if name == tracker else original(name, *a, **k),
    )
    main = importlib.import_module(module_name).main
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--config", str(RECIPE / config), "--report_to", tracker])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f'error: report_to {tracker}: the {tracker} package is not installed; install the trackers: pip install -e ".[trackers]"'
    )


def test_report_to_values_and_what_the_tracked_config_keeps(monkeypatch):
    from pipeline.common import tracking
    from pipeline.ppo.config import PPOConfig

    assert tracking.trackers("none") == [] and tracking.trackers(None) == []
    assert tracking.trackers(["tensorboard,wandb", "tensorboard"]) == ["tensorboard", "wandb"]
    assert tracking.trackers("all") == list(tracking.SUPPORTED)
    assert tracking.trackers(["kubeflow"]) == []  # transformers' own, left to it
    with pytest.raises(ConfigError, match="report_to 'mlflow' is not supported"):
        tracking.trackers("mlflow")
    monkeypatch.setenv("HF_TOKEN", "hf_FromTheEnvironment")
    args = PPOConfig(
        reward_model_path=None, reward_fn="a:b", hub_token="hf_Typed", run_name="hf_FromTheEnvironment"
    )
    config = tracking.public_config(args)
    assert config["kl_coef"] == 0.05 and config["report_to"] == "[]"
    assert "hub_token" not in config and "run_name" not in config  # a value holding an env secret goes too
    assert not tracking.start(["tensorboard"], "ppo", Path("unused"), args, config, main=False).backends
