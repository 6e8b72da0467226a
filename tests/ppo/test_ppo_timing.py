"""Per-phase timing of PPO steps (pipeline/ppo/timing.py): the metrics, the log line, the option, the report."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.ppo.test_ppo_train import SMALL, ppo_args, read_metrics

PHASE_KEYS = ["time/generate", "time/forward", "time/reference", "time/reward", "time/update", "time/other"]
TIME_KEYS = [*PHASE_KEYS, "time/step", "time/generated_tokens_per_s", "time/trained_tokens_per_s"]


# --- the timer ------------------------------------------------------------------------------------------------


def test_timer_accumulates_a_phase_and_laps_steps():
    from pipeline.ppo.timing import PHASES, PhaseTimer

    timer = PhaseTimer(torch.device("cpu"))
    timer.lap()
    with timer.phase("generate"):
        time.sleep(0.02)
    with timer.phase("update"):
        time.sleep(0.01)
    with timer.phase("generate"):  # a second chunk of the same phase adds to it
        time.sleep(0.02)
    lap = timer.lap()
    assert list(lap["seconds"]) == list(PHASES)
    assert lap["seconds"]["generate"] >= 0.04 and 0.01 <= lap["seconds"]["update"] < 0.04
    assert lap["seconds"]["reward"] == 0.0
    assert lap["step"] >= sum(lap["seconds"].values())
    assert lap["peak_bytes"] is None  # no memory figure on CPU
    # The next lap starts afresh.
    assert sum(timer.lap()["seconds"].values()) == 0.0


def test_disabled_timer_records_nothing():
    from pipeline.ppo.timing import PhaseTimer

    timer = PhaseTimer(torch.device("cpu"), enabled=False)
    with timer.phase("generate"):
        time.sleep(0.01)
    assert timer.seconds == {} and timer.lap() is None


def test_timer_on_cuda_syncs_around_each_phase_and_reads_its_peak(monkeypatch):
    """The accelerator path without a GPU: torch.cuda's sync and memory calls stand in, and are counted."""
    from pipeline.ppo.timing import PhaseTimer

    calls = []
    peaks = iter([3 * 2**30, 1 * 2**30, 2 * 2**30])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: next(peaks))
    timer = PhaseTimer(torch.device("cuda", 0))
    with timer.phase("forward"):
        assert calls == ["sync", "reset"]  # the clock starts once queued work is done, with a fresh peak
    assert calls == ["sync", "reset", "sync"]
    with timer.phase("forward"):
        pass
    with timer.phase("update"):
        pass
    lap = timer.lap()
    # forward's peak is the larger of its two runs'
    assert lap["peak_bytes"] == {"forward": 3 * 2**30, "update": 2 * 2**30}
    calls.clear()
    disabled = PhaseTimer(torch.device("cuda", 0), enabled=False)
    with disabled.phase("forward"):
        pass
    assert calls == [] and disabled.lap() is None  # off: no device sync at all


# --- a short PPO run --------------------------------------------------------------------------------------------
# On a tiny random Llama (full fine-tuning, the labeler as reward): timing needs a PPO loop, not a trained policy,
# and this keeps the test free of the session's base and SFT stages.

