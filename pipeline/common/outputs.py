"""Output folders and checkpoints: one layout, one atomic writer and one resume rule for every stage.

    <output_dir>/                         the finished artifact; appears complete, in one rename, at the very end
    <output_dir>.checkpoints/checkpoint-N the checkpoints of a run in progress (removed after a successful run
                                          unless keep_checkpoints is true)

`--resume_from_checkpoint` takes `true` (the newest checkpoint-N of this run's output_dir), `false` or nothing
(start afresh), or the path of one checkpoint-N folder. The artifact is written to `<output_dir>.tmp` and
renamed, so `output_dir` either holds a complete model or does not exist.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.common.config import UserError
from pipeline.common.redact import public_items

# Every stage, by the name of its output folder (runs/<recipe>/<stage>) and its make target; ALTERNATIVES are
# stage 3 through TRL's trainers, beside our PPO.
ALTERNATIVES = ("grpo", "rloo", "dpo")
STAGES = ("base", "sft", "reward", "ppo", *ALTERNATIVES)

RESUME_LATEST = ("true", "latest")
RESUME_NEVER = ("", "false", "none", "null")
# the newest checkpoint when there is one, else afresh: one command for a job's start and its requeue
RESUME_AUTO = "auto"


def same_model_path(a: str, b: str) -> bool:
    """Two model paths name one model: the same folder when both exist, else the same hub id."""
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


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
    word = str(value).strip().lower()
    if value is True or word in RESUME_LATEST or word == RESUME_AUTO:
        found = list_checkpoints(output_dir, complete)
        if found:
            return found[-1]
        if word == RESUME_AUTO:  # a job's first start (its requeue finds the checkpoint)
            return None
        raise UserError(
            f"resume_from_checkpoint {value}, but {checkpoints_dir(output_dir)} holds no checkpoint-N folder. "
            "Checkpoints are written every `save_steps` steps; drop the flag to start afresh."
        )
    path = Path(str(value))
    if not path.is_dir() or not complete(path):
        raise UserError(
            f"resume_from_checkpoint {value}: not a checkpoint folder. Use true (the newest checkpoint of this "
            f"run), auto (the newest if any, else afresh), false (start afresh), or the path of a checkpoint-N "
            f"folder under {checkpoints_dir(output_dir)}."
        )
    return path


def resume_advice(step: int, latest: Path | None) -> str:
    """The end of a one-line failure mid-run (the user's reward function failed at step N): what can resume."""
    return f"At step {step}; " + (
        f"the last checkpoint is {latest}: once fixed, resume with --resume_from_checkpoint latest."
        if latest
        else "no checkpoint was saved before it."
    )


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    for path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path)


def remove_checkpoints(output_dir: str | Path) -> None:
    """After a successful run the checkpoints are only disk space (they exist to resume a crashed run)."""
    shutil.rmtree(checkpoints_dir(output_dir), ignore_errors=True)


# --- the one atomic writer -----------------------------------------------------------------------------------
#
# Whatever a stage publishes (a model folder, a data set, a checkpoint, a record file) is written under a temporary
# name beside its final one, `<name>.tmp`, and renamed into place once complete: a reader finds the old version or
# the new one, never half of one.


def staging_path(final: str | Path) -> Path:
    final = Path(final)
    return final.with_name(final.name + ".tmp")


def staging_dir(final: str | Path, is_main_process: bool = True) -> Path:
    """The temp dir a folder is written to before its rename: same name on every rank, emptied by the main one."""
    tmp = staging_path(final)
    if is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    return tmp


def publish(tmp: str | Path, final: str | Path) -> Path:
    """Rename a fully written temp file or dir to its final name. A file is replaced in one step; an older folder
    is renamed aside first and deleted only once the new one is in place, so a failure in between never loses both."""
    final = Path(final)
    if Path(tmp).is_file():
        os.replace(tmp, final)
        return final
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def staged_dir(final: str | Path, is_main_process: bool = True) -> Iterator[Path]:
    """`with staged_dir(final) as tmp:` write the folder's content into `tmp`; at the end of the block the main
    process renames it to `final`, or removes it when the block failed. Enter it on every rank of a distributed
    save (the ranks share `tmp`); the caller waits for the main process's rename before reading `final`."""
    tmp = staging_dir(final, is_main_process)
    try:
        yield tmp
    except BaseException:
        if is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if is_main_process:
        publish(tmp, final)


