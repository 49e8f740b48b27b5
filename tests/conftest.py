"""Shared fixtures: model-zoo models, and reference dependencies that CI may not skip."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # model_zoo is a top-level folder, not an installed package


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(module: str):
    """Import a reference dependency; a missing one fails in CI and skips elsewhere."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        message = f"reference dependency '{module}' is not installed ({err})"
        if in_ci():
            pytest.fail(message + ": CI must install the test extras", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def zoo():
    """The model_zoo package, with torch required (it builds the models)."""
    require("torch")
    import model_zoo

    return model_zoo


@pytest.fixture(scope="session")
def digits_path(zoo) -> Path:
    return zoo.model_path("digits_cnn")


@pytest.fixture(scope="session")
def digits_split(zoo):
    """scikit-learn's digits as the zoo's digits CNN was trained on them: x_train, y_train,
    x_test, y_test."""
    from model_zoo.digits import digits_data

    return digits_data()


@pytest.fixture()
def session_rows(monkeypatch) -> list[int]:
    """Rows of every ONNX Runtime session run from now on (the first feed's first axis)."""
    from onnxplain.runtime.session import Session

    seen: list[int] = []
    run = Session.run

    def counted(self, names, feeds):
        seen.append(int(next(iter(feeds.values())).shape[0]))
        return run(self, names, feeds)

    monkeypatch.setattr(Session, "run", counted)
    return seen


@pytest.fixture(scope="session")
def chromium() -> str:
    """Headless Chromium's binary (installed with apt-get when missing and we are root)."""
    from .viz.chromium import find_chromium, install_chromium

    binary = find_chromium()
    why = "no chromium on PATH"
    if binary is None:
        binary, why = install_chromium()
    if binary is None:
        message = f"headless Chromium is not available ({why})"
        if in_ci():
            pytest.fail(message + ": CI must be able to install Debian's chromium",
                        pytrace=False)
        pytest.skip(message)
    return binary
