"""Atomic file output: a reader never sees a half-written file, and failures leave no debris."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file in the target's folder, then rename it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(prefix=".onnxplain-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    atomic_write(path, lambda stream: np.save(stream, array))


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def save_json(path: str | os.PathLike, data: dict) -> None:
    text = json.dumps(data, indent=2, allow_nan=False, default=_plain)
    atomic_write(path, lambda stream: stream.write(text.encode() + b"\n"))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