def write_atomically(final: str | Path, fill: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Call `fill(tmp)` to write a folder's content, then rename it into place; a failure leaves no trace."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise UserError(f"{final} already exists; delete it or pass --overwrite true.")
    final.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(final) as tmp:
        fill(tmp)
    return final


def write_file_atomically(path: str | Path, text: str) -> None:
    """One text file, written beside its final name and renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(path)
    tmp.write_text(text, encoding="utf-8")
    publish(tmp, path)


# --- run identity --------------------------------------------------------------------------------------------
#
# Every run records what it is, `run.json`: its stage, its config and a fingerprint of its inputs, in the work
# folder (`<output_dir>.checkpoints/`) while it runs and in the published output folder. A fresh run into a folder
# that holds another config's outputs refuses (unless overwrite_output_dir), and a resume refuses a checkpoint of
# a run that differs in anything but the operational fields below: the options of a resume apply or are refused
# by name, never dropped.

RUN_FILE = "run.json"

# How a run is watched, logged, evaluated, saved or pushed, not what it trains: these may change between a run and
# its resume (or a rerun into the same folder). Everything else is the run's identity.
OPERATIONAL = {
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "keep_checkpoints", "local_rank",
    "report_to", "run_name", "project", "disable_tqdm", "push_to_hub", "sample_every", "num_samples",
    "merge_adapter", "save_merged", "include_num_input_tokens_seen", "batch_eval_metrics", "do_eval",
    "per_device_eval_batch_size", "bf16_full_eval", "fp16_full_eval", "dataloader_num_workers",
    "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context", "save_only_model", "save_on_each_node", "save_safetensors",
    "trust_remote_code",
}  # fmt: skip
# A resume may also change how long the run trains: the new length applies (the LR schedule then spans it).
RESUME_MAY_CHANGE = {"max_steps", "num_train_epochs", "total_episodes"}
OPERATIONAL_PREFIXES = ("logging_", "log_", "save_", "eval_", "hub_", "trackio_", "push_to_hub_")
# Files a fingerprint skips: logs and reports that differ between two runs that wrote the same model or data.
# (`datasets` also writes its map caches, cache-*.arrow, into a data set's folder while a stage reads it.)
UNFINGERPRINTED = (
    "*.jsonl",
    "*.png",
    "*.md",
    "eval_results.json",
    RUN_FILE,
    "tracking.json",
    "cache-*",
    "tmp*",
)


def is_operational(key: str) -> bool:
    return key in OPERATIONAL or key.startswith(OPERATIONAL_PREFIXES)


def fingerprint(path: str | Path) -> str | None:
    """A cheap fingerprint of a local file or folder: names, sizes and the first and last MiB of every file
    (a 16 GB model is not read in full). None for a hub id."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if any(fnmatch.fnmatch(file.name, pattern) for pattern in UNFINGERPRINTED):
            continue
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if file != path else file.name}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def run_identity(stage: str, configs) -> dict:
    """What a run is: its stage, every config field that is not secret (plain JSON values) and a fingerprint of
    each local input path it names."""
    config = public_items(*configs)
    inputs = {
        key: fingerprint(value)
        for key, value in config.items()
        if (key.endswith("_path") or key == "model_name_or_path")
        and not is_operational(key)
        and isinstance(value, str)
        and Path(value).exists()
    }
    return {"stage": stage, "config": config, "inputs": inputs}


def read_run(folder: str | Path) -> dict | None:
    path = Path(folder) / RUN_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged record is no record: treated like a folder from elsewhere


def write_run(folder: str | Path, identity: dict) -> None:
    write_file_atomically(Path(folder) / RUN_FILE, json.dumps(identity, indent=2) + "\n")


def config_differences(recorded: dict, current: dict, allowed: set[str] = frozenset()) -> list[str]:
    """`key: recorded -> current` for each identity field (both records have, not `allowed`) that differs."""
    old, new = recorded.get("config", {}), current.get("config", {})
    return [
        f"{key}: {old[key]!r} -> {new[key]!r}"
        for key in sorted(old.keys() & new.keys())
        if not is_operational(key) and key not in allowed and old[key] != new[key]
    ]


