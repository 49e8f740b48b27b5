"""LRP rules for layers with weights (Conv, ConvTranspose, Gemm, MatMul), by the gradient trick.

Notation of Montavon, Binder, Lapuschkin, Samek, Müller, "Layer-wise relevance propagation:
an overview" (2019): a layer z_k = b_k + sum_j x_j w_jk receives the relevance R_k of its
outputs and returns R_j for its active input x. Every rule has the form

    R_j = sum_k x'_j w'_jk R_k / stab(z'_k),    z'_k = b'_k + sum_j x'_j w'_jk

for a modified input x', weights w' and bias b', where stab(z) = z + eps * sign(z) with
sign(0) = 1 keeps the division finite. The "gradient trick" (Zennit; Anders et al. 2021,
arXiv:2106.13200) computes sum_k w'_jk s_k as the vector-Jacobian product of the layer with
weights w', that is the layer's ordinary backward rule (GRADIENT) applied to a copy of the node
whose weight input is w'. So R_x = x' * VJP_w'(R / stab(z')), with z' one more forward of the
layer, and no rule re-derives convolution geometry. The modified weights are graph ops on the
model's own weight tensors (Relu, Sub, Mul, a Cast-Mul-Cast for a merged BatchNormalization):
where the weights are initializers ONNX Runtime folds them once when the session starts, so an
exported explainer stores no modified copies.

Gemm's alpha and beta are folded into the weight and bias, so that w+ and w- refer to the
weights the layer really applies.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autodiff import GRADIENT, NodeContext
from ..graph.builder import GraphBuilder
from ..graph.op_kinds import (
    AVERAGE_POOLS,
    CONCATS,
    CONVOLUTIONS,
    DROPOUT,
    MAX_POOLS,
    NON_NEGATIVE_RESULTS,
    VALUE_MOVERS,
)
from .lrp_merge import Merged

# Ops that keep a tensor non-negative when their input 0 is: a layer reading such a tensor
# needs no x- terms in the rules that split inputs by sign (Concat reads other inputs too).
_SIGN_KEEPING = (VALUE_MOVERS - CONCATS) | DROPOUT | MAX_POOLS | AVERAGE_POOLS


@dataclass(frozen=True, eq=False)
class LayerRule:
    """One LRP rule with its parameters, as a composite assigns it to one layer.

    kind: "epsilon", "gamma", "z-plus", "alpha-beta", "flat", "w-square" or "box".
    `low` and `high` (box only) broadcast against the layer's input.
    """

    kind: str
    epsilon: float = 0.0
    gamma: float = 0.0
    alpha: float = 1.0
    beta: float = 0.0
    low: np.ndarray | str | None = None  # or a program input [rows, *bound] (box_rule)
    high: np.ndarray | str | None = None

    @property
    def label(self) -> str:
        if self.kind == "epsilon":
            return f"epsilon({self.epsilon:g})"
        if self.kind == "gamma":
            return f"gamma({self.gamma:g})"
        if self.kind == "alpha-beta":
            return f"alpha-beta({self.alpha:g}, {self.beta:g})"
        if self.kind == "box":
            return f"box({_describe(self.low)}, {_describe(self.high)})"
        return self.kind

    def key(self) -> str:
        """The label plus the exact bounds: what decides the emitted graph."""
        if self.kind != "box":
            return self.label
        bounds = (np.asarray(self.low), np.asarray(self.high))
        return self.label + "".join(f"{a.shape}{a.tobytes().hex()}" for a in bounds)

    def relevance(self, layer: Layer, r: str, stabilizer: float) -> str:
        """R at the layer's active input, from the relevance r of its output."""
        return _RULES[self.kind](layer, r, self, stabilizer)


def _describe(bound: np.ndarray | str | None) -> str:
    if isinstance(bound, str):
        return f"input '{bound}'"
    value = np.asarray(bound)
    return f"{float(value.reshape(-1)[0]):g}" if value.size == 1 else f"array{list(value.shape)}"


