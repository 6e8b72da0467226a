"""What bf16 costs or buys on this CPU: one matrix product in fp32 and in bf16, with oneDNN allowed every
instruction set the CPU has, then capped (`ONEDNN_MAX_CPU_ISA`) to what machines without AMX, or without bf16
instructions, have. Not a test.

    .venv/bin/python -m tests.benchmarks.bench_bf16_matmul
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

CAPS = {
    "": "everything the CPU has",
    "AVX512_CORE_BF16": "AVX512-BF16, no AMX",
    "AVX512_CORE": "AVX-512, no bf16 instructions",
    "AVX2": "AVX2",
}


def measure(rows: int = 1024, inner: int = 512, cols: int = 1536, repeats: int = 20) -> tuple[float, float]:
    """Milliseconds per (rows x inner) @ (inner x cols) product on one thread, fp32 and bf16."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, w = torch.randn(rows, inner), torch.randn(cols, inner)

    def timed(a, b) -> float:
        torch.nn.functional.linear(a, b)  # warm-up: oneDNN builds its kernel on first use
        start = time.perf_counter()
        for _ in range(repeats):
            torch.nn.functional.linear(a, b)
        return (time.perf_counter() - start) / repeats * 1e3

    return timed(x, w), timed(x.bfloat16(), w.bfloat16())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(*measure())
        return
    flags = Path("/proc/cpuinfo").read_text().split()
    have = sorted({f for f in flags if "bf16" in f or f.startswith("amx")})
    print(f"CPU bf16/AMX flags: {', '.join(have) or 'none'}\n")
    print("| oneDNN may use | fp32 (ms) | bf16 (ms) | bf16 speed-up |")
    print("|---|---|---|---|")
    for cap, name in CAPS.items():
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": cap} if cap else dict(os.environ)
        out = subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_bf16_matmul", "--one"], env=env,
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        fp32, bf16 = map(float, out[-2:])
        print(f"| {name} | {fp32:.1f} | {bf16:.2f} | {fp32 / bf16:.2f}x |")


if __name__ == "__main__":
    main()
