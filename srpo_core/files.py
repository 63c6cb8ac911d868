"""Reading user files safely: one error wording for damaged files, one for unsafe pickles.

Whatever the underlying library says (torch's zip reader, the weights-only unpickler,
safetensors' header parser, Python's text decoder), a file that cannot be parsed is reported as
``corrupt or incomplete file: <path>`` with a hint, and a pickle that would import code is
reported as refused. Nothing here loads a pickle itself.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CORRUPT = "corrupt or incomplete file: {path}"
"""The message every loader gives for a file it cannot parse."""
UNSAFE_GLOBAL = re.compile(r"GLOBAL\s+\S+")
"""How torch's weights-only unpickler names a global (a class or function) it refused."""
DETAIL_CHARS = 200
"""How much of the underlying error is quoted after the hint."""


class CorruptFileError(ValueError):
    """A file is empty, truncated, of another format, or otherwise unreadable."""


class UnsafeFileError(ValueError):
    """A pickle references Python code (classes or functions) and was not loaded."""


def _detail(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= DETAIL_CHARS else f"{text[:DETAIL_CHARS]}..."


def corrupt_message(path: str | os.PathLike[str], hint: str, error: BaseException) -> str:
    """``corrupt or incomplete file: <path>. <hint> (<the library's words>)``."""
    return f"{CORRUPT.format(path=path)}. {hint} ({type(error).__name__}: {_detail(error)})"


def is_unsafe_pickle(error: BaseException) -> bool:
    """Whether a weights-only ``torch.load`` failed because the pickle names code (a GLOBAL)."""
    return isinstance(error, pickle.UnpicklingError) and bool(UNSAFE_GLOBAL.search(str(error)))


PARSE_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
    pickle.UnpicklingError,
    RuntimeError,
    ValueError,
    TypeError,
    AttributeError,
    OverflowError,
    MemoryError,
)
"""What torch.load and safetensors raise for damaged or foreign files (EOFError for an empty
file, KeyError / IndexError for text, RuntimeError for a torn zip, SafetensorError is an
Exception subclass handled by name)."""


def _is_safetensors_error(error: BaseException) -> bool:
    return type(error).__name__ == "SafetensorError"


@contextmanager
def reading(path: str | os.PathLike[str], hint: str) -> Iterator[None]:
    """Turn parse errors raised inside the block into :class:`CorruptFileError` (or
    :class:`UnsafeFileError` for a refused pickle). ``hint`` says what the file should be.

    FileNotFoundError and PermissionError pass through unchanged (they are not damage).
    """
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (CorruptFileError, UnsafeFileError):
        raise
    except Exception as error:
        if is_unsafe_pickle(error):
            found = UNSAFE_GLOBAL.search(str(error))
            raise UnsafeFileError(
                f"refusing to load {path}: it holds Python objects whose unpickling could run"
                f" code ({found.group(0) if found else 'a global'}). Only tensor checkpoints are"
                " accepted; convert the file to .safetensors where it was made."
            ) from error
        if isinstance(error, PARSE_ERRORS) or _is_safetensors_error(error):
            raise CorruptFileError(corrupt_message(path, hint, error)) from error
        raise


def require_nonempty(path: str | os.PathLike[str], hint: str) -> None:
    """Raise :class:`CorruptFileError` for a zero-byte file (before any parser sees it)."""
    if Path(path).stat().st_size == 0:
        raise CorruptFileError(f"{CORRUPT.format(path=path)}. {hint} (the file is empty)")