# ---- the layer: its input, weights and bias, modified on demand ---------------------------
class Layer:
    """A weighted node: the active input x, the weight w and the bias, with the forward and
    the vector-Jacobian product of the same node under modified weights. With `merged`, the
    BatchNormalization after the node is part of the layer (rules/lrp_merge.py)."""

    def __init__(self, c: NodeContext, merged: Merged | None = None):
        self.c, self.b = c, c.b
        self.merged = merged
        self.y = merged.output if merged is not None else c.y()
        op = c.node.op_type
        self.op = op
        self.xi = 0 if op in CONVOLUTIONS or c.need(0) else 1
        self.wi = 1 - self.xi
        self.x, self.w = c.x(self.xi), c.x(self.wi)
        self.bias_name = c.x(2) if op != "MatMul" else ""
        gemm = op == "Gemm"
        self.scale = float(c.attr("alpha", 1.0)) if gemm else 1.0
        self.bias_scale = float(c.attr("beta", 1.0)) if gemm else 1.0

    def weight(self, how: str, gamma: float = 0.0) -> str:
        if self.merged is not None:
            return modified(self.b, merged_weight(self.b, self.merged), how, 1.0, gamma)
        return modified(self.b, self.w, how, self.scale, gamma)

    def bias(self, how: str, gamma: float = 0.0) -> str | None:
        if self.merged is not None:
            return self.b.const(_NUMPY[how](self.merged.bias, gamma), "lrp_" + how)  # small
        if not self.bias_name:
            return None
        return modified(self.b, self.bias_name, how, self.bias_scale, gamma)

    def forward(self, x: str, w: str, bias: str | None) -> str:
        """The node again, on input x with weights w and bias (None: no bias)."""
        b = self.b
        inputs = [x, w] if self.xi == 0 else [w, x]
        if bias is not None:
            inputs.append(bias)
        elif self.op == "Gemm" and b.opset < 11:  # C is optional from opset 11 only
            inputs.append(b.scalar(0.0, x))
        out = b.fresh(self.op)
        b.graph.node.append(self._copy(inputs, [out]))
        b.infos[out] = b.info(self.y)
        return out

    def vjp(self, w: str, g: str) -> str:
        """sum_k w_jk g_k: the node's ordinary backward rule for x, with weights w."""
        inputs = list(self.c.node.input)
        inputs[self.wi] = w
        node = self._copy(inputs[:2], list(self.c.node.output))
        needs = tuple(i == self.xi for i in range(2))
        entry = GRADIENT.lookup(node.domain, node.op_type, self.b.opset)
        assert entry is not None  # the LRP rule set only reaches here for ops GRADIENT knows
        grad = entry.rule(NodeContext(self.b, node, needs), [g])[self.xi]
        assert grad is not None
        return grad

    def _copy(self, inputs: list[str], outputs: list[str]) -> onnx.NodeProto:
        """A node like this one on other tensors; Gemm's alpha and beta set to 1 (folded)."""
        node = helper.make_node(self.op, inputs, outputs, name=self.b.fresh("lrp_" + self.op),
                                domain=self.c.node.domain or None)
        folded = ("alpha", "beta") if self.op == "Gemm" else ()
        node.attribute.extend(a for a in self.c.node.attribute if a.name not in folded)
        return node


_NUMPY: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "same": lambda w, gamma: w,
    "plus": lambda w, gamma: np.maximum(w, 0),
    "minus": lambda w, gamma: np.minimum(w, 0),
    "gamma": lambda w, gamma: w + gamma * np.maximum(w, 0),
    "square": lambda w, gamma: w * w,
    "ones": lambda w, gamma: np.ones_like(w),
}


def modified(b: GraphBuilder, name: str, how: str, scale: float = 1.0,
             gamma: float = 0.0) -> str:
    """scale * tensor `name`, modified: "same", "plus" (w+), "minus" (w-), "gamma"
    (w + gamma w+), "square" (w^2) or "ones", computed in the graph from `name`. Where `name`
    is constant the result is marked folded (b.folded): ONNX Runtime computes it once."""
    if how == "same" and scale == 1.0:
        return name

    def make() -> str:
        t = name if scale == 1.0 else b.op("Mul", name, b.scalar(scale, name))
        out = _graph_modified(b, t, how, gamma)
        b.infos[out] = b.info(name)  # shape facts, e.g. the kernel shape a Conv rule reads
        if static_value(b, name) is not None or name in b.folded:
            b.folded.add(out)
        return out
    return b.memo(("lrp_param", name, how, scale, gamma), make)


def merged_weight(b: GraphBuilder, merged: Merged) -> str:
    """The layer's weights times the merged BatchNormalization's per-channel factor, in
    float64 as the factor is (the product is rounded once, as numpy would round it)."""
    def make() -> str:
        w = merged.weight
        wide = b.op("Cast", w, to=onnx.TensorProto.DOUBLE)
        product = b.op("Mul", wide, b.const(merged.factor, "lrp_bn_factor"))
        out = b.op("Cast", product, to=b.dtype(w))
        b.infos[out] = b.info(w)
        b.folded.add(out)
        return out
    return b.memo(("lrp_merged", merged.output), make)


def _graph_modified(b: GraphBuilder, t: str, how: str, gamma: float) -> str:
    if how == "same":  # only reached with a scale, so t is a fresh Mul output
        return t
    if how == "plus":
        return b.op("Relu", t)
    if how == "minus":
        return b.op("Sub", t, b.op("Relu", t))
    if how == "gamma":
        return b.op("Add", t, b.op("Mul", b.op("Relu", t), b.scalar(gamma, t)))
    if how == "square":
        return b.op("Mul", t, t)
    return ones_like(b, t)


