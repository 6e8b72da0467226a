"""One writer per output folder: `<output_dir>.lock`, held by the main process for the life of a run.

A second run into a folder that another run is writing (a `make ppo` started twice, a job resubmitted while the
first still runs, a resume of a run that is still alive) stops at once with one line naming the holder, instead
of the two publishing over each other. The lock sits beside the folder, like `<output_dir>.checkpoints/`, because
the folder itself is replaced in one rename when the run publishes.

A lock outlives a run that died without its `finally` (SIGKILL, an OOM kill, power loss). It is stale, and the
next run takes it over with a one-line notice, when
- on this host, its process is gone (or the PID now belongs to a younger process), or
- from another host (a shared filesystem), it has not been touched for `RLHF_LOCK_STALE_S` seconds (default 300):
  the holder touches it every 30 s from a background thread, so only a dead or frozen holder goes quiet.
Under `accelerate launch` only the global main process takes the lock; every rank learns the outcome, and every
rank stops with the same line when it is held.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch.distributed as dist

from pipeline.common.config import UserError, as_user_error, several_ranks

HEARTBEAT_S = 30.0
DEFAULT_STALE_S = 300.0


def lock_path(output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".lock")


def stale_after() -> float:
    value = os.environ.get("RLHF_LOCK_STALE_S", "")
    try:
        return float(value) if value else DEFAULT_STALE_S
    except ValueError:
        raise UserError(
            f"RLHF_LOCK_STALE_S={value!r} is not a number of seconds; unset it or set e.g. 300."
        ) from None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), which tells a live holder from a PID reused after it died."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _is_running(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return start is None or _process_start(pid) in (None, start)


def _why_stale(holder: dict, age_s: float) -> str | None:
    """Why the lock `holder` (its age from its last heartbeat) no longer guards anything; None while it does."""
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if not isinstance(pid, int) or not _is_running(pid, holder.get("process_start")):
            return f"its process {pid} on this host is gone"
        return None
    limit = stale_after()
    if age_s > limit:
        return f"no heartbeat from {holder.get('host')} for {age_s:.0f} s (RLHF_LOCK_STALE_S={limit:.0f})"
    return None


class OutputLock:
    def __init__(self, output_dir: str | Path, stage: str):
        self.output_dir, self.stage = Path(output_dir), stage
        self.path = lock_path(output_dir)
        self.record = {
            "stage": stage, "host": socket.gethostname(), "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
        return True

    def _holder(self) -> tuple[dict, float] | None:
        """The current holder's record and seconds since its heartbeat; None when the lock vanished meanwhile."""
        try:
            age = time.time() - self.path.stat().st_mtime
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:  # being written this instant, or damaged: judged by its age alone
            holder = {}
        return (holder if isinstance(holder, dict) else {}), age

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a lock that vanishes or is taken over meanwhile: look again
            if self._create():
                self._start_heartbeat()
                return
            found = self._holder()
            if found is None:
                continue
            holder, age = found
            why = _why_stale(holder, age) if holder else ("it is unreadable" if age > 5 else None)
            if why is None:
                raise UserError(
                    f"{self.output_dir} is being written by another run: {holder.get('stage', '?')} (pid "
                    f"{holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}; "
                    f"lock {self.path}). Wait for it to finish or stop it, or choose another output_dir."
                )
            # Rename it away first: of two runs taking over one stale lock, only one rename succeeds.
            aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            print(f"Taking over the lock {self.path} of a run that died ({why}): {holder.get('stage', '?')}, pid "
                  f"{holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}.",
                  flush=True)  # fmt: skip
        raise UserError(f"could not take the lock {self.path}: other runs keep taking it. Run one at a time.")

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._heartbeat = threading.Thread(target=beat, name="output-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        self._stop.set()
        found = self._holder()
        # only our own lock: one taken over from us (we were frozen past the limit) now guards another run
        if (
            found is not None
            and found[0].get("pid") == os.getpid()
            and found[0].get("host") == self.record["host"]
        ):
            self.path.unlink(missing_ok=True)


def _agree(message: str | None) -> str | None:
    """The main process's outcome on every rank (a no-op without a process group)."""
    if not several_ranks():
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def one_writer(output_dir: str | Path, stage: str, is_main_process: bool = True) -> Iterator[None]:
    """Hold `<output_dir>.lock` for the block. Call it on EVERY rank, after the process group exists: only the
    main process takes the lock, and every rank stops with the same one line when another run holds it."""
    lock, message = None, None
    if is_main_process:
        lock = OutputLock(output_dir, stage)
        try:
            lock.acquire()
        except UserError as error:
            lock, message = None, str(error)
        except OSError as error:  # an output_dir that cannot be written: said on every rank, not a hang
            said = as_user_error(error)
            lock, message = None, str(said) if said else f"cannot create the lock {lock.path}: {error}"
    message = _agree(message)
    if message:
        raise UserError(message)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
