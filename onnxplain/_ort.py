"""The one place that imports ONNX Runtime, so a missing runtime fails with one clear message."""

from __future__ import annotations

from .errors import RuntimeMissingError

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - exercised in a subprocess by tests/test_packaging.py
    raise RuntimeMissingError(
        "onnxplain needs ONNX Runtime: install it with the 'gpu' extra "
        "(pip install 'onnxplain[gpu]', onnxruntime-gpu) or the 'cpu' extra "
        "(pip install 'onnxplain[cpu]', onnxruntime); never both"
    ) from None

__all__ = ["ort"]
