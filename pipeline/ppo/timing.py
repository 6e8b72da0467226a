"""Where a PPO step's time goes: wall seconds per phase (generate, forward, ...), and on an accelerator the peak
memory of each phase.

GPU work is asynchronous: without a device sync the clock would charge a kernel to whichever phase next waits for
it. So a timed phase synchronises the device when it starts and when it ends; that costs the overlap of the CPU
with the GPU, which is why `log_timing: false` turns the timer into a no-op (no clock, no sync).
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import torch

PHASES = ("generate", "forward", "reference", "reward", "update", "other")
LOG_LINE_PHASES = (("generate", "gen"), ("forward", "fwd"), ("reference", "ref"), ("reward", "rew"),
                   ("update", "upd"), ("other", "other"))  # fmt: skip
_NO_OP = nullcontext()


class PhaseTimer:
    """`with timer.phase("generate"):` adds the block's seconds to that phase of the current step; `lap()` ends the
    step and starts the next one. A phase entered twice in a step (per chunk) accumulates."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.enabled = enabled
        self.device = torch.device(device)
        self._sync = _synchronizer(self.device) if enabled else None
        self._memory = _memory_api(self.device) if enabled else None
        self.seconds: dict[str, float] = {}
        self.peak_bytes: dict[str, int] = {}
        self._step_start = time.perf_counter()

    def phase(self, name: str):
        return self._timed(name) if self.enabled else _NO_OP

    @contextmanager
    def _timed(self, name: str):
        if self._sync:
            self._sync()
        if self._memory:
            self._memory[0](self.device)  # reset the peak, so the peak read below is this phase's own
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if self._memory:
                peak = self._memory[1](self.device)
                self.peak_bytes[name] = max(self.peak_bytes.get(name, 0), peak)

    def lap(self) -> dict | None:
        """This step's `seconds` per phase (every phase of PHASES, 0.0 if it did not run), `step` seconds since the
        last lap and, on an accelerator, `peak_bytes` per phase run; then the next step starts. None if disabled."""
        if not self.enabled:
            return None
        now = time.perf_counter()
        lap = {
            "seconds": {name: self.seconds.get(name, 0.0) for name in PHASES},
            "step": now - self._step_start,
            "peak_bytes": dict(self.peak_bytes) if self._memory else None,
        }
        self.seconds, self.peak_bytes, self._step_start = {}, {}, now
        return lap


def timing_metrics(lap: dict, accelerator, mask: torch.Tensor, num_ppo_epochs: int) -> dict[str, float]:
    """A step's `lap` as metrics: time/<phase> and time/step in seconds, tokens per second of generation and of
    update (`mask`: this process's response tokens), and on an accelerator memory/<phase>_peak_gib."""
    acc = accelerator
    # The slowest rank's seconds per phase (and its peak memory): a step lasts as long as its slowest rank, and a
    # straggler shows in the phase where it is slow. Each phase's maximum is taken on its own, so under several
    # processes the phases may add up to a little more than time/step.
    seconds = [lap["seconds"][name] for name in PHASES] + [lap["step"]]
    seconds = acc.reduce(torch.tensor(seconds, device=acc.device), "max").tolist()
    m = {f"time/{name}": value for name, value in zip((*PHASES, "step"), seconds)}
    # Response tokens up to and including EOS (padding after it is not generated work), summed over processes.
    generated = acc.reduce(mask.sum().float().reshape(1), "sum").item()
    m["time/generated_tokens_per_s"] = generated / max(m["time/generate"], 1e-9)
    m["time/trained_tokens_per_s"] = generated * num_ppo_epochs / max(m["time/update"], 1e-9)
    if lap["peak_bytes"] is not None:
        names = sorted(lap["peak_bytes"])
        peaks = torch.tensor([float(lap["peak_bytes"][name]) for name in names], device=acc.device)
        peaks = acc.reduce(peaks, "max").tolist()  # the same phases ran on every rank
        m.update({f"memory/{name}_peak_gib": peak / 2**30 for name, peak in zip(names, peaks)})
    return m


def log_line_timing(metrics: dict) -> str:
    """The log line's timing part, ' | time gen 1.2s fwd 0.3s ...'; empty without time/ metrics."""
    if "time/step" not in metrics:
        return ""
    parts = " ".join(f"{short} {metrics[f'time/{name}']:.1f}s" for name, short in LOG_LINE_PHASES)
    return f" | time {parts} step {metrics['time/step']:.1f}s"


def _synchronizer(device: torch.device):
    """A function that waits for the device's queued work; None on CPU (work there is already done)."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if _accelerator_is(device):  # XPU, MPS, ...: torch.accelerator (torch >= 2.6)
        return lambda: torch.accelerator.synchronize(device)
    return None


def _memory_api(device: torch.device):
    """(reset peak, read peak) for the device's allocator; None where there is none to ask (CPU)."""
    if device.type == "cuda":
        return torch.cuda.reset_peak_memory_stats, torch.cuda.max_memory_allocated
    api = getattr(torch, "accelerator", None)
    if _accelerator_is(device) and hasattr(api, "max_memory_allocated"):  # torch >= 2.9
        return api.reset_peak_memory_stats, api.max_memory_allocated
    return None


def _accelerator_is(device: torch.device) -> bool:
    api = getattr(torch, "accelerator", None)
    if api is None or device.type == "cpu" or not api.is_available():
        return False
    current = api.current_accelerator()
    return current is not None and current.type == device.type
