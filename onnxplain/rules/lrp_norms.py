"""LayerNorm and RMSNorm written out as primitive ops, found so that relevance rules can give
them the rule of the LayerNormalization / RMSNormalization ops.

Exporters at older opsets (and many decoders at any opset) write the normalisations as

    LayerNorm:  c = x - ReduceMean(x);  y = c / Sqrt(ReduceMean(c^2) + eps)
    RMSNorm:    y = x * Reciprocal(Sqrt(ReduceMean(x^2) + eps))   (or x / Sqrt(...), or
                x * Div(1, Sqrt(...)) as the legacy torch exporter writes Llama's)
    L2 norm:    y = x / Pow(ReduceSum(x^2), 0.5)   (CLIP's embeddings before their dot product;
                Sqrt for the Pow, an eps Add allowed), or F.normalize's
                y = x / Expand(Clip(ReduceL2(x), eps))

(c^2 as Pow(c, 2) or Mul(c, c); the scale and shift follow as a constant Mul and Add, whose
rules already pass relevance). Chefer et al. (CVPR 2021) hold the normalisation's statistics
constant, so relevance passes the op unchanged to x; for a chain that means: the Div or Mul
hands all its relevance to the numerator, the centring Sub all of it to x, and the mean and
the denominator branch get none. The L2 normalisation x / ||x|| gets the same rule: its norm
is held as a constant scale (as LayerNorm's standard deviation is), so relevance passes
proportionally through the division to x. `norm_chains` finds every such chain in a graph
once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import onnx

from ..graph.builder import GraphBuilder
from .lrp_layers import static_value


@dataclass(frozen=True)
class NormChains:
    """relevance_to: output of a chain's scaling Div/Mul or centring Sub -> the input index
    that receives all its relevance; held: outputs of the nodes the rule holds constant (the
    mean, the squares, their mean, eps, the root and its reciprocal)."""

    relevance_to: dict[str, int]
    held: frozenset[str]


_CHAINS: weakref.WeakKeyDictionary[GraphBuilder, NormChains] = weakref.WeakKeyDictionary()


def divides_by_statistic(c) -> bool:
    """Whether a Div's divisor is constant or a normalisation's statistic (the rules hold it),
    rather than an activation (c: an autodiff NodeContext)."""
    chains = norm_chains(c.b)
    return not c.need(1) or c.y() in chains.relevance_to or c.y() in chains.held


def norm_chains(b: GraphBuilder) -> NormChains:
    """The normalisation chains among the model's nodes in b's graph (once per builder)."""
    if b not in _CHAINS:
        _CHAINS[b] = _Matcher(b).chains()
    return _CHAINS[b]


class _Matcher:
    def __init__(self, b: GraphBuilder):
        self.b = b
        # The model's own nodes: earlier gradient passes of the same program may already have
        # appended theirs (named under the builder's prefix), which read the statistics too.
        emitted = b.prefix + "/"
        self.nodes = [n for n in b.graph.node if not n.name.startswith(emitted)]
        self.producers = {out: n for n in self.nodes for out in n.output if out}
        self.uses: dict[str, int] = {}
        for node in self.nodes:
            for name in node.input:
                self.uses[name] = self.uses.get(name, 0) + 1
        for output in b.graph.output:
            self.uses[output.name] = self.uses.get(output.name, 0) + 1

    def chains(self) -> NormChains:
        relevance_to: dict[str, int] = {}
        held: set[str] = set()
        for node in self.nodes:
            if node.domain not in ("", "ai.onnx") or node.op_type not in ("Div", "Mul"):
                continue
            found = self._scaling(node)
            if found is None:
                continue
            index, statistics = found
            relevance_to[node.output[0]] = index
            held.update(out for n in statistics for out in n.output if out)
            centring = self._centring(node.input[index])
            if centring is not None:
                sub, mean = centring
                relevance_to[sub.output[0]] = 0
                held.add(mean.output[0])
        return NormChains(relevance_to, frozenset(held))

    def _scaling(self, node: onnx.NodeProto) -> tuple[int, list[onnx.NodeProto]] | None:
        """(index of the numerator, the denominator's nodes) when `node` divides by the root
        mean square of its numerator."""
        if len(node.input) != 2:
            return None
        if node.op_type == "Div":
            branch = self._root(node.input[1], node.input[0])
            return None if branch is None else (0, branch)
        for index in (0, 1):
            branch = self._reciprocal_root(node.input[1 - index], node.input[index])
            if branch is not None:
                return index, branch
        return None

    def _only(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The producer of `name` when it is an `op_type` node read by one node only."""
        node = self.producers.get(name)
        if node is None or node.op_type != op_type or self.uses.get(name, 0) != 1:
            return None
        return node

    def _reciprocal_root(self, name: str, numerator: str) -> list[onnx.NodeProto] | None:
        node = self._only(name, "Reciprocal")
        if node is None:
            node = self._only(name, "Div")
            if node is None or not _is_constant(self.b, node.input[0], 1.0):
                return None
        root = self._root(node.input[-1], numerator)
        return None if root is None else [node, *root]

    def _root(self, name: str, numerator: str) -> list[onnx.NodeProto] | None:
        """[root, (Add eps), mean or sum, square] for Sqrt(ReduceMean(numerator^2) + eps), the
        root also as Pow(., 0.5), the reduction also a ReduceSum and eps optional (the L2
        norm of x / ||x||)."""
        clamped = self._clamped_l2(name, numerator)
        if clamped is not None:
            return clamped
        root = self._only(name, "Sqrt") or self._only(name, "Pow")
        if root is None or (root.op_type == "Pow" and not _is_constant(self.b, root.input[1],
                                                                          0.5)):
            return None
        add = self._only(root.input[0], "Add")
        chain = [root]
        if add is not None:
            constants = [_is_constant(self.b, i) for i in add.input]
            if sorted(constants) != [False, True]:
                return None
            chain.append(add)
        reduced = add.input[constants.index(False)] if add is not None else root.input[0]
        mean = self._only(reduced, "ReduceMean") or self._only(reduced, "ReduceSum")
        square = None if mean is None else self.producers.get(mean.input[0])
        if square is None or self.uses.get(mean.input[0], 0) != 1:
            return None
        if not _squares(self.b, square, numerator):
            return None
        return [*chain, mean, square]

    def _clamped_l2(self, name: str, numerator: str) -> list[onnx.NodeProto] | None:
        """[Expand, Clip or Max, ReduceL2] (each optional but the ReduceL2) for
        Expand(Clip(ReduceL2(numerator), eps)): torch's F.normalize as exported."""
        chain = []
        node = self.producers.get(name)
        for op_type in ("Expand", "Clip", "Max"):
            if node is not None and node.op_type == op_type and self._wraps(node):
                chain.append(node)
                node = self.producers.get(node.input[0])
        if node is None or node.op_type != "ReduceL2" or node.input[0] != numerator:
            return None
        return [*chain, node] if self.uses.get(node.output[0], 0) == 1 else None

    def _wraps(self, node: onnx.NodeProto) -> bool:
        """Whether `node` is read once and its other inputs are constants (a shape for
        Expand): it only clamps or broadcasts its first input."""
        if self.uses.get(node.output[0], 0) != 1:
            return False
        return node.op_type == "Expand" or all(
            _is_constant(self.b, i) for i in node.input[1:] if i)

    def _centring(self, name: str) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
        """(Sub, ReduceMean) when `name` is x - ReduceMean(x)."""
        sub = self.producers.get(name)
        if sub is None or sub.op_type != "Sub":
            return None
        mean = self._only(sub.input[1], "ReduceMean")
        if mean is None or mean.input[0] != sub.input[0]:
            return None
        return sub, mean


def _squares(b: GraphBuilder, node: onnx.NodeProto, x: str) -> bool:
    if node.op_type == "Mul":
        return list(node.input) == [x, x]
    return node.op_type == "Pow" and node.input[0] == x and _is_constant(b, node.input[1], 2.0)


def _is_constant(b: GraphBuilder, name: str, value: float | None = None) -> bool:
    constant = static_value(b, name)
    if constant is None:
        return False
    return value is None or (constant.size == 1 and float(np.asarray(constant).reshape(-1)[0])
                             == value)
