"""Writing a data dir atomically: everything goes to a temporary sibling folder, renamed into place at the end,
so a crash (or Ctrl-C) never leaves a half-written `runs/<name>/data/` that later stages would read."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.config import UserError


def write_atomically(output_dir: str | Path, fill: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Call `fill(tmp_dir)` to write the content, then move `tmp_dir` to `output_dir`."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise UserError(f"{output_dir} already exists; delete it or pass --overwrite true.")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    old = output_dir.parent / f".{output_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        if output_dir.exists():
            output_dir.rename(old)  # rename, not delete, so the old data survives a failure of the next line
        tmp.rename(output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return output_dir


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
