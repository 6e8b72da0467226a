"""Reading stage configs the TRL way: `--config recipe.yaml` plus command-line overrides.

Every stage declares a tuple of dataclasses (usually its own arguments, a TRL/transformers trainer config and
`trl.ModelConfig`). A YAML key that is a field of none of them is an error that names the key and the file,
so a typo in a recipe never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
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
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise ConfigError("--config needs a file path.")
        check_keys(read_yaml(args[i + 1]), dataclass_types, args[i + 1])
    parser = TrlParser(list(dataclass_types))
    try:
        return tuple(parser.parse_args_and_config(args))
    except SystemExit as err:  # argparse already printed which argument it could not read
        raise ConfigError(f"Could not parse the command line {args}; see the message above.") from err


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
