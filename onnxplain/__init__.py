"""onnxplain: explain any exported ONNX model without the framework it came from.

    >>> import onnxplain
    >>> explainer = onnxplain.Explainer("model.onnx")
    >>> attribution = explainer.explain(x, method="saliency", target=3)
    >>> generation = onnxplain.generate(onnxplain.Explainer("lm.onnx"), prompt_ids, steps=5)
"""

from __future__ import annotations

from . import _ort  # noqa: F401 - fails early, with one message, when no runtime is installed
from ._version import __version__
from .attribution import Attribution
from .concepts import tcav
from .dataset import explain_dataset
from .errors import (
    ExportWarning,
    InputError,
    InputWarning,
    ModelError,
    OnnxplainError,
    RuntimeMissingError,
    UnsupportedOpError,
)
from .explainer import Explainer

# The module is `generation`, not `generate`: a module named like the function would be
# shadowed by it (`import onnxplain.generate as m` gave the function, mock.patch missed).
from .generation import Generation, GenerationStep, generate
from .methods import METHODS
from .runtime.batching import RunPolicy
from .runtime.engine import BatchNotice

__all__ = [
    "METHODS",
    "Attribution",
    "BatchNotice",
    "Explainer",
    "explain_dataset",
    "Generation",
    "GenerationStep",
    "InputError",
    "ExportWarning",
    "InputWarning",
    "ModelError",
    "OnnxplainError",
    "RunPolicy",
    "RuntimeMissingError",
    "UnsupportedOpError",
    "__version__",
    "generate",
    "tcav",
]
