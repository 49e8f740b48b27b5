"""onnxplain: explain any exported ONNX model without the framework it came from.

    >>> import onnxplain
    >>> explainer = onnxplain.Explainer("model.onnx")
    >>> attribution = explainer.explain(x, method="saliency", target=3)
"""

from __future__ import annotations

from . import _ort  # noqa: F401 - fails early, with one message, when no runtime is installed
from ._version import __version__
from .attribution import Attribution
from .engine import BatchNotice
from .errors import (
    InputError,
    InputWarning,
    ModelError,
    OnnxplainError,
    RuntimeMissingError,
    UnsupportedOpError,
)
from .explainer import Explainer
from .methods import METHODS

__all__ = [
    "METHODS",
    "Attribution",
    "BatchNotice",
    "Explainer",
    "InputError",
    "InputWarning",
    "ModelError",
    "OnnxplainError",
    "RuntimeMissingError",
    "UnsupportedOpError",
    "__version__",
]
