"""In CI a reference test must fail, not skip, when its dependency is missing."""

from __future__ import annotations

import pytest

from .conftest import require

MISSING = "onnxplain_no_such_reference_package"


def test_missing_reference_dependency_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must install the test extras"):
        require(MISSING)


def test_missing_reference_dependency_skips_elsewhere(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        require(MISSING)


def test_present_dependency_is_returned():
    assert require("numpy").__name__ == "numpy"
