"""``python -m srpo_core.train --config run.toml`` (also under ``torchrun ... -m srpo_core.train``).

Runs the SRPO engine from a run file (:mod:`srpo_core.distributed.runfile`), with any of its keys
overridden on the command line (``--train.lr 1e-4``, :mod:`srpo_core.distributed.overrides`), on
one process or on every rank torchrun starts, then exports the result as one safetensors file.
``--help`` lists every key; ``--print-config`` prints the effective run file. See the README
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
from typing import NoReturn

from .distributed.overrides import Overrides, key_table, keys_help, parse_overrides
from .distributed.runfile import (
    EFFECTIVE_FILE,
    SECTIONS,
    RunFile,
    absolute,
    build,
    default_run_file,
    dumps,
    load,
    with_world_size,
)
from .distributed.tomlconf import RunFileError

BAD_INPUT = 2
"""Exit status of a bad input (as argparse uses for a bad command line)."""
PARAGRAPH_WIDTH = 100


DESCRIPTION = (
    "Train SRPO from a run file. Subcommands: encode-prompts (a text file of prompts -> the"
    " prompts file; see encode-prompts --help), make-tiny-run FOLDER (a tiny random world and"
    " its run file, to try the command on a CPU). Any run-file key below may also be set on the"
    " command line, over the file: --train.lr 1e-4 (or --lr 1e-4 where only one section has"
    " the key); a bool key alone means true; a tuple as 0.9,0.99 or a TOML array; 'none' for an"
    " optional value; a path relative to the working directory."
)


class Parser(argparse.ArgumentParser):
    """argparse whose errors are bad input (one paragraph from rank 0, exit 2), not a usage
    dump from every rank."""

    def error(self, message: str) -> NoReturn:
        raise RunFileError(message)


def build_parser() -> argparse.ArgumentParser:
    """The options, then every run-file key (:mod:`.distributed.overrides`) in ``--help``."""
    parser = Parser(
        prog="python -m srpo_core.train",
        usage="%(prog)s --config RUN_FILE [--SECTION.KEY VALUE ...]",
        description=textwrap.fill(DESCRIPTION, PARAGRAPH_WIDTH),
        epilog="run-file keys, their types and defaults (a key missing from the run file takes"
        " its default):\n" + keys_help(key_table(RunFile()), SECTIONS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", metavar="RUN_FILE", help="The run file (TOML).")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="Print the effective run file (--config, or the defaults, with the command line's"
        " settings and absolute paths) and exit; the run saves it as output_dir/"
        f"{EFFECTIVE_FILE}.",
    )
    parser.add_argument(
        "--print-default-config",
        action="store_true",
        help="Print a documented run file with every default (and the command line's settings)"
        " and exit.",
    )
    return parser


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, Overrides]:
    """The options and the run-file overrides (:class:`RunFileError` on bad ones)."""
    args, rest = build_parser().parse_known_args(argv)
    return args, parse_overrides(rest, key_table(RunFile()))


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


def print_config(args: argparse.Namespace, overrides: Overrides) -> None:
    """``--print-default-config`` / ``--print-config``: the run file, as TOML, on stdout."""
    if args.print_default_config or not args.config:
        run = build({}, overrides, default_run_file())
    else:
        run = load(args.config, overrides)
    if args.print_config:
        run = with_world_size(absolute(run), int(os.environ.get("WORLD_SIZE", "1")))
    sys.stdout.write(dumps(run))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return subcommand(argv[0], argv[1:])
    try:
        args, overrides = parse_args(argv)
        if args.print_default_config or args.print_config:
            print_config(args, overrides)
            return 0
        if not args.config:
            raise RunFileError("give --config RUN_FILE (or --print-default-config)")
        from .distributed.cli import run_from_file

        run_from_file(args.config, overrides)
    except bad_input_types() as e:
        return report_bad_input(e)
    return 0


def cli() -> None:
    """The ``srpo-train`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
