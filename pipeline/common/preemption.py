"""Stop on a scheduler's signal with a checkpoint, instead of losing the work since the last `save_steps`.

Slurm, Kubernetes and spot instances stop a job with SIGTERM and a grace period before SIGKILL (Slurm can send
SIGUSR1 earlier: `#SBATCH --signal=USR1@120`); Ctrl-C sends SIGINT. On any of them a training stage finishes the
step it is in, every rank agrees on it (an all-reduce at each step end: ranks get the signal at different
moments), writes a normal checkpoint, publishes no final artifact, prints one line and exits with
STOPPED_EXIT_CODE. `--resume_from_checkpoint latest` then continues as if never stopped. A second signal while the
checkpoint is written changes nothing (the save is atomic and goes on); SIGKILL stops at once, losing the step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

import torch
import torch.distributed as dist

from pipeline.common.config import is_main_rank, several_ranks

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class StopRequest:
    """The signal received, if any. Installed as the handler of SIGNALS for the duration of `installed()`."""

    def __init__(self):
        self.signal_name: str | None = None

    def _handle(self, signum, frame) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            if is_main_rank():  # os.write: print() is not safe inside a signal handler
                os.write(2, f"{self.signal_name}: stopping after this step with a checkpoint.\n".encode())

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield self
            return
        previous = {}
        for name in SIGNALS:
            if hasattr(signal, name):
                previous[name] = signal.signal(getattr(signal, name), self._handle)
        try:
            yield self
        finally:
            for name, handler in previous.items():
                signal.signal(getattr(signal, name), handler)

    def agreed(self, device=None) -> bool:
        """Did any rank get a signal? Call it on EVERY rank at the same point (a collective under a process
        group); every rank then stops at the same step."""
        if not several_ranks():
            return self.signal_name is not None
        flag = torch.tensor([0 if self.signal_name is None else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal_name is None:
            self.signal_name = "a signal to another rank"
        return bool(flag.item())
