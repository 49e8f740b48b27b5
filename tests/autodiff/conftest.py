"""Every test here sees onnx's reference evaluator with the corrections of reference_fixes.py."""

import pytest

from .reference_fixes import corrected_reference


@pytest.fixture(autouse=True)
def _corrected_reference():
    with corrected_reference():
        yield
