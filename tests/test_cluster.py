"""Runs on a shared machine under a scheduler. One writer per output folder (pipeline/common/lock.py): a second run
into a folder that a live run is writing stops in one line and leaves the first run's work whole; the lock of a run
that died is taken over. A scheduler's signal (pipeline/common/preemption.py): the stage checkpoints the step it is
in, publishes nothing, exits with STOPPED_EXIT_CODE, and a resume ends on the weights of a run never stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.common.config import STOPPED_EXIT_CODE, UserError
from pipeline.common.lock import OutputLock, lock_path, one_writer
from pipeline.common.outputs import checkpoints_dir, list_checkpoints
from tests.conftest import ACCELERATE, TEST_SEED
from tests.test_fault_cases import REPO, TINY, ppo_args

# --- the lock on its own (no model) -----------------------------------------------------------------------------


def write_lock(folder: Path, age_s: float = 0.0, **record) -> Path:
    path = lock_path(folder)
    record = {"stage": "ppo", "host": socket.gethostname(), "pid": os.getpid(), "started": "2026-12-07T10:00:00+00:00",
              **record}  # fmt: skip
    path.write_text(json.dumps(record))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_a_live_holder_refuses_by_name_and_the_lock_goes_with_the_run(tmp_path):
    out = tmp_path / "ppo"
    with one_writer(out, "sft"):
        held = json.loads(lock_path(out).read_text())
        assert held["pid"] == os.getpid() and held["stage"] == "sft" and held["host"] == socket.gethostname()
        with pytest.raises(UserError) as error, one_writer(out, "ppo"):
            pass
        assert f"{out} is being written by another run: sft (pid {os.getpid()} on" in str(error.value)
    assert not lock_path(out).exists()
    with pytest.raises(RuntimeError), one_writer(out, "ppo"):  # a run that fails lets go of the folder too
        raise RuntimeError("boom")
    assert not lock_path(out).exists()


def test_a_holder_on_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path, monkeypatch, capsys):
    out = tmp_path / "reward"
    monkeypatch.setenv("RLHF_LOCK_STALE_S", "120")
    write_lock(
        out, age_s=60, host="node-7", pid=1
    )  # its heartbeat is recent: alive, whatever its PID means here
    with pytest.raises(UserError, match="pid 1 on node-7"), one_writer(out, "reward"):
        pass
    write_lock(out, age_s=600, host="node-7", pid=1)
    with one_writer(out, "reward"):
        assert json.loads(lock_path(out).read_text())["host"] == socket.gethostname()
    assert "no heartbeat from node-7 for 600 s (RLHF_LOCK_STALE_S=120)" in capsys.readouterr().out
    monkeypatch.setenv("RLHF_LOCK_STALE_S", "five minutes")
    write_lock(out, age_s=600, host="node-7", pid=1)
    with (
        pytest.raises(UserError, match="RLHF_LOCK_STALE_S='five minutes' is not a number"),
        one_writer(out, "x"),
    ):
        pass


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path, capsys):
    out = tmp_path / "sft"
    # our own PID, but not our process: its kernel start time differs (the PID was reused after the run died)
    write_lock(out, process_start="1")
    with one_writer(out, "sft"):
        pass
    assert f"its process {os.getpid()} on this host is gone" in capsys.readouterr().out


def test_release_leaves_a_lock_that_another_run_took_over(tmp_path):
    out = tmp_path / "dpo"
    lock = OutputLock(out, "dpo")
    lock.acquire()
    write_lock(out, host="node-2", pid=99)  # we froze past the limit and node-2 took the folder over
    lock.release()
    assert json.loads(lock_path(out).read_text())["host"] == "node-2"


# --- real stages ------------------------------------------------------------------------------------------------


def start_and_wait_for_its_lock(command: list[str], out: Path) -> subprocess.Popen:
    run = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )  # little output
    deadline = time.monotonic() + 180
    while not lock_path(out).exists():
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the first run never took its lock"
        time.sleep(0.05)
    return run


@pytest.mark.multiprocess
def test_a_second_run_into_a_folder_being_written_stops_and_the_first_finishes_whole(
    tiny_sft, tiny_data, tmp_path
):
    """A `make ppo` started twice: the second, under accelerate launch with 2 processes, stops on every rank with
    one line naming the first; the first, frozen meanwhile (SIGSTOP: surely alive), then finishes whole."""
    out = tmp_path / "ppo"
    args = ppo_args(tiny_sft, tiny_data, out)
    first = start_and_wait_for_its_lock([sys.executable, "-m", "pipeline.ppo", *args], out)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = subprocess.run(
            [str(ACCELERATE), "launch", "--config_file", str(REPO / "recipes/accelerate/multi_cpu.yaml"),
             "--num_processes", "2", "-m", "pipeline.ppo", *args],
            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        os.kill(first.pid, signal.SIGCONT)
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert second.returncode != 0 and len(errors) == 1, second.stderr[-3000:]
    assert f"is being written by another run: ppo (pid {first.pid} on {socket.gethostname()}" in errors[0]
    # (the launcher then prints its own traceback of failed children: accelerate's, not ours)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["stage"] == "ppo" and (out / "adapter_model.safetensors").is_file()
    assert not lock_path(out).exists()


def test_the_lock_of_a_killed_run_is_taken_over(tiny_base, tiny_data, tmp_path):
    """A Trainer stage killed (SIGKILL: no `finally` runs) leaves its lock; the next run into the folder says it
    takes it over and finishes."""
    out = tmp_path / "sft"
    command = [sys.executable, "-m", "pipeline.sft", "--config", str(TINY / "sft.yaml"),
               "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "sft"),
               "--output_dir", str(out), "--max_steps", "2", "--eval_split", "", "--disable_tqdm", "true"]  # fmt: skip
    killed = start_and_wait_for_its_lock(command, out)
    killed.kill()
    killed.wait()
    assert lock_path(out).exists() and not (out / "run.json").exists()
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (
        f"Taking over the lock {lock_path(out)} of a run that died (its process {killed.pid}" in rerun.stdout
    )
    assert json.loads((out / "run.json").read_text())["stage"] == "sft" and not lock_path(out).exists()


# --- a scheduler's signal ---------------------------------------------------------------------------------------


def test_auto_resumes_from_the_newest_checkpoint_or_starts_afresh(tmp_path):
    from pipeline.common.outputs import resolve_resume

    out = tmp_path / "ppo"
    assert resolve_resume("auto", out) is None  # a job's first start
    for step in (3, 12):
        (checkpoints_dir(out) / f"checkpoint-{step}").mkdir(parents=True)
    assert resolve_resume("auto", out) == checkpoints_dir(out) / "checkpoint-12"  # its requeue


def stop_when_it_prints(
    command: list[str], marker: str, tmp_path: Path, *signals: int
) -> tuple[int, str, str]:
    """Run `command`, send `signals` once a stdout line contains `marker`; its exit code, stdout and stderr."""
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err:
        run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
        seen = []
        for line in run.stdout:
            seen.append(line)
            if marker in line:
                for sig in signals:
                    run.send_signal(sig)
                break
        seen.append(run.stdout.read())
        run.wait(timeout=300)
    return run.returncode, "".join(seen), err_file.read_text()


def stopped_line(code: int, out: str, err: str, signal_name: str = "SIGTERM") -> int:
    """The one line of a stage stopped by a signal; the step it names."""
    assert code == STOPPED_EXIT_CODE, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith(f"stopped by {signal_name} at step ")]
    assert (
        len(lines) == 1 and "checkpoint saved" in lines[0] and "--resume_from_checkpoint latest" in lines[0]
    ), out
    assert "Traceback" not in err
    return int(lines[0].split("at step ")[1].split(";")[0])


def test_ppo_stopped_by_sigterm_checkpoints_its_step_and_resumes_to_the_same_weights(
    tiny_sft, tiny_data, tmp_path
):
    from pipeline.ppo import main
    from tests.ppo.test_ppo_train import SMALL, assert_same_final_weights
    from tests.ppo.test_ppo_train import ppo_args as train_args

    out = tmp_path / "stopped"
    args = train_args(tiny_sft, tiny_data, out, *SMALL)  # 4 steps of 8 episodes, no periodic save
    # A second SIGTERM right after the first changes nothing: the step ends, the one checkpoint is written.
    code, stdout, stderr = stop_when_it_prints(
        [sys.executable, "-m", "pipeline.ppo", *args], "step 1/4", tmp_path, signal.SIGTERM, signal.SIGTERM
    )
    step = stopped_line(code, stdout, stderr)
    assert 1 <= step < 4 and [p.name for p in list_checkpoints(out)] == [f"checkpoint-{step}"]
    assert not out.exists() and not lock_path(out).exists()  # nothing published, the folder let go

    main([*args, "--resume_from_checkpoint", "auto"])  # what a requeued job runs
    main(train_args(tiny_sft, tiny_data, tmp_path / "full", *SMALL))
    assert_same_final_weights(tmp_path / "full", out)
    assert not checkpoints_dir(out).exists()


def test_sft_stopped_by_sigint_checkpoints_its_step_and_resumes_to_the_same_weights(
    tiny_base, tiny_data, tmp_path
):
    from safetensors.torch import load_file

    def sft(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "pipeline.sft", "--config", str(TINY / "sft.yaml"),
                "--model_name_or_path", str(tiny_base), "--dataset_path", str(tiny_data / "sft"),
                "--output_dir", str(out), "--max_steps", "8", "--logging_steps", "1", "--save_strategy", "no",
                "--eval_split", "", "--disable_tqdm", "true", "--seed", str(TEST_SEED), *extra]  # fmt: skip

    out = tmp_path / "stopped"
    code, stdout, stderr = stop_when_it_prints(sft(out), "'loss'", tmp_path, signal.SIGINT)  # Ctrl-C
    step = stopped_line(code, stdout, stderr, "SIGINT")
    assert 1 <= step < 8 and [p.name for p in list_checkpoints(out)] == [f"checkpoint-{step}"]
    assert not out.exists() and not lock_path(out).exists()

    for command in (sft(out, "--resume_from_checkpoint", "latest"), sft(tmp_path / "full")):
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    resumed = load_file(out / "adapter_model.safetensors")
    full = load_file(tmp_path / "full" / "adapter_model.safetensors")
    assert resumed.keys() == full.keys()
    for key in full:
        assert torch.equal(resumed[key], full[key]), key


@pytest.mark.multiprocess
def test_ppo_under_two_processes_stops_together_on_the_schedulers_sigterm_and_resumes(
    tiny_sft, tiny_data, tmp_path
):
    """SIGTERM to every process of the job (as Slurm sends it; the launcher forwards it too): both ranks finish
    the same step, one checkpoint is written, and a resumed run ends on the weights of a run never stopped."""
    from tests.ppo.test_ppo_train import SMALL, assert_same_final_weights
    from tests.ppo.test_ppo_train import ppo_args as train_args

    def launch(out: Path, *extra: str) -> list[str]:
        return [str(ACCELERATE), "launch", "--config_file", str(REPO / "recipes/accelerate/multi_cpu.yaml"),
                "--num_processes", "2", "-m", "pipeline.ppo",
                *train_args(tiny_sft, tiny_data, out, *SMALL, "--total_episodes", "64", *extra)]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stopped"
    with open(tmp_path / "stderr.txt", "w") as err:
        run = subprocess.Popen(launch(out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                               start_new_session=True)  # fmt: skip
        seen = []
        for line in run.stdout:
            seen.append(line)
            if line.startswith("step 1/4"):  # 2 processes x 8 episodes: 4 steps of 16
                os.killpg(run.pid, signal.SIGTERM)
                break
        seen.append(run.stdout.read())
        run.wait(timeout=300)
    stdout, stderr = "".join(seen), (tmp_path / "stderr.txt").read_text()
    lines = [line for line in stdout.splitlines() if line.startswith("stopped by SIGTERM at step ")]
    assert len(lines) == 1, stdout[-3000:] + stderr[-3000:]
    step = int(lines[0].split("at step ")[1].split(";")[0])
    assert 1 <= step < 4 and [p.name for p in list_checkpoints(out)] == [f"checkpoint-{step}"]
    assert not out.exists() and not lock_path(out).exists()

    for command in (launch(out, "--resume_from_checkpoint", "auto"), launch(tmp_path / "full")):
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert_same_final_weights(tmp_path / "full", out)
