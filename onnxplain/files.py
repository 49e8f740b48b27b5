"""Atomic file output: a reader never sees a half-written file, and failures leave no debris.

Every file onnxplain writes goes through `atomic_write`, so all of them get the same
permissions: what the umask allows (0o666 & ~umask), as `open(path, "w")` would give.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None],
                 durable: bool = False) -> None:
    """Call `write` on a temporary file in the target's folder, then rename it into place.
    `durable`: the file and the rename reach the disk before this returns (a few ms each),
    so that a machine that stops, not only a process, never leaves an empty file under the
    name: for what a later run trusts, as a resumed dataset run trusts its shards."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(prefix=".onnxplain-", suffix=suffix, dir=folder)
    try:
        # mkstemp makes the file 0600 whatever the umask; give it the usual mode instead.
        os.chmod(temporary, 0o666 & ~umask())
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
        if durable:
            _sync_folder(folder)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _sync_folder(folder: str) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def save_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda stream: stream.write(data))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    atomic_write(path, lambda stream: np.save(stream, array))


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda stream: np.savez(stream, **arrays))


def save_json(path: str | os.PathLike, data: dict) -> None:
    text = json.dumps(data, indent=2, allow_nan=False, default=_plain)
    save_bytes(path, text.encode() + b"\n")


# Bytes of a name part in a file name; file systems allow 255 bytes for the whole name.
NAME_BYTES = 64


def safe_name(name: str) -> str:
    """`name` (an input's) as part of a file name: other characters than letters, digits and
    -_. become _, and a long name is cut to its start plus a hash of the whole, so distinct
    names stay distinct and every file name fits the system's limit."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    if len(safe.encode()) <= NAME_BYTES:
        return safe
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    start = safe.encode()[:NAME_BYTES - 13].decode(errors="ignore")  # whole characters only
    return f"{start}-{digest}"


def umask() -> int:
    """The process's umask (what new files' and folders' modes leave out)."""
    # The only portable way to read the umask is to set it and put it back.
    current = os.umask(0o022)
    os.umask(current)
    return current


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
