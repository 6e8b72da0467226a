"""Reading stage configs the TRL way: `--config recipe.yaml` plus command-line overrides.

Every stage declares a tuple of dataclasses (usually its own arguments, a TRL/transformers trainer config and
`trl.ModelConfig`). A YAML key that is a field of none of them is an error that names the key and the file,
so a typo in a recipe never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import os
import sys
import typing
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path

import torch.distributed as dist
import yaml
from trl import TrlParser


class UserError(ValueError):
    """A user mistake (config, data, paths): reported as one clear line, never a bare traceback."""


class ConfigError(UserError):
    """A mistake in a config file or on the command line."""


class NonFiniteError(UserError):
    """A loss, reward or weight became NaN/Inf: the stage stops before it saves anything."""

    def __init__(self, what: str, step: int, checkpoint=None):
        advice = (
            f"the last good checkpoint is {checkpoint}: resume with --resume_from_checkpoint true after lowering "
            "learning_rate (or fixing the reward), or start afresh"
            if checkpoint
            else "no checkpoint was saved yet: run the stage again with a lower learning_rate (or fix the reward)"
        )
        super().__init__(f"NaN/Inf in the {what} at step {step}: stopped before saving; {advice}.")


STOPPED_EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: stopped on request with a checkpoint; run it again to resume


class Stopped(Exception):
    """A scheduler's signal stopped the stage once its checkpoint was saved (pipeline/common/preemption.py);
    `run_main` prints it and exits with STOPPED_EXIT_CODE."""

    def __init__(self, signal_name: str, step: int, checkpoint):
        super().__init__(
            f"stopped by {signal_name} at step {step}; checkpoint saved: {checkpoint}. Resume with the same command "
            "and --resume_from_checkpoint latest."
        )


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping that holds one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that holds one key twice: PyYAML keeps the last in silence, and a recipe
    edited by copy and paste would train on a value nobody meant to keep."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = lines.get(key)
                except TypeError:  # an unhashable key: the base loader reports it
                    continue
                lines[key] = line
                if first is not None:  # on two lines, or twice on one: {a: 1, a: 2}
                    raise DuplicateKeyError(
                        None,
                        None,
                        f"key '{key}' appears twice (lines {first} and {line}); keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


def load_yaml_text(text: str, source: str):
    """The YAML document in `text` (from `source`, named in errors), refusing duplicate keys."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKeyError as err:
        raise ConfigError(f"{source}: {err.problem}.") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from err


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    config = load_yaml_text(path.read_text(), f"Config file {path}")
    if config is None:
        raise ConfigError(f"Config file {path} is empty: write the stage's settings as `field: value` lines.")
    if not isinstance(config, dict):
        raise ConfigError(
            f"Config file {path} must hold a YAML mapping of field: value, not {type(config).__name__}."
        )
    return config


def field_names(dataclass_types: Sequence[type]) -> set[str]:
    return {f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init}


