"""Canonicalising rewrites run on load: fused, quantized and newer-opset ops replaced by the
standard ops they stand for, so that the backward rules, the taps and the attention locator
see ordinary graphs.

One module per rewrite family in this package; each registers its decompositions with
`decomposes(domain, op_type)` and is imported here automatically. A decomposition receives a
Rewrite (the node, a GraphIndex of the model built once per round, and `op`/`const` to emit
standard nodes and initializers) and returns the node's replacement (usually
`rewrite.nodes`): nodes whose outputs carry the fused node's output names. A case it cannot
express raises `rewrite.refuse(case)`, a ModelError naming the node, its attributes and the
case; one that needs what a later round will know (the shape of an input that another fused
op produces) raises `rewrite.later(case)`, and the node waits for that round.
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
from ..shapes import TensorInfo, constant_node_value, infer_shapes, tensor_infos
from ..weights import tensor_value

Decomposition = Callable[["Rewrite"], list[onnx.NodeProto]]
DECOMPOSITIONS: dict[tuple[str, str], Decomposition] = {}


def decomposes(domain: str, op_type: str) -> Callable[[Decomposition], Decomposition]:
    """Register `function` as the decomposition of (domain, op_type) ('' is ai.onnx)."""
    def register(function: Decomposition) -> Decomposition:
        DECOMPOSITIONS[(_domain(domain), op_type)] = function
        return function
    return register


class Later(Exception):  # noqa: N818 - a signal to the driver, never seen by users
    """A decomposition waits for the next round (see Rewrite.later)."""

    def __init__(self, error: ModelError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class GraphIndex:
    """The model's tensors by name for one canonicalisation round, built once (the graph does
    not change within a round: replacements are spliced in at its end) so that no question a
    decomposition asks scans the graph: declared types and shapes (inputs, outputs,
    value_info, initializers, Constants), constant values, producers and readers. Shape
    inference runs at most once a round, on the first question only it can answer."""

    model: onnx.ModelProto
    declared: dict[str, TensorInfo]
    initializers: dict[str, onnx.TensorProto]
    producers: dict[str, onnx.NodeProto]
    readers: dict[str, list[onnx.NodeProto]]
    outputs: frozenset[str]
    _values: dict[str, np.ndarray | None] = field(default_factory=dict)
    _inferred: dict[str, TensorInfo] | None = None

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphIndex:
        graph = model.graph
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in set(node.input):
                readers.setdefault(name, []).append(node)
        return cls(model, tensor_infos(model), {i.name: i for i in graph.initializer},
                   {out: node for node in graph.node for out in node.output}, readers,
                   frozenset(o.name for o in graph.output))

    def value(self, name: str) -> np.ndarray | None:
        """An initializer's or a Constant's value (converted once); None if computed."""
        if name not in self._values:
            init, node = self.initializers.get(name), self.producers.get(name)
            self._values[name] = (
                tensor_value(init) if init is not None
                else constant_node_value(node) if node is not None and node.op_type == "Constant"
                else None)
        return self._values[name]

    def elem_type(self, name: str) -> int | None:
        """The element type the model states for `name`, else None."""
        info = self.declared.get(name)
        return info.dtype if info is not None else None

    def info(self, name: str) -> TensorInfo | None:
        """Type and shape: as declared, else by shape inference (ONNX Runtime's symbolic
        inference knows the contrib ops)."""
        known = self.declared.get(name)
        if known is not None and known.shape is not None:
            return known
        if self._inferred is None:
            self._inferred = infer_shapes(self.model)
        return self._inferred.get(name)


@dataclass
class Rewrite:
    """What a decomposition sees: the node and the round's index of the model (read-only),
    and where it emits the replacement: `op` appends a node to `nodes`, `const` adds an
    initializer."""

    node: onnx.NodeProto
    index: GraphIndex
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _count: int = 0

    @property
    def model(self) -> onnx.ModelProto:
        return self.index.model

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
        own = next((init for init in self.initializers if init.name == name), None)
        return numpy_helper.to_array(own) if own is not None else self.index.value(name)

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

    def later(self, case: str) -> Later:
        """The signal (raise it) that the decomposition needs a fact about its inputs that
        the next round may know, once their producers are standard ops; `case` is the
        refusal if no round will."""
        return Later(self.refuse(case))

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
    budget, limit = 8, 8 + len(model.graph.node)  # decompositions nest a few levels at most
    while budget > 0 and limit > 0:
        if not needs_canonicalising(model):
            return model
        decomposed, waiting = _round(model)
        if waiting and not decomposed:  # nothing left that could tell them more
            raise waiting[0].error
        budget, limit = budget - (not waiting), limit - 1  # waiting rounds are not nesting
    raise ModelError("canonicalisation did not converge: a decomposition keeps producing "
                     "ops that need decomposing")


def _round(model: onnx.ModelProto) -> tuple[int, list[Later]]:
    """Decompose every node that has a decomposition, against one index of the graph; a
    node whose decomposition waits (Later) stays for the next round. Returns how many were
    decomposed and the waits."""
    graph = model.graph
    nodes, added, index, waiting, decomposed = [], [], GraphIndex.of(model), [], 0
    for node in graph.node:
        function = DECOMPOSITIONS.get((_domain(node.domain), node.op_type))
        if function is None:
            nodes.append(node)
            continue
        rewrite = Rewrite(node, index)
        try:
            nodes.extend(function(rewrite))  # usually rewrite.nodes
        except Later as later:
            nodes.append(node)
            waiting.append(later)
            continue
        added.extend(rewrite.initializers)
        decomposed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    return decomposed, waiting


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
