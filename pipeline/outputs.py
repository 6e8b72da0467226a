"""Output folders and checkpoints: one layout, one atomic writer and one resume rule for every stage.

    <output_dir>/                         the finished artifact; appears complete, in one rename, at the very end
    <output_dir>.checkpoints/checkpoint-N the checkpoints of a run in progress (removed after a successful run
                                          unless keep_checkpoints is true)

`--resume_from_checkpoint` takes `true` (the newest checkpoint-N of this run's output_dir), `false` or nothing
(start afresh), or the path of one checkpoint-N folder. The artifact is written to `<output_dir>.tmp` and
renamed, so `output_dir` either holds a complete model or does not exist.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.config import UserError

RESUME_LATEST = ("true", "latest")
RESUME_NEVER = ("", "false", "none", "null")


def checkpoints_dir(output_dir: str | Path) -> Path:
    """Where a stage writes its `checkpoint-N/` folders: a sibling of the final artifact, never inside it."""
    final = Path(output_dir)
    return final.with_name(final.name + ".checkpoints")


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(output_dir) / f"checkpoint-{step}"


def checkpoint_step(path: Path) -> int | None:
    match = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path, complete: Callable[[Path], bool] = Path.is_dir) -> list[Path]:
    """This run's checkpoints, oldest first; `complete` says whether a folder is a whole checkpoint."""
    root = checkpoints_dir(output_dir)
    found = (
        [(checkpoint_step(p), p) for p in root.glob("checkpoint-*") if p.is_dir()] if root.is_dir() else []
    )
    return [p for step, p in sorted((s, p) for s, p in found if s is not None) if complete(p)]


def resolve_resume(
    value, output_dir: str | Path, complete: Callable[[Path], bool] = Path.is_dir
) -> Path | None:
    """`resume_from_checkpoint` -> the checkpoint folder to resume from, or None to start afresh."""
    if value is None or value is False or str(value).strip().lower() in RESUME_NEVER:
        return None
    if value is True or str(value).strip().lower() in RESUME_LATEST:
        found = list_checkpoints(output_dir, complete)
        if found:
            return found[-1]
        old = Path(output_dir) / "checkpoints"
        if old.is_dir() and any(old.glob("step-*")):
            raise UserError(
                f"resume_from_checkpoint {value}: {old} holds checkpoints in the old layout (checkpoints/step-N "
                f"inside the output folder). Checkpoints now live in {checkpoints_dir(output_dir)}/checkpoint-N: "
                f"move them there (step-N -> checkpoint-N) to resume, or drop the flag to start afresh."
            )
        raise UserError(
            f"resume_from_checkpoint {value}, but {checkpoints_dir(output_dir)} holds no checkpoint-N folder. "
            "Checkpoints are written every `save_steps` steps; drop the flag to start afresh."
        )
    path = Path(str(value))
    if not path.is_dir() or not complete(path):
        raise UserError(
            f"resume_from_checkpoint {value}: not a checkpoint folder. Use true (the newest checkpoint of this "
            f"run), false (start afresh), or the path of a checkpoint-N folder under {checkpoints_dir(output_dir)}."
        )
    return path


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    for path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path)


def remove_checkpoints(output_dir: str | Path) -> None:
    """After a successful run the checkpoints are only disk space (they exist to resume a crashed run)."""
    shutil.rmtree(checkpoints_dir(output_dir), ignore_errors=True)


# --- the one atomic writer -----------------------------------------------------------------------------------


def staging_dir(final: str | Path, is_main_process: bool = True) -> Path:
    """The temp dir a folder is written to before its rename: same name on every rank, emptied by the main one."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def publish(tmp: str | Path, final: str | Path) -> Path:
    """Rename a fully written temp dir to its final name. An older folder there is renamed aside first and
    deleted only once the new one is in place, so a failure in between never loses both."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def write_atomically(final: str | Path, fill: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Call `fill(tmp)` to write a folder's content, then rename it into place; a failure leaves no trace."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; delete it or pass --overwrite true.")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(final)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish(tmp, final)
