"""Wording shared by messages, metrics and reports, and reading what users type (no
dependencies, so anything can use it)."""

from __future__ import annotations


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
