"""Writing a data dir atomically (`pipeline.outputs.write_atomically`, the writer every stage uses): a crash or
Ctrl-C never leaves a half-written `runs/<name>/data/` that later stages would read."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.outputs import write_atomically

__all__ = ["write_atomically", "write_json"]


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
