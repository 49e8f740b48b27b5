"""The installed version, from the package metadata (pyproject.toml is the one source)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onnxplain")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0+unknown"
