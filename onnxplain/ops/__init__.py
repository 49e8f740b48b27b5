"""Operators onnxplain adds to models, as ONNX model-local functions with numpy references."""

from . import epsilon_softmax

__all__ = ["epsilon_softmax"]
