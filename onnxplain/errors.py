"""Typed errors. Every message is one line that names the problem."""

from __future__ import annotations


class OnnxplainError(Exception):
    """Base class of every error onnxplain raises on purpose."""


class ModelError(OnnxplainError):
    """The model file is missing, unreadable or not a valid ONNX model."""


class InputError(OnnxplainError):
    """Inputs, targets or options do not fit the model."""


class UnsupportedOpError(OnnxplainError):
    """Ops on the differentiated path that have no backward rule, all listed at once."""

    def __init__(self, missing: list[MissingRule]):
        self.missing = list(missing)
        groups: dict[tuple, list[str]] = {}
        for item in self.missing:
            key = (item.domain or "ai.onnx", item.op_type, item.opset, item.reason)
            groups.setdefault(key, []).append(item.node)
        parts = []
        for (domain, op_type, opset, reason), nodes in groups.items():
            where = ", ".join(f"'{node}'" for node in nodes)
            noun = "node" if len(nodes) == 1 else f"{len(nodes)} nodes"
            text = f"{domain}::{op_type} (opset {opset}) at {noun} {where}"
            parts.append(f"{text} ({reason})" if reason else text)
        count = len(self.missing)
        noun = "node has" if count == 1 else "nodes have"
        super().__init__(f"{count} {noun} no backward rule: {'; '.join(parts)}")


class SessionLoadError(OnnxplainError):
    """ONNX Runtime could not make a session of the model or of a program built from it."""


class RuntimeMissingError(OnnxplainError, ImportError):
    """Neither onnxruntime nor onnxruntime-gpu is installed."""


class InputWarning(UserWarning):
    """Inputs that can be explained but probably should not be (NaN, Inf)."""


class ExportWarning(UserWarning):
    """An exported explainer that some runtimes need told how to load."""


class AttributionWarning(UserWarning):
    """A result not to be read as it stands: every attribution of a row is 0, or the
    predicted class of a row is tied with another."""


class MissingRule:
    """One node without a backward rule, with the reason when a rule exists but does not apply."""

    __slots__ = ("domain", "op_type", "opset", "node", "reason")

    def __init__(self, domain: str, op_type: str, opset: int, node: str, reason: str = ""):
        self.domain, self.op_type, self.opset, self.node, self.reason = (
            domain, op_type, opset, node, reason)

    def describe(self) -> str:
        domain = self.domain or "ai.onnx"
        text = f"{domain}::{self.op_type} (opset {self.opset}) at node '{self.node}'"
        return f"{text}: {self.reason}" if self.reason else text

    def as_dict(self) -> dict:
        return {"domain": self.domain or "ai.onnx", "op_type": self.op_type,
                "opset": self.opset, "node": self.node, "reason": self.reason}
