"""``python -m srpo_core.train --config run.toml`` (also under ``torchrun ... -m srpo_core.train``).

Runs the SRPO engine from a run file (:mod:`srpo_core.distributed.runfile`) on one process or on
every rank torchrun starts, then exports the result as one safetensors file. See the README
section "Beyond one GPU".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .distributed.runfile import RunFile, dumps


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m srpo_core.train", description="Train SRPO from a run file."
    )
    parser.add_argument("--config", help="The run file (TOML).")
    parser.add_argument(
        "--print-default-config",
        action="store_true",
        help="Print a documented run file with every default and exit.",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(dumps(RunFile()))
        return 0
    if not args.config:
        sys.stderr.write("error: give --config RUN_FILE (or --print-default-config)\n")
        return 2
    from .distributed.cli import run_from_file

    try:
        run_from_file(args.config)
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
