"""Command line of data_prep.

python -m data_prep build --config recipes/tiny/data.yaml [--field value ...]
python -m data_prep convert --input FILE_OR_HUB_ID --format hh_rlhf --output DIR [--column_mapping ...]
python -m data_prep build|convert --help    (every option of the command)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from data_prep.build import build, describe_data
from data_prep.config import CONFIG_TYPES, ConvertConfig
from data_prep.sources import convert_to_disk
from pipeline.common.config import ConfigError, parse_config, run_main

USAGE = __doc__.strip()


def main(args: Sequence[str] | None = None):
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return None
    command, rest = args[0], args[1:]
    if command == "build":
        (config,) = parse_config(CONFIG_TYPES, rest, prog="python -m data_prep build")
        info = build(config)
        print(describe_data(info, config.output_dir))
        return info
    if command == "convert":
        (config,) = parse_config((ConvertConfig,), rest, prog="python -m data_prep convert")
        return convert_to_disk(config)
    raise ConfigError(f"Unknown command '{command}'. Usage:\n{USAGE}")


if __name__ == "__main__":
    run_main(main)
