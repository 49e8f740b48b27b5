"""The pieces every dataset reader shares (sources.py, parquet_source.py): a row as read,
one file of a source, and how a failure becomes a row's one-line reason."""

from __future__ import annotations

import struct
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InputError

# What reading one image may raise besides load_image's InputError: the file's fault, not ours.
IMAGE_ERRORS = (InputError, UnidentifiedImageError, OSError, ValueError, SyntaxError,
                EOFError, struct.error, Image.DecompressionBombError)
@dataclass
class Read:
    """One row as read: its values by input name (no batch axis), or why it was not read."""

    id: str
    source: str
    label: str | None
    values: dict[str, np.ndarray] | None = None
    reason: str | None = None


class Part(Protocol):
    """One file of the source: how many rows it holds and how to read them lazily: every row
    whose id is not in `skip` and whose position in the file is in `window` (None: all)."""

    rows: int
    # False where reading a window means reading every row before it (Source.windows).
    seeks: bool = True

    def read(self, skip: Container[str], window: range | None = None) -> Iterator[Read]: ...


def in_window(row: int, window: range | None) -> bool:
    return window is None or row in window


def window_rows(window: range | None, rows: int) -> range:
    """The positions of a part of `rows` rows that `window` selects (None: all of them)."""
    if window is None:
        return range(rows)
    if window.step != 1:
        raise ValueError(f"a window of rows is a contiguous range, not {window}")
    return range(max(window.start, 0), max(min(window.stop, rows), 0))


def relative_path(root: Path, file: Path) -> str:
    return file.relative_to(root).as_posix()


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
