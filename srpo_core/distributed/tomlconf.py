"""Frozen dataclasses <-> TOML, generically, with each field's help text as a comment.

Any dataclass whose fields are bools, ints, floats, strings, tuples/lists of those, optional
values or nested dataclasses round-trips: :func:`to_toml` writes one table per dataclass (nested
ones as sub-tables) and :func:`from_dict` rebuilds it from ``tomllib``'s dict, so a field added to
a config class appears in every run file without touching this module. TOML has no null, so a
``None`` value is written as the string :data:`NONE` (and read back as None). Keys a table leaves
out keep the value of a base instance (the enclosing config's own default); a field's allowed
values come from a ``Literal`` type or ``metadata["choices"]``; an unknown key or value is refused
with the nearest known one suggested. The command line's overrides (:mod:`.overrides`) go through
the same :func:`from_dict`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

NONE = "none"
"""How ``None`` is spelled in a run file."""
COMMENT_WIDTH = 96
"""Help comments are wrapped to this width."""
SUGGEST_CUTOFF = 0.6
"""difflib similarity above which an unknown key's nearest known one is suggested."""

T = TypeVar("T")


class RunFileError(ValueError):
    """A run file (or a table of it) does not fit the config it describes."""


def toml_reader() -> Any:
    """``tomllib`` (Python 3.11+) or, on 3.10, the ``tomli`` package it came from."""
    for name in ("tomllib", "tomli"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise RunFileError("reading a run file needs Python 3.11+ (tomllib) or `pip install tomli`")


def scalar(value: Any) -> str:
    """One TOML value: bool, int, float, str, list/tuple of those, None as :data:`NONE`."""
    if value is None:
        return json.dumps(NONE)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def _comment(text: str) -> list[str]:
    words, lines, line = text.split(), [], "#"
    for word in words:
        if len(line) + 1 + len(word) > COMMENT_WIDTH and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    return [*lines, line] if line != "#" else lines


def to_toml(obj: Any, table: str, help_text: str = "") -> str:
    """``[table]`` with one ``name = value`` per field (help as a comment above it), then one
    sub-table ``[table.name]`` per nested dataclass field."""
    out = [*_comment(help_text), f"[{table}]"] if help_text else [f"[{table}]"]
    nested: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        help_ = str(f.metadata.get("help", ""))
        if dataclasses.is_dataclass(value):
            nested.append(to_toml(value, f"{table}.{f.name}", help_))
            continue
        out += _comment(help_) if help_ else []
        out.append(f"{f.name} = {scalar(value)}")
    return "\n".join(out) + "\n" + "".join("\n" + n for n in nested)


def choices_of(f: dataclasses.Field[Any], hint: Any) -> tuple[Any, ...]:
    """The allowed values of a field: its ``Literal[...]`` type's, or ``metadata["choices"]``."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return tuple(f.metadata.get("choices", ()))


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option most similar to ``name`` (difflib ratio >= :data:`SUGGEST_CUTOFF`), if any."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=SUGGEST_CUTOFF)
    return close[0] if close else None


def nearest(name: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the :func:`closest` option, or ``""``."""
    close = closest(name, options)
    return f" (did you mean {close!r}?)" if close else ""


def _key(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _convert(value: Any, hint: Any, where: str, base: Any = None) -> Any:
    """Coerce a TOML value to the field type ``hint`` (tuples, nested dataclasses merged onto
    ``base``, optionals, literals)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value == NONE and type(None) in options:
            return None
        rest = [o for o in options if o is not type(None)]
        return _convert(value, rest[0], where) if len(rest) == 1 else value
    if origin is typing.Literal:
        return _choice(value, typing.get_args(hint), where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise RunFileError(f"{where} must be a table, got {value!r}")
        return from_dict(hint, value, where, base if isinstance(base, hint) else None)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RunFileError(f"{where} must be an array, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{where}[]") for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise RunFileError(f"{where} must be {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise RunFileError(f"{where} must be int, got {value!r}")
    return value


def _choice(value: Any, options: tuple[Any, ...], where: str) -> Any:
    if value not in options:
        hint = nearest(str(value), map(str, options))
        raise RunFileError(f"{where} must be one of {options}, got {value!r}{hint}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], where: str, base: T | None = None) -> T:
    """Build dataclass ``cls`` from a TOML table: unknown keys are errors (the nearest known one
    suggested), missing keys keep their value in ``base`` (default: the class defaults), values
    are checked against the field types and choices, then by the class itself."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        table = f"[{where}]" if where else "the run file"
        raise RunFileError(
            f"{table} has unknown keys {unknown}{nearest(unknown[0], fields)}; known keys:"
            f" {sorted(fields)} (a run file from another version of the pack? print a fresh one"
            " with --print-default-config)"
        )
    kwargs = {n: getattr(base, n) for n, f in fields.items() if f.init} if base is not None else {}
    for k, v in data.items():
        inner = getattr(base, k) if base is not None else None
        value = _convert(v, hints[k], _key(where, k), inner)
        options = choices_of(fields[k], hints[k])
        kwargs[k] = _choice(value, options, _key(where, k)) if options else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise RunFileError(f"[{where}]: {e}" if where else str(e)) from e
