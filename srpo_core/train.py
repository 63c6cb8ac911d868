"""``python -m srpo_core.train --config run.toml`` (also under ``torchrun ... -m srpo_core.train``).

Runs the SRPO engine from a run file (:mod:`srpo_core.distributed.runfile`) on one process or on
every rank torchrun starts, then exports the result as one safetensors file. See the README
section "Beyond one GPU".

Exit status: 0 done, 2 bad input (one paragraph on stderr, printed by rank 0 only since every
rank agrees on the inputs, no traceback), anything else an unexpected error.
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
        prog="python -m srpo_core.train",
        description="Train SRPO from a run file. Subcommands: encode-prompts (a text file of"
        " prompts -> the prompts file; see encode-prompts --help), make-tiny-run FOLDER (a tiny"
        " random world and its run file, to try the command on a CPU).",
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
    from .distributed.preflight import input_errors

    return input_errors()


def paragraph(error: BaseException) -> str:
    """The error as one wrapped paragraph: ``error: <message>``."""
    text = " ".join(str(error).split()) or type(error).__name__
    return textwrap.fill(f"error: {text}", PARAGRAPH_WIDTH) + "\n"


def report_bad_input(error: BaseException) -> int:
    """Print ``error`` once (rank 0) and return the bad-input exit status."""
    if int(os.environ.get("RANK", "0")) == 0:
        sys.stderr.write(paragraph(error))
    return BAD_INPUT


SUBCOMMANDS = ("encode-prompts", "make-tiny-run")


def subcommand(name: str, argv: Sequence[str]) -> int:
    """``encode-prompts ...`` (:mod:`.distributed.encode_prompts`) or ``make-tiny-run FOLDER``
    (:mod:`.distributed.tiny_run`)."""
    try:
        if name == "encode-prompts":
            from .distributed.encode_prompts import main as encode_main

            sys.stdout.write(encode_main(argv) + "\n")
        else:
            from .distributed.tiny_run import make_tiny_run

            if len(argv) != 1:
                sys.stderr.write("usage: python -m srpo_core.train make-tiny-run FOLDER\n")
                return BAD_INPUT
            path = make_tiny_run(argv[0]).resolve()
            sys.stdout.write(f"wrote {path}; train it with: python -m srpo_core.train --config"
                             f" {path}\n")  # fmt: skip
    except bad_input_types() as e:
        return report_bad_input(e)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return subcommand(argv[0], argv[1:])
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


def cli() -> None:
    """The ``srpo-train`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
