"""Wording shared by messages, metrics and reports, and reading what users type (no
dependencies but numpy, so anything can use it)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """"1 row", "3 rows": a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def is_integer_text(text: str) -> bool:
    """Whether `text` reads as an integer ("12", " -3")."""
    try:
        int(text)
    except ValueError:
        return False
    return True


def brief(value: object) -> str:
    """What was given, short and on one line: never a large value."""
    if isinstance(value, np.ndarray):
        return f"a value of type ndarray shaped {value.shape} ({value.dtype})"
    if isinstance(value, list | tuple | Mapping):
        return f"a value of type {type(value).__name__} of length {len(value)}"
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if isinstance(value, bool | int | float | np.number | np.bool_) or value is None:
        text = repr(value.item() if isinstance(value, np.generic) else value)
        return text if len(text) <= 30 else f"an integer of {len(text)} digits"
    return f"a value of type {type(value).__name__}"
