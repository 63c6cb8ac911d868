"""``python -m srpo_core.train --config run.toml`` (also under ``torchrun ... -m srpo_core.train``).

Runs the SRPO engine from a run file (:mod:`srpo_core.distributed.runfile`) on one process or on
every rank torchrun starts, then exports the result as one safetensors file. See the README
section "Beyond one GPU".

Exit status: 0 done, 2 bad input (one paragraph on stderr, printed by rank 0 only since every
rank checks the same inputs, no traceback), anything else an unexpected error.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence

from .distributed.runfile import default_run_file, dumps

BAD_INPUT = 2
"""Exit status of a bad input (as argparse uses for a bad command line)."""
PARAGRAPH_WIDTH = 100


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


def bad_input_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "fix your input" (their messages say what to fix)."""
    from .distributed.preflight import InputError
    from .distributed.tomlconf import RunFileError
    from .training.checkpoint import CheckpointMismatchError
    from .weights import WeightsMismatchError

    return (InputError, RunFileError, CheckpointMismatchError, WeightsMismatchError, ImportError)


def paragraph(error: BaseException) -> str:
    """The error as one wrapped paragraph: ``error: <message>``."""
    text = " ".join(str(error).split()) or type(error).__name__
    return textwrap.fill(f"error: {text}", PARAGRAPH_WIDTH) + "\n"


def report_bad_input(error: BaseException) -> int:
    """Print ``error`` once (rank 0) and return the bad-input exit status."""
    if int(os.environ.get("RANK", "0")) == 0:
        sys.stderr.write(paragraph(error))
    return BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_default_config:
        sys.stdout.write(dumps(default_run_file()))
        return 0
    if not args.config:
        sys.stderr.write("error: give --config RUN_FILE (or --print-default-config)\n")
        return BAD_INPUT
    from .distributed.cli import run_from_file

    try:
        run_from_file(args.config)
    except bad_input_types() as e:
        return report_bad_input(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