# 3 steps of 8 prompts, a log line each
RUN = [*SMALL, "--total_episodes", "24", "--logging_steps", "1", "--use_peft", "false",
       "--value_head", "shared"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_policy(tiny_data, tmp_path_factory) -> Path:
    from tests.tiny_models import build_model_dir, tiny_tokenizer

    out = tmp_path_factory.mktemp("timing") / "policy"
    return build_model_dir("llama", tiny_tokenizer(tiny_data / "pretrain", num_texts=500), out)


def run_ppo(policy, tiny_data, out, *extra) -> str:
    """Run PPO into `out`; returns what it printed."""
    from pipeline.ppo import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(ppo_args(policy, tiny_data, out, *RUN, *extra))
    return printed.getvalue()


@pytest.fixture(scope="module")
def timed_run(tiny_policy, tiny_data):
    out = tiny_policy.parent / "timed"
    return out, run_ppo(tiny_policy, tiny_data, out)


def test_every_step_logs_its_phase_seconds(timed_run):
    out, printed = timed_run
    metrics = read_metrics(out)
    assert len(metrics) == 3
    for m in metrics:
        assert all(m[key] >= 0 for key in TIME_KEYS), m
        assert m["time/step"] > 0 and m["time/generate"] > 0 and m["time/update"] > 0
        # The phases are disjoint parts of the step (never more than it) and cover it, less the Python between
        # them (~1 ms a step; a busy machine may preempt the process there, hence the margin).
        phases = sum(m[key] for key in PHASE_KEYS)
        assert 0.9 * m["time/step"] - 0.02 <= phases <= m["time/step"], m
        assert m["time/generated_tokens_per_s"] > 0 and m["time/trained_tokens_per_s"] > 0
        # Tokens generated: 8 responses of response_length (mean) tokens; trained once each (num_ppo_epochs 1).
        generated = m["response_length"] * 8
        assert m["time/generated_tokens_per_s"] == pytest.approx(generated / m["time/generate"], rel=1e-4)
        assert m["time/trained_tokens_per_s"] == pytest.approx(generated / m["time/update"], rel=1e-4)
        assert not any(key.startswith("memory/") for key in m)  # CPU: no memory figure
    lines = [line for line in printed.splitlines() if line.startswith("step ")]
    assert len(lines) == 3 and all(" | time gen " in line and " upd " in line for line in lines), lines


def test_timing_off_logs_no_time_and_trains_the_same(timed_run, tiny_policy, tiny_data, tmp_path):
    timed, _ = timed_run
    untimed = tmp_path / "untimed"
    printed = run_ppo(tiny_policy, tiny_data, untimed, "--log_timing", "false")
    metrics = read_metrics(untimed)
    assert len(metrics) == 3
    assert not any(key.startswith(("time/", "memory/")) for m in metrics for key in m)
    assert " | time " not in printed
    # Timing changes nothing in training, to the last bit: the policy and the value head.
    files = sorted(path.name for path in timed.glob("*.safetensors"))
    assert "value_head.safetensors" in files and len(files) >= 2
    for name in files:
        a, b = load_file(timed / name), load_file(untimed / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}:{key}")


# --- the report -------------------------------------------------------------------------------------------------


def test_report_draws_the_timing_chart_only_for_timed_runs(tmp_path):
    from pipeline.analysis.report import write_report
    from pipeline.analysis.summary import summarize
    from pipeline.evaluate import EvalArguments
    from tests.analysis.test_health import CHOSEN_SCORES, SFT_ANSWERS, records_of

    records = records_of(SFT_ANSWERS, SFT_ANSWERS, [1.0] * len(SFT_ANSWERS), 1.0, -1.0)

    def report(run_dir, with_time: bool) -> str:
        rows = []
        for step in range(1, 4):
            row = {"step": step, "objective/scores": 0.1 * step, "objective/kl": 0.5}
            if with_time:
                phases = {"generate": 2.0, "forward": 0.5, "reference": 0.5, "reward": 0.25, "update": 0.5,
                          "other": 0.25}  # fmt: skip
                row.update({f"time/{k}": v for k, v in phases.items()})
                row.update({"time/step": 4.0, "time/generated_tokens_per_s": 100.0,
                            "time/trained_tokens_per_s": 800.0})  # fmt: skip
            rows.append(row)
        run_dir.mkdir()
        metrics = run_dir / "metrics.jsonl"
        metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
        args = EvalArguments(run_dir=str(run_dir), labeler="data_prep.task:labeler_scores")
        result = summarize(records, [0.5, -0.1, 0.3], args, 1, chosen=CHOSEN_SCORES)
        return write_report(run_dir, result, records, metrics).read_text()

    timed = report(tmp_path / "timed", with_time=True)
    assert (tmp_path / "timed" / "plots" / "ppo_timing.png").stat().st_size > 0
    assert "![PPO time per step](plots/ppo_timing.png)" in timed
    assert (
        "generate 2.00 s (50%), forward 0.50 s (12%), reference 0.50 s (12%), reward 0.25 s (6%), "
        "update 0.50 s (12%), other 0.25 s (6%); 4.00 s per step." in timed
    )
    untimed = report(tmp_path / "untimed", with_time=False)
    assert not (tmp_path / "untimed" / "plots" / "ppo_timing.png").exists()
    assert "ppo_timing.png" not in untimed and "by phase" not in untimed
    assert (tmp_path / "untimed" / "plots" / "ppo_training.png").is_file()  # the other plots as before
