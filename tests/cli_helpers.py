"""What the command-line tests share: running the click app in-process, and fingerprints of
a folder's files (to prove a command left the user's files alone)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from onnxplain_cli.main import main


def run(*args: str):
    """Run `onnxplain ARGS...`; Click 8.2+ keeps stderr apart from stdout."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def digests(folder: Path, recursive: bool = False) -> dict[str, str]:
    """sha256 of every file in `folder` (and below it, when `recursive`), by relative path."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files if p.is_file()}
