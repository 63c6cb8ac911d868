"""Command-line overrides of a run file, derived from the same dataclasses as the file.

Every leaf field of :class:`~.runfile.RunFile` (``[train.regularizer] share`` ...) is a key
``train.regularizer.share``; ``--train.regularizer.share 0.3`` (or ``=0.3``) sets it on top of the
run file, and a field name that only one section has may drop its section (``--lr 1e-4``). The
text is converted by the field's type (int, float, bool, str, ``none`` for an optional, a
comma-separated or TOML ``[...]`` array for a tuple) and then checked exactly as a run-file value
(:func:`.tomlconf.from_dict`: type, choices, the class's own checks). Unknown keys are refused
with the nearest known one suggested. :func:`keys_help` lists every key with its type, default
and help text for ``--help``.
"""

from __future__ import annotations

import dataclasses
import textwrap
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .tomlconf import NONE, RunFileError, choices_of, closest, scalar, toml_reader

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
HELP_WIDTH = 100
HELP_INDENT = 6

Overrides = dict[str, Any]
"""Full key (``train.lr``) -> the value a run file would hold (:func:`parse_overrides`)."""


@dataclass(frozen=True)
class Key:
    """One overridable setting: its path of field names, type, default, help and choices."""

    path: tuple[str, ...]
    hint: Any
    default: Any
    help: str
    choices: tuple[Any, ...]

    @property
    def name(self) -> str:
        """``section.sub.field``."""
        return ".".join(self.path)


def keys_of(config: Any, prefix: tuple[str, ...] = ()) -> Iterator[Key]:
    """Every leaf field of the dataclass instance ``config`` (nested dataclasses walked), with
    ``config``'s values as the defaults."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from keys_of(value, (*prefix, f.name))
            continue
        hint = hints[f.name]
        help_text = str(f.metadata.get("help", ""))
        yield Key((*prefix, f.name), hint, value, help_text, choices_of(f, hint))


def _optional(hint: Any) -> tuple[Any, bool]:
    """``(inner type, True)`` for ``X | None``, else ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == len(rest) + 1:
            return rest[0], True
    return hint, False


def _toml_value(text: str, flag: str) -> Any:
    """``text`` read as one TOML value (arrays of arrays, quoted strings)."""
    toml = toml_reader()
    try:
        return toml.loads(f"v = {text}")["v"]
    except toml.TOMLDecodeError:
        raise RunFileError(f"{flag}: {text!r} is not a valid TOML value") from None