# Per builder: which node produced each tensor of the original graph (rules only ask about
# tensors of original nodes, which exist before any rule runs).
_PRODUCERS: weakref.WeakKeyDictionary[GraphBuilder, dict[str, onnx.NodeProto]] = \
    weakref.WeakKeyDictionary()


def producer(b: GraphBuilder, name: str) -> onnx.NodeProto | None:
    if b not in _PRODUCERS:
        _PRODUCERS[b] = {out: node for node in b.graph.node for out in node.output if out}
    return _PRODUCERS[b].get(name)


def static_value(b: GraphBuilder, name: str) -> np.ndarray | None:
    """The value of an initializer or Constant, also seen through Identity nodes."""
    for _ in range(8):
        value = b.static_value(name)
        if value is not None:
            return value
        node = producer(b, name)
        if node is None or node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            return None
        name = node.input[0]
    return None


def non_negative(b: GraphBuilder, name: str) -> bool:
    """Whether x >= 0 by construction (a ReLU output, maybe pooled or reshaped)."""
    for _ in range(16):
        node = producer(b, name)
        if node is None:
            value = static_value(b, name)
            return value is not None and bool(np.all(value >= 0))
        if node.op_type in NON_NEGATIVE_RESULTS:
            return True
        if node.op_type not in _SIGN_KEEPING:
            return False
        name = node.input[0]
    return False


# ---- graph helpers -------------------------------------------------------------------------
def ones_like(b: GraphBuilder, x: str) -> str:
    one = numpy_helper.from_array(np.ones(1, dtype=b.np_dtype(x)))
    out = b.memo(("lrp_ones", x), lambda: b.op("ConstantOfShape", b.shape(x), value=one))
    b.infos[out] = b.info(x)
    return out


def positive_part(b: GraphBuilder, x: str) -> str:
    return b.memo(("lrp_plus", x), lambda: b.op("Relu", x))


def negative_part(b: GraphBuilder, x: str) -> str:
    return b.memo(("lrp_minus", x), lambda: b.op("Sub", x, positive_part(b, x)))


def stabilize(b: GraphBuilder, z: str, eps: float) -> str:
    """z + eps * sign(z) with sign(0) = +1, so that no denominator is zero. The sign comes
    from a Cast of z < 0 (a Where with scalar branches is slower on ONNX Runtime's CPU)."""
    def make() -> str:
        negative = b.op("Cast", b.op("Less", z, b.scalar(0.0, z)), to=b.dtype(z))
        shift = b.op("Sub", b.scalar(eps, z), b.op("Mul", negative, b.scalar(2 * eps, z)))
        return b.op("Add", z, shift)
    return b.memo(("lrp_stabilize", z, eps), make)


def ratio(b: GraphBuilder, r: str, z: str, eps: float) -> str:
    """s = R / stab(z): the signal the vector-Jacobian products carry back."""
    return b.op("Div", r, stabilize(b, z, eps))


# ---- the rules ---------------------------------------------------------------------------
def epsilon_rule(layer: Layer, r: str, rule: LayerRule, stabilizer: float) -> str:
    """LRP-epsilon: R_j = sum_k x_j w_jk R_k / (z_k + eps sign(z_k)), z_k the layer's own
    output (bias included, so the bias absorbs its share)."""
    b = layer.b
    s = ratio(b, r, layer.y, rule.epsilon)
    return b.op("Mul", layer.x, layer.vjp(layer.weight("same"), s))


def gamma_rule(layer: Layer, r: str, rule: LayerRule, stabilizer: float) -> str:
    """LRP-gamma: w' = w + gamma w+ and b' = b + gamma b+;
    R_j = sum_k x_j w'_jk R_k / stab(b'_k + sum_j x_j w'_jk)."""
    b = layer.b
    w = layer.weight("gamma", rule.gamma)
    z = layer.forward(layer.x, w, layer.bias("gamma", rule.gamma))
    return b.op("Mul", layer.x, layer.vjp(w, ratio(b, r, z, stabilizer)))