def input_differences(recorded: dict, current: dict) -> list[str]:
    old, new = recorded.get("inputs", {}), current.get("inputs", {})
    return sorted(key for key in old.keys() & new.keys() if old[key] != new[key])


def _listing(differences: list[str]) -> str:
    return "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")


def check_resume(identity: dict, checkpoint: Path) -> None:
    """A resume continues the checkpoint's run exactly: same stage, same config but operational fields, same
    inputs."""
    recorded = read_run(checkpoint.parent)
    if recorded is None:
        raise UserError(
            f"cannot resume from {checkpoint}: its run folder {checkpoint.parent} has no {RUN_FILE}, so which run "
            "wrote it is unknown (an older version of this pipeline, or a copied folder). Start afresh (drop "
            "--resume_from_checkpoint)."
        )
    if recorded.get("stage") != identity["stage"]:
        raise UserError(f"cannot resume from {checkpoint}: it is a {recorded.get('stage')} checkpoint, this is "
                        f"the {identity['stage']} stage.")  # fmt: skip
    changed = config_differences(recorded, identity, RESUME_MAY_CHANGE)
    if changed:
        raise UserError(
            f"cannot resume from {checkpoint}: this run's config differs from the checkpoint's run in "
            f"{_listing(changed)}. A resume continues that run as it was (optimizer and schedule included), so "
            "it would ignore them: drop those options to resume, or start afresh without "
            "--resume_from_checkpoint. A resume may change only the run's length (max_steps, num_train_epochs, "
            "total_episodes) and operational options (logging, saving, evaluation, tracking, pushing)."
        )
    changed = input_differences(recorded, identity)
    if changed:
        raise UserError(
            f"cannot resume from {checkpoint}: the input(s) {', '.join(changed)} changed since the checkpoint "
            "was written (rebuilt data or a retrained model). Start afresh without --resume_from_checkpoint."
        )


def check_run(identity: dict, output_dir: str | Path, resume: Path | None, overwrite: bool) -> None:
    """May this run write to `output_dir`? Read-only, so every rank calls it before any rank writes.

    A resume must match its checkpoint's run (`check_resume`). A fresh run into a folder that holds another
    config's run, or outputs with no record, refuses unless `overwrite`; a rerun of the same config may go on."""
    if resume is not None:
        check_resume(identity, resume)
        return
    if overwrite:
        return
    final = Path(output_dir)
    for folder in (final, checkpoints_dir(output_dir)):
        recorded = read_run(folder)
        if recorded is None:
            if folder == final and final.is_dir() and any(final.iterdir()):
                raise UserError(
                    f"{final} holds outputs with no {RUN_FILE} (written by an older version of this pipeline, by "
                    "something else, or damaged): pass --overwrite_output_dir true to replace them, or choose "
                    "another output_dir."
                )
            continue
        changed = config_differences(recorded, identity)
        if recorded.get("stage") != identity["stage"]:
            changed = [f"stage: {recorded.get('stage')!r} -> {identity['stage']!r}"]
        if changed:
            raise UserError(
                f"{folder} holds another run's outputs (its config differs in {_listing(changed)}). Pass "
                "--overwrite_output_dir true to replace them, or choose another output_dir."
            )


def start_run(identity: dict, output_dir: str | Path, resume: Path | None) -> None:
    """Main process, after `check_run` on every rank: a fresh run starts with an empty work folder (an earlier
    unfinished attempt's checkpoints would be mixed with its own and pruned by step number) holding its record."""
    work = checkpoints_dir(output_dir)
    if (
        resume is not None
    ):  # the run goes on; resumed from another folder's checkpoint, it starts its own record
        if read_run(work) is None:
            write_run(work, identity)
        return
    if work.is_dir():
        stale = list_checkpoints(output_dir)
        if stale:
            print(f"Starting afresh: removing {len(stale)} checkpoint(s) of an earlier unfinished run in {work} "
                  "(--resume_from_checkpoint true continues one instead).", flush=True)  # fmt: skip
        shutil.rmtree(work)
    write_run(work, identity)
