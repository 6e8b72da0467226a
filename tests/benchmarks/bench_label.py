"""How long the labeling page takes to rank 20 prompts of K=4 answers by keyboard, the page's own part of it.

Not a test. A synthetic round of 20 prompts; the real server (`python -m pipeline.rounds.label`) and headless
Chromium; each ranking is typed into the order box ("B A=D C") and saved with Enter, and the clock runs until the
next prompt is on screen. This is the mechanical floor of a person's time (reading the answers and deciding is
theirs to add): what the page costs per ranking, from keystroke to the next prompt, with the append to the
rater's file synced to disk before the page moves on.

    .venv/bin/python -m tests.benchmarks.bench_label              # 20 prompts, 3 repeats
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.rounds.labels import LETTERS
from tests.benchmarks.common import invocation, machine_description
from tests.label_browser import Page, Server, free_port, start_browser, write_round


def one_pass(prompts: int, browser) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        config, rows = write_round(Path(folder), prompts)
        by_prompt = {r["prompt"].strip(): r for r in rows}
        server = Server(config, free_port())
        try:
            page = Page(browser, f"{server.url}/?rater=bench")
            times = []
            for _ in range(prompts):
                row, shown = page.shown(by_prompt)
                order = " ".join(sorted(LETTERS[:4], key=lambda c: shown[LETTERS.index(c)]))
                began = time.perf_counter()
                page.rank_by_keys(order)
                times.append(time.perf_counter() - began)
            return times
        finally:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    browser = start_browser()
    try:
        passes = [one_pass(args.prompts, browser) for _ in range(args.repeats)]
    finally:
        browser.quit()
    totals = [sum(p) for p in passes]
    per = [t for p in passes for t in p]
    print(f"# {invocation()}\n# {machine_description()}")
    print(f"{args.prompts} prompts of K=4 ranked by keyboard, {args.repeats} passes:")
    print(
        f"  total per pass: median {statistics.median(totals):.2f} s (min {min(totals):.2f}, max {max(totals):.2f})"
    )
    print(f"  per ranking, keystroke to next prompt: median {statistics.median(per) * 1000:.0f} ms, "
          f"p90 {sorted(per)[int(0.9 * len(per))] * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