def check_keys(config: dict, dataclass_types: Sequence[type], source: str) -> None:
    known = field_names(dataclass_types) | {"env"}
    unknown = sorted(set(config) - known)
    if unknown:
        names = ", ".join(cls.__name__ for cls in dataclass_types)
        hints = []
        for key in unknown:
            close = sorted(k for k in known if _similar(k, key))[:3]
            hints.append(f"'{key}'" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ConfigError(
            f"{source}: unknown key(s) {'; '.join(hints)}. Each key must be a field of {names}. "
            "Remove the key or fix its spelling."
        )


def check_flags(args: Sequence[str], dataclass_types: Sequence[type]) -> None:
    """Every `--flag` on the command line names a field (or `--no_<field>` for a boolean one)."""
    known = field_names(dataclass_types) | {"config", "help"}
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            if name not in known and name.removeprefix("no_") not in known:
                close = sorted(k for k in known if _similar(k, name))[:3]
                hint = f" (did you mean {', '.join('--' + k for k in close)}?)" if close else ""
                raise ConfigError(f"unknown command-line option {arg.split('=', 1)[0]}{hint}. Each option must be "
                                  "a field of the stage's config; see --help.")  # fmt: skip


def _similar(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() > 0.75


def command_name() -> str:
    """`python -m pipeline.sft` for the usage line of --help (argparse would say `__main__.py`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name.removesuffix('.__main__')}" if spec else Path(sys.argv[0]).name


def parse_config(
    dataclass_types: Sequence[type], args: Sequence[str] | None = None, prog: str | None = None
) -> tuple:
    """Parse `--config FILE` and `--field value` overrides into instances of `dataclass_types`."""
    args = list(sys.argv[1:] if args is None else args)
    check_flags(args, dataclass_types)
    source, config = "the command line", {}
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise ConfigError("--config needs a file path.")
        source, config = args[i + 1], read_yaml(args[i + 1])
        check_keys(config, dataclass_types, source)
    # The keys a user set (the file's and the command line's `--field` flags), before any of them is applied.
    given = set(config) | {a[2:].split("=", 1)[0] for a in args if a.startswith("--") and a != "--config"}
    check_refused(given, dataclass_types, source)
    parser = TrlParser(list(dataclass_types), prog=prog or command_name())

    def refuse(message: str):  # argparse would print its usage and exit; one clear line instead
        raise ConfigError(f"{source}: {message}; see --help.")

    parser.error = refuse
    parsed = tuple(parser.parse_args_and_config(args))  # --help prints the help and exits 0
    check_required(parsed, source)
    check_value_types(parsed, source)
    return parsed


SCALARS = (bool, int, float, str)


def _scalar_types(annotation) -> tuple | None:
    """The scalar types a field accepts (`float | None` -> (float, int)), or None when it is not a plain scalar."""
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, type(int | None))
        else ()
    )
    types = [a for a in args if a is not type(None)] if args else [annotation]
    if not types or any(t not in SCALARS for t in types):
        return None
    return (*types, int) if float in types else tuple(types)


def check_value_types(configs: Sequence, source: str) -> None:
    """A YAML list or mapping where the field takes one number or string is an error naming the key (argparse
    type-checks only command-line strings; a YAML value would otherwise reach the Trainer as it is)."""
    for config in configs:
        hints = typing.get_type_hints(type(config))
        for f in dataclasses.fields(config):
            expected = _scalar_types(hints.get(f.name)) if f.init else None
            value = getattr(config, f.name)
            if expected and value is not None and not isinstance(value, expected):
                kind = " or ".join(t.__name__ for t in expected if t is not int or float not in expected)
                example = "" if f.default is dataclasses.MISSING else f", e.g. `{f.name}: {f.default!r}`"
                raise ConfigError(f"{source}: {f.name} must be a {kind}, got {type(value).__name__} {value!r}. "
                                  f"Write one value{example}.")  # fmt: skip


def check_refused(given: set[str], dataclass_types: Sequence[type], source: str) -> None:
    """A config type may refuse fields it inherits but never reads (PPOConfig: Trainer-only fields)."""
    for cls in dataclass_types:
        if hasattr(cls, "refused_fields"):
            refused = sorted(given & cls.refused_fields())
            if refused:
                raise ConfigError(cls.refusal(refused, source))


REQUIRED_MARK = "(required) "


def required(help: str, **kwargs):
    """A config field with no default: the recipe must name it (paths especially: no stage falls back to the
    built-in recipe's folders)."""
    # HfArgumentParser hands every metadata key to argparse, so the mark lives in the help text (shown by --help).
    return field(default=None, metadata={"help": REQUIRED_MARK + help}, **kwargs)


def nulls_to_none(config, names: Sequence[str]) -> None:
    """On the command line `--name null` (or none, or empty) must mean None, as it does in YAML."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none"):
            setattr(config, name, None)


def check_required(configs: Sequence, source: str) -> None:
    missing = [
        f.name
        for config in configs
        for f in dataclasses.fields(config)
        if f.metadata.get("help", "").startswith(REQUIRED_MARK) and getattr(config, f.name) in (None, "")
    ]
    if missing:
        keys = ", ".join(missing)
        raise ConfigError(f"{source}: set {keys} (required, no default); add `{missing[0]}: ...` to the recipe "
                          f"file or pass --{missing[0]} on the command line.")  # fmt: skip


DISK_FULL = ("No space left on device", "StorageFull", "os error 28", "inline_container", "file write failed")


def as_user_error(err: BaseException) -> UserError | None:
    """The user-facing meaning of an exception, or None when it is a bug (which keeps its traceback).

    Besides our own UserErrors: a full disk (an OSError, or PyTorch's / safetensors' write errors, which do not say
    so: `enforce fail at inline_container.cc`) and an output path that cannot be written."""
    if isinstance(err, UserError):
        return err
    if (
        isinstance(err, OSError)
        and err.errno in (errno.ENOSPC, errno.EDQUOT)
        or (isinstance(err, RuntimeError | OSError) or type(err).__name__ == "SafetensorError")
        and any(s in str(err) for s in DISK_FULL)
    ):
        where = getattr(err, "filename", None)
        return UserError(f"the disk is full (writing {where or 'a file'} failed: {str(err).splitlines()[0][:200]}). "
                         "Free space or point output_dir at a larger disk, then run again; the unfinished output "
                         "was not published.")  # fmt: skip
    if isinstance(err, PermissionError | NotADirectoryError | FileExistsError) or (
        isinstance(err, OSError) and err.errno == errno.EROFS
    ):
        return UserError(
            f"cannot write {err.filename}: {err.strerror}. Choose an output_dir you can write to."
        )
    return None


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def several_ranks() -> bool:
    """A live process group of more than one rank: agreeing on anything takes a collective."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def run_main(main, args: Sequence[str] | None = None):
    """Run a stage's main with user mistakes reported as one `error:` line (exit code 2) instead of a traceback.

    Under `accelerate launch` every rank raises the same error; rank 0 prints it and every rank exits. A stage
    stopped by a signal (pipeline/common/preemption.py) prints its one line and exits with STOPPED_EXIT_CODE.
    RLHF_DEBUG=1 shows the full traceback instead."""
    try:
        return main(args)
    except Stopped as stopped:  # a scheduler's signal: the checkpoint is saved, the job can be requeued
        if is_main_rank():
            print(str(stopped), flush=True)
        raise SystemExit(STOPPED_EXIT_CODE) from None
    except Exception as err:
        user_error = as_user_error(err)
        if user_error is None or os.environ.get("RLHF_DEBUG", "0") not in ("", "0"):
            raise
        if is_main_rank():
            print(f"error: {user_error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