def alpha_beta_rule(layer: Layer, r: str, rule: LayerRule, stabilizer: float) -> str:
    """LRP-alpha-beta (Bach et al. 2015), with (.)+ and (.)- the positive and negative parts:

        R_j = sum_k (alpha (x_j w_jk)+ / stab(z+_k) - beta (x_j w_jk)- / stab(z-_k)) R_k,
        z+_k = b+_k + sum_j (x_j w_jk)+,    z-_k = b-_k + sum_j (x_j w_jk)-.

    (x w)+ = x+ w+ + x- w- and (x w)- = x+ w- + x- w+, so each part is two forwards and two
    vector-Jacobian products; the x- terms are dropped where x >= 0 by construction.
    LRP-z+ is alpha = 1, beta = 0."""
    b, x = layer.b, layer.x
    signed = not non_negative(b, x)
    xp = positive_part(b, x)
    xn = negative_part(b, x) if signed else None
    wp, wn = layer.weight("plus"), layer.weight("minus")

    def part(w_pos: str, w_neg: str, bias: str | None) -> str:
        """sum over j of (x_j w_jk) taken from x+ with w_pos and from x- with w_neg."""
        z = layer.forward(xp, w_pos, bias)
        if xn is not None:
            z = b.op("Add", z, layer.forward(xn, w_neg, None))
        s = ratio(b, r, z, stabilizer)
        out = b.op("Mul", xp, layer.vjp(w_pos, s))
        if xn is not None:
            out = b.op("Add", out, b.op("Mul", xn, layer.vjp(w_neg, s)))
        return out

    result = part(wp, wn, layer.bias("plus"))
    if rule.alpha != 1.0:
        result = b.op("Mul", result, b.scalar(rule.alpha, x))
    if rule.beta != 0.0:
        against = part(wn, wp, layer.bias("minus"))
        result = b.op("Sub", result, b.op("Mul", against, b.scalar(rule.beta, x)))
    return result


def flat_rule(layer: Layer, r: str, rule: LayerRule, stabilizer: float) -> str:
    """Flat (Lapuschkin et al. 2019): every input of a receptive field gets an equal share,
    R_j = sum_k R_k / stab(number of inputs of k): inputs and weights set to one, no bias."""
    return _constant_input_rule(layer, r, layer.weight("ones"), stabilizer)


def w_square_rule(layer: Layer, r: str, rule: LayerRule, stabilizer: float) -> str:
    """w^2 (Montavon et al. 2017): R_j = sum_k w_jk^2 R_k / stab(sum_j w_jk^2), no bias."""
    return _constant_input_rule(layer, r, layer.weight("square"), stabilizer)


def _constant_input_rule(layer: Layer, r: str, w: str, stabilizer: float) -> str:
    b = layer.b
    ones = ones_like(b, layer.x)
    z = layer.forward(ones, w, None)
    return layer.vjp(w, ratio(b, r, z, stabilizer))


def _bound(b, value: np.ndarray | str, x: str) -> str:
    """A box bound in x's type: a constant, or row 0 of a program input [rows, *bound] (fed
    one row per row in-process, so a new bound is a new feed, not a new program)."""
    if not isinstance(value, str):
        return b.const(np.asarray(value, dtype=b.np_dtype(x)), "lrp_bound")
    row = b.op("Gather", value, b.const(np.asarray(0, np.int64), "row"), axis=0)
    return b.op("Cast", row, to=b.dtype(x))


def box_rule(layer: Layer, r: str, rule: LayerRule, stabilizer: float) -> str:
    """z^B (Montavon et al. 2017, Deep Taylor decomposition) for inputs bounded by l <= x <= h:

        R_j = sum_k (x_j w_jk - l_j w+_jk - h_j w-_jk) R_k / stab(z_k),
        z_k = sum_j (x_j w_jk - l_j w+_jk - h_j w-_jk)   (no bias).

    Computed as (x - l) w+ + (x - h) w-, where every product is >= 0: the three-term form
    cancels catastrophically in float32 wherever z_k is small against |l w+| + |h w-|."""
    b, x = layer.b, layer.x
    assert rule.low is not None and rule.high is not None
    above, below = (b.op("Sub", x, _bound(b, v, x)) for v in (rule.low, rule.high))
    b.infos[above] = b.infos[below] = b.info(x)
    wp, wn = layer.weight("plus"), layer.weight("minus")
    z = b.op("Add", layer.forward(above, wp, None), layer.forward(below, wn, None))
    s = ratio(b, r, z, stabilizer)
    return b.op("Add", b.op("Mul", above, layer.vjp(wp, s)), b.op("Mul", below, layer.vjp(wn, s)))


def z_plus_rule(layer: Layer, r: str, rule: LayerRule, stabilizer: float) -> str:
    """LRP-z+: alpha-beta with alpha = 1, beta = 0 (only positive contributions)."""
    return alpha_beta_rule(layer, r, LayerRule("alpha-beta", alpha=1.0, beta=0.0), stabilizer)


_RULES: dict[str, Callable[[Layer, str, LayerRule, float], str]] = {
    "epsilon": epsilon_rule,
    "gamma": gamma_rule,
    "z-plus": z_plus_rule,
    "alpha-beta": alpha_beta_rule,
    "flat": flat_rule,
    "w-square": w_square_rule,
    "box": box_rule,
}
RULE_KINDS = tuple(_RULES)
