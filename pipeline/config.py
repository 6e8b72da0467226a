"""Reading stage configs the TRL way: `--config recipe.yaml` plus command-line overrides.

Every stage declares a tuple of dataclasses (usually its own arguments, a TRL/transformers trainer config and
`trl.ModelConfig`). A YAML key that is a field of none of them is an error that names the key and the file,
so a typo in a recipe never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path

import yaml


class UserError(ValueError):
    """A user mistake (config, data, paths): reported as one clear line, never a bare traceback."""


class ConfigError(UserError):
    """A mistake in a config file or on the command line."""


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from err
    if config is None:
        return {}
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


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() > 0.75


def parse_config(dataclass_types: Sequence[type], args: Sequence[str] | None = None) -> tuple:
    """Parse `--config FILE` and `--field value` overrides into instances of `dataclass_types`."""
    from trl import TrlParser

    args = list(sys.argv[1:] if args is None else args)
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
    parser = TrlParser(list(dataclass_types))
    try:
        parsed = tuple(parser.parse_args_and_config(args))
    except SystemExit as err:  # argparse already printed which argument it could not read
        raise ConfigError(f"Could not parse the command line {args}; see the message above.") from err
    check_required(parsed, source)
    return parsed


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


def load_recipe_file(
    path: str | Path, dataclass_types: Sequence[type], extra_args: Sequence[str] = ()
) -> tuple:
    """Validate one YAML file against its dataclasses and build them (used by the recipe test)."""
    return parse_config(dataclass_types, ["--config", str(path), *extra_args])


def run_main(main, args: Sequence[str] | None = None):
    """Run a stage's main with user mistakes reported as one clear line instead of a traceback."""
    try:
        return main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
