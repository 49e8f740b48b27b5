"""Canonicalising rewrites run on load: fused, quantized and newer-opset ops replaced by the
standard ops they stand for, so that the backward rules, the taps and the attention locator
see ordinary graphs.

One module per rewrite family in this package; each registers its decompositions with
`decomposes(domain, op_type)` and is imported here automatically. A decomposition receives a
Rewrite (the node, the model, and `op`/`const` to emit standard nodes and initializers) and
returns the node's replacement (usually `rewrite.nodes`): nodes whose outputs carry the fused
node's output names. A case it cannot express raises `rewrite.refuse(case)`, a ModelError
naming the node, its attributes and the case.
"""

from __future__ import annotations

import importlib
import itertools
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import ModelError
from ..shapes import constant_node_value

Decomposition = Callable[["Rewrite"], list[onnx.NodeProto]]
DECOMPOSITIONS: dict[tuple[str, str], Decomposition] = {}


def decomposes(domain: str, op_type: str) -> Callable[[Decomposition], Decomposition]:
    """Register `function` as the decomposition of (domain, op_type) ('' is ai.onnx)."""
    def register(function: Decomposition) -> Decomposition:
        DECOMPOSITIONS[(_domain(domain), op_type)] = function
        return function
    return register


@dataclass
class Rewrite:
    """What a decomposition sees: the node and the model (read-only), and where it emits the
    replacement: `op` appends a node to `nodes`, `const` adds an initializer."""

    node: onnx.NodeProto
    model: onnx.ModelProto
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0

    @property
    def opset(self) -> int:
        """The model's ai.onnx opset: emitted ops must exist in this version."""
        return next(e.version for e in self.model.opset_import if e.domain in ("", "ai.onnx"))

    def input(self, index: int) -> str:
        """The node's input `index`, '' when absent."""
        return self.node.input[index] if index < len(self.node.input) else ""

    def output(self, index: int) -> str:
        """The node's output `index`, '' when absent."""
        return self.node.output[index] if index < len(self.node.output) else ""

    def static(self, name: str) -> np.ndarray | None:
        """The value of an initializer (the model's or this rewrite's) or of a Constant's
        output; None for a computed tensor."""
        for init in (*self.model.graph.initializer, *self.initializers):
            if init.name == name:
                return numpy_helper.to_array(init)
        for node in self.model.graph.node:
            if node.op_type == "Constant" and name in node.output:
                return constant_node_value(node)
        return None

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        """Emit one standard node; returns its output (`out`, else a fresh name)."""
        return self.multi(op_type, inputs, [out or self.fresh(op_type.lower())], **attrs)[0]

    def multi(self, op_type: str, inputs, outputs: list[str], **attrs) -> list[str]:
        """Emit one standard node with several outputs ('' for an absent optional one)."""
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                           name=self.fresh(op_type), **attrs))
        return list(outputs)

    def const(self, value, label: str = "const") -> str:
        """An initializer holding `value` (a numpy array); returns its name."""
        name = self.fresh(label)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def attr(self, name: str, default=None):
        for attribute in self.node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def fresh(self, label: str) -> str:
        """A tensor or node name unique to this node's replacement (unnamed nodes get a
        number of their own, so two of them never share names)."""
        self._count += 1
        if not self.node.name:
            self.node.name = f"{self.node.op_type}_{next(_UNNAMED)}"
        return f"{self.node.name}/canonical/{label}_{self._count}"

    def refuse(self, case: str) -> ModelError:
        """The error for a case the decomposition does not cover (raise it)."""
        attrs = ", ".join(f"{a.name}={_plain(helper.get_attribute_value(a))!r}"
                          for a in self.node.attribute) or "no attributes"
        return ModelError(f"cannot canonicalise {self.node.domain or 'ai.onnx'}::"
                          f"{self.node.op_type} node '{self.node.name}' ({attrs}): {case}")


def needs_canonicalising(model: onnx.ModelProto) -> bool:
    _load_modules()
    return any((_domain(n.domain), n.op_type) in DECOMPOSITIONS for n in model.graph.node)


def canonicalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every main-graph node that has a decomposition, in place and at its position
    (repeatedly: a replacement may itself contain ops to decompose); returns the model."""
    _load_modules()
    graph = model.graph
    for _ in range(8):  # decompositions nest a few levels at most
        if not needs_canonicalising(model):
            return model
        nodes, added = [], []
        for node in graph.node:
            function = DECOMPOSITIONS.get((_domain(node.domain), node.op_type))
            if function is None:
                nodes.append(node)
                continue
            rewrite = Rewrite(node, model)
            nodes.extend(function(rewrite))  # usually rewrite.nodes
            added.extend(rewrite.initializers)
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(added)
    raise ModelError("canonicalisation did not converge: a decomposition keeps producing "
                     "ops that need decomposing")


def _plain(value):
    """String attributes as text, not bytes, in messages."""
    return value.decode() if isinstance(value, bytes) else value


_UNNAMED = itertools.count()


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


_LOADED = False


def _load_modules() -> None:
    """Import every module of this package once: each registers its decompositions."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
