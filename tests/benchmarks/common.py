"""Shared plumbing of the benchmarks: timed subprocess runs, peak memory, the reference virtualenv, table cells.

Every measured run is its own process, so its peak memory is its own: `os.wait4` returns the resource usage
of exactly that child (ru_maxrss = its peak resident set, in KiB on Linux). Per-step times come from the
trainer's metrics file, watched from outside as it grows (one JSON line per PPO step), so our trainer and the
reference are timed the same way without instrumenting either.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"  # gitignored: virtualenvs, generated models, run outputs
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
if not PROJECT_PYTHON.exists():  # e.g. CI installs into another interpreter
    PROJECT_PYTHON = Path(sys.executable)

TRL112_VENV = BENCH_DIR / "trl112"
TRL112_PYTHON = TRL112_VENV / "bin" / "python"
# torch first and explicitly (a bare requirement pulls a multi-GB CUDA build); then the last TRL with PPO,
# with the rest of the stack at the project's pinned versions.
TRL112_TORCH = "torch==2.13.0"
TRL112_PACKAGES = [
    "trl==1.12.0",
    "transformers==5.23.0",
    "peft==0.21.2",
    "accelerate==1.15.0",
    "datasets==5.2.0",
]


# Launch configs for several CPU processes; FSDP2 runs on CPU only through the test shim (tests/fsdp_on_cpu.py).
ENGINE_CONFIGS = {
    "ddp": "multi_cpu.yaml",
    "zero2": "zero2.yaml",
    "zero3": "zero3.yaml",
    "zero3_offload": "zero3_offload.yaml",
    "fsdp2": "fsdp.yaml",
}


def launcher(module: str, processes: int = 1, engine: str = "ddp") -> list[str]:
    """The command that runs `python -m module`: the project's python, or `accelerate launch` on N CPU ranks
    under an engine (fp32, as the single-process runs)."""
    if processes <= 1:
        return [str(PROJECT_PYTHON), "-m", module]
    runner = ["-m", "tests.fsdp_on_cpu", module] if engine == "fsdp2" else ["-m", module]
    return [str(PROJECT_PYTHON.with_name("accelerate")), "launch", "--config_file",
            f"recipes/accelerate/{ENGINE_CONFIGS[engine]}", "--num_processes", str(processes),
            "--mixed_precision", "no", *runner]  # fmt: skip


def bench_env(threads: int) -> dict:
    """Same environment for every measured process: offline, no telemetry, a fixed number of CPU threads."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONPATH=str(REPO),
    )
    return env


def ensure_trl112_venv() -> Path:
    """Create `.bench/trl112` with trl==1.12.0 (its experimental PPOTrainer) unless it is already there."""
    try:
        out = subprocess.run(
            [str(TRL112_PYTHON), "-c", "import trl, torch; print(trl.__version__, torch.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if out[0] == "1.12.0":
            return TRL112_PYTHON
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    print(f"Installing trl==1.12.0 into {TRL112_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TRL112_VENV)], check=True)
    pip = [str(TRL112_PYTHON), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, TRL112_TORCH], check=True)
    subprocess.run([*pip, *TRL112_PACKAGES], check=True)
    return TRL112_PYTHON


@dataclass
class RunResult:
    command: list[str]
    returncode: int
    wall_s: float  # process start to exit
    peak_rss_mib: float  # the process's own peak resident set (ru_maxrss)
    steps: list[tuple[float, dict]] = field(default_factory=list)  # (seconds since start, metrics row)
    output_tail: str = ""
    cpu_s: float = 0.0  # user + system CPU seconds of the process (insensitive to other load on the machine)
    loadavg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at start and at exit
    output: str = ""  # the process's whole stdout+stderr

    def cpu_s_per_episode(self) -> float | None:
        return self.cpu_s / self.episodes if self.episodes else None

    @property
    def episodes(self) -> int:
        return int(self.steps[-1][1]["episode"]) if self.steps else 0

    def steady_eps(self) -> float | None:
        """Episodes per second after the first PPO step (warm-up, model loading and imports excluded)."""
        if len(self.steps) < 2:
            return None
        (t0, first), (t1, last) = self.steps[0], self.steps[-1]
        return (last["episode"] - first["episode"]) / (t1 - t0)

    def first_step_s(self) -> float | None:
        """Seconds from process start to the end of the first PPO step: imports, loading, warm-up, one step."""
        return self.steps[0][0] if self.steps else None

    def step_seconds(self) -> list[float]:
        times = [t for t, _ in self.steps]
        return [b - a for a, b in zip(times, times[1:])]


def _watch_jsonl(path: Path, start: float, rows: list, stop: threading.Event) -> None:
    """Append (arrival time, row) for each complete line the file gains; polls every 20 ms."""
    offset, buf = 0, ""
    while True:
        done = stop.is_set()
        if path.exists():
            with open(path) as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            now = time.time() - start
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                if line.strip():
                    rows.append((now, json.loads(line)))
        if done:
            return
        time.sleep(0.02)


def run_measured(
    command: list[str], env: dict, metrics_path: Path | None = None, timeout: float = 900, cwd: Path = REPO
) -> RunResult:
    """Run one benchmark process; return wall time, its own peak RSS and the metrics rows as they arrived."""
    if metrics_path is not None and metrics_path.exists():
        metrics_path.unlink()
    log_path = BENCH_DIR / "logs" / f"run-{os.getpid()}-{time.time():.0f}.log"  # unique: runs may overlap
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list = []
    stop = threading.Event()
    load_start = os.getloadavg()[0]
    with open(log_path, "w") as log:
        start = time.time()
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        watcher = None
        if metrics_path is not None:
            watcher = threading.Thread(
                target=_watch_jsonl, args=(metrics_path, start, rows, stop), daemon=True
            )
            watcher.start()
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.time() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        if watcher is not None:
            watcher.join()
    output = log_path.read_text(errors="replace")
    cpu = usage.ru_utime + usage.ru_stime
    loads = (load_start, os.getloadavg()[0])
    return RunResult(
        command, proc.returncode, wall, usage.ru_maxrss / 1024, rows, output[-3000:], cpu, loads, output
    )


def check(result: RunResult, what: str) -> RunResult:
    if result.returncode != 0:
        raise SystemExit(
            f"{what} failed (exit {result.returncode}):\n  {shlex.join(result.command)}\n{result.output_tail}"
        )
    return result


def baseline_rss_mib(python: Path, env: dict, imports: str) -> float:
    """Peak RSS of a process that only imports the stack: the floor under every trainer's figure."""
    return check(run_measured([str(python), "-c", f"import {imports}"], env), "import baseline").peak_rss_mib


def machine_description() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {mem_gib:.0f} GiB RAM, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def bench_value(value) -> str:
    """A benchmark table's cell (for pipeline.common.tables.markdown_table): 3 significant digits, whole numbers
    from 100, '-' for a run that measured nothing; text as it is."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def invocation() -> str:
    """The exact command that produced a table, as it would be typed from the repo root."""
    args = [os.path.relpath(a, REPO) if a.startswith(str(REPO)) else a for a in sys.argv[1:]]
    module = (
        "tests.benchmarks." + Path(sys.argv[0]).stem
    )  # the scripts run as modules (-m) from the repo root
    return shlex.join([".venv/bin/python", "-m", module, *args])