def _number(text: str, kind: type, flag: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise RunFileError(f"{flag} must be {kind.__name__}, got {text!r}") from None


def parse_text(text: str, hint: Any, flag: str) -> Any:
    """The command-line ``text`` as the value a run file would hold for a field of type
    ``hint`` (the run-file check then applies); :class:`RunFileError` names ``flag``."""
    inner, optional = _optional(hint)
    if optional and text.strip().lower() == NONE:
        return NONE
    if inner is bool:
        word = text.strip().lower()
        if word not in TRUE_WORDS + FALSE_WORDS:
            raise RunFileError(f"{flag} must be true or false, got {text!r}")
        return word in TRUE_WORDS
    if inner in (int, float):
        return _number(text.strip(), inner, flag)
    if typing.get_origin(inner) is tuple:
        if text.lstrip().startswith("["):
            return _toml_value(text, flag)
        args = typing.get_args(inner)
        item = args[0] if args else str
        if item not in (int, float, str, bool):
            raise RunFileError(f'{flag} takes a TOML array, e.g. \'[["a", "b"]]\'')
        parts = [p.strip() for p in text.split(",")] if text.strip() else []
        return [parse_text(p, item, flag) for p in parts]
    return text


def key_table(config: Any) -> dict[str, Key]:
    """``{"train.lr": Key, ...}`` for the dataclass instance ``config``."""
    return {k.name: k for k in keys_of(config)}


def short_names(table: dict[str, Key]) -> dict[str, list[str]]:
    """Field name -> the full keys that end in it (``seed`` -> train.seed, train.guard.seed)."""
    out: dict[str, list[str]] = {}
    for name, key in table.items():
        out.setdefault(key.path[-1], []).append(name)
    return out


def resolve(flag: str, table: dict[str, Key]) -> str:
    """The full key of ``--flag`` (a full key, or a field name only one section has)."""
    name = flag[2:]
    if name in table:
        return name
    short = short_names(table).get(name, [])
    if len(short) == 1:
        return short[0]
    if short:
        full = ", ".join(f"--{s}" for s in short)
        raise RunFileError(f"{flag} is in several sections ({full}): give the full name")
    prefixes = [k for k in table if k.startswith(name + ".")]
    if prefixes:
        raise RunFileError(f"{flag} is a table; set one of its keys, e.g. --{prefixes[0]}")
    options = [*table, *short_names(table)]
    near = closest(name, options)
    hint = f" (did you mean --{near}?)" if near else ""
    raise RunFileError(f"unknown option {flag}{hint}; --help lists every run-file key")


def parse_overrides(argv: Sequence[str], table: dict[str, Key]) -> Overrides:
    """``["--train.lr", "1e-4", "--log.progress_bar=false", "--train.offline"]`` -> ``{full
    key: run-file value}``; a bool key without a value means true. Later ones win."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise RunFileError(f"unexpected argument {arg!r}: settings are given as --KEY VALUE")
        flag, eq, text = arg.partition("=")
        name = resolve(flag, table)
        key, i = table[name], i + 1
        if not eq:
            bare_bool = _optional(key.hint)[0] is bool and (
                i == len(argv) or argv[i].startswith("--")
            )
            if bare_bool:
                out[name] = True
                continue
            if i == len(argv):
                raise RunFileError(f"--{name} needs a value")
            text, i = argv[i], i + 1
        out[name] = parse_text(text, key.hint, f"--{name}")
    return out


def nest(overrides: Overrides) -> dict[str, Any]:
    """``{"train.regularizer.share": 0.3}`` -> ``{"train": {"regularizer": {"share": 0.3}}}``."""
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        *tables, last = name.split(".")
        node = out
        for t in tables:
            node = node.setdefault(t, {})
        node[last] = value
    return out


def merge(data: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the nested ``patch`` laid over it (tables merged key by key)."""
    out = dict(data)
    for k, v in patch.items():
        inner = out.get(k)
        out[k] = merge(inner, v) if isinstance(v, dict) and isinstance(inner, dict) else v
    return out


def type_label(key: Key) -> str:
    """``INT``, ``FLOAT``, ``BOOL``, ``STR``, ``{a,b}``, ``FLOAT,FLOAT``, ``none|FLOAT``..."""
    if key.choices:
        return "{" + ",".join(str(c) for c in key.choices) + "}"
    inner, optional = _optional(key.hint)
    if typing.get_origin(inner) is tuple:
        args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        label = ",".join(getattr(a, "__name__", "TOML").upper() for a in args)
        label = f"{label},..." if Ellipsis in typing.get_args(inner) else label
        if not all(isinstance(a, type) for a in args):
            label = "TOML-ARRAY"
    else:
        label = getattr(inner, "__name__", "VALUE").upper()
    return f"none|{label}" if optional else label


def keys_help(table: dict[str, Key], sections: dict[str, str]) -> str:
    """Every key of ``table`` as ``--key TYPE (default: v)`` and its wrapped help, grouped by
    section with the sections' own help."""
    lines: list[str] = []
    current = ""
    for name, key in table.items():
        section = key.path[0]
        if section != current:
            current = section
            header = f"[{section}] {sections.get(section, '')}".rstrip()
            lines += ["", *textwrap.wrap(header, HELP_WIDTH, subsequent_indent="  ")]
        lines.append(f"  --{name} {type_label(key)} (default: {scalar(key.default)})")
        if key.help:
            lines += textwrap.wrap(
                key.help,
                HELP_WIDTH,
                initial_indent=" " * HELP_INDENT,
                subsequent_indent=" " * HELP_INDENT,
            )
    return "\n".join(lines)
