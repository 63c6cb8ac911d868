"""Frozen dataclasses <-> TOML, generically, with each field's help text as a comment.

Any dataclass whose fields are bools, ints, floats, strings, tuples/lists of those, optional
values or nested dataclasses round-trips: :func:`to_toml` writes one table per dataclass (nested
ones as sub-tables) and :func:`from_dict` rebuilds it from ``tomllib``'s dict, so a field added to
a config class appears in every run file without touching this module. TOML has no null, so a
``None`` value is written as the string :data:`NONE` (and read back as None).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

NONE = "none"
"""How ``None`` is spelled in a run file."""
COMMENT_WIDTH = 96
"""Help comments are wrapped to this width."""

T = TypeVar("T")


class RunFileError(ValueError):
    """A run file (or a table of it) does not fit the config it describes."""


def _scalar(value: Any) -> str:
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
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
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
        out.append(f"{f.name} = {_scalar(value)}")
    return "\n".join(out) + "\n" + "".join("\n" + n for n in nested)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Coerce a TOML value to the field type ``hint`` (tuples, nested dataclasses, optionals)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value == NONE and type(None) in options:
            return None
        rest = [o for o in options if o is not type(None)]
        return _convert(value, rest[0], where) if len(rest) == 1 else value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise RunFileError(f"{where} must be a table, got {value!r}")
        return from_dict(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list):
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


def from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from a TOML table: unknown keys are errors, missing keys keep their
    defaults, values are checked against the field types and then by the class itself."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RunFileError(
            f"[{where}] has unknown keys {unknown}; known keys: {sorted(names)} (a run file from "
            "another version of the pack? print a fresh one with --print-default-config)"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise RunFileError(f"[{where}]: {e}") from e
