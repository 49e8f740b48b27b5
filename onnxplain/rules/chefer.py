"""The LRP that Transformer Attribution and partial LRP read attention relevance from.

Chefer, Gur, Wolf, "Transformer interpretability beyond attention visualization", CVPR 2021
(arXiv:2012.09838), propagate relevance through a transformer with these rules, which this
rule set applies op by op (what flows backward is relevance, seeded with the one-hot target):

- Weighted layers (MatMul/Gemm/Conv with constant weights): LRP-alpha-beta with alpha = 1,
  beta = 0 and the bias left out of z, R_x = x+ (W+ s) + x- (W- s), s = R / (x+ W+ + x- W-).
- Products of two activations (Q K^T, probabilities x V, and any other two-activation Mul):
  each operand gets half of its proportional share, R_a = a * VJP_a(R / z) / 2.
- A gate, x * f(x) with f elementwise (GELU, SiLU as exporters decompose them, also as
  (c x) * f(x), GPT-2's tanh GELU 0.5 x (1 + tanh(.. x + 0.044715 Pow(x, 3)))): all the
  relevance goes to x, as an activation passes it, and f's branch (its Pow included) none.
- Sums of two activations (residual connections): the proportional shares a * R / z and
  b * R / z, rescaled per row so that the two branches split sum(R) in the ratio of the
  absolute sums of their shares.
- Adding, multiplying or dividing by a constant (biases, masks, the 1/sqrt(d) scale),
  Neg, Softmax and activations: relevance passes unchanged.
- LayerNormalization and RMSNormalization, as ops or written out as primitive ops (found by
  rules/lrp_norms.py; RMSNorm's 1 / root also as Div(1, root) or Reciprocal): the statistics
  are held constant, so relevance passes unchanged to the normalised input and the mean and
  the denominator branch get none. The L2 normalisation x / ||x|| (CLIP's embeddings, ||x||
  as Pow(ReduceSum(x^2), 0.5), Sqrt, or F.normalize's clamped ReduceL2) is treated as
  LayerNorm's normalisation: the norm is a constant scale, so all relevance passes
  proportionally through the division to x.
- Quantize and dequantize ops (quantized models): relevance passes unchanged, the
  straight-through estimator's rule for relevance (autodiff/ops/quantize.py).
- Resize (nearest, linear, cubic; up or down): linear in its input, so the z-rule through the
  interpolation weights, R_x = x * M^T (R / M x), which conserves relevance since each
  output's weights sum to 1.
- Reshapes and selections (including taking the class token): their gradient rule.
Every other op is refused, so no relevance is silently made up.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx

from ..autodiff import GRADIENT, NodeContext, RuleSet
from ..autodiff.ops.quantize import STRAIGHT_THROUGH, relevance_straight_through
from ..autodiff.registry import Grad, RuleEntry
from ..graph.builder import HALF_TYPES, GraphBuilder
from ..graph.op_kinds import (
    ARITHMETIC,
    CASTS,
    CONV,
    DENSE,
    ERF,
    FEATURE_NORMS,
    GATE_FUNCTIONS,
    GROUP_NORMS,
    IDENTITY,
    INFERENCE_IDENTITIES,
    NEGATION,
    NORM_STATISTICS,
    POOLED_SUMS,
    POWERS,
    SCALINGS,
    SUMS,
    UNARY_MATH,
)
from .lrp import GRADIENT_KEPT, PASS_THROUGH, both_supports
from .lrp_layers import Layer, negative_part, positive_part, producer, static_value
from .lrp_norms import divides_by_statistic, norm_chains

# Chefer et al.'s safe_divide: a / (b + 1e-9), 0 where b == 0. Unlike z + eps sign(z), the
# shift is always positive; near-zero negative denominators make the two differ visibly.
STABILIZER = 1e-9
# ConvTranspose is left out: _product holds only a Conv's weights constant by op type.
_WEIGHTED = DENSE | CONV
# Cast is left to its gradient rule, which casts the relevance to the input's type (float16
# layers under float32 logits, as keep_io_types writes them).
_UNCHANGED = PASS_THROUGH | ERF | INFERENCE_IDENTITIES | NEGATION | GROUP_NORMS
_NORMALISATIONS = FEATURE_NORMS
# Ops that, in a normalisation written out as primitive ops, compute only the statistics the
# rule holds constant (the rest of the chain, ReduceMean and Add, have rules of their own),
# or, in a gate x * f(x), only f (GPT-2's Pow(x, 3)): accepted there alone, they get none.
_STATISTICS = NORM_STATISTICS
# Elementwise ops a gate f(x) may be built from.
_ELEMENTWISE = ARITHMETIC | POWERS | UNARY_MATH | GATE_FUNCTIONS | CASTS | IDENTITY


class CheferRuleSet(RuleSet):
    """GRADIENT with the relevance rules above."""

    def __init__(self) -> None:
        super().__init__(name="lrp/chefer", parent=GRADIENT)

    def lookup(self, domain: str, op_type: str, opset: int) -> RuleEntry | None:
        entry = super().lookup(domain, op_type, opset)
        if entry is None or domain not in ("", "ai.onnx"):
            return None if entry is None else RuleEntry(entry.since, entry.rule, _refused)
        rule = {**dict.fromkeys(_WEIGHTED, _product), **dict.fromkeys(SUMS, _sum),
                **dict.fromkeys(SCALINGS, _scaling),
                **dict.fromkeys(POOLED_SUMS, _proportional)}.get(op_type)
        if op_type == "Div":
            return RuleEntry(entry.since, rule, both_supports(entry.supports, _divisor_constant))
        if rule is not None:
            return RuleEntry(entry.since, rule, entry.supports)
        if op_type in _NORMALISATIONS:
            return RuleEntry(entry.since, _normalised, entry.supports)
        if op_type in _STATISTICS:
            return RuleEntry(entry.since, _held, _statistics_only)
        if op_type in _UNCHANGED:
            return RuleEntry(entry.since, _pass_through, entry.supports)
        if op_type in STRAIGHT_THROUGH:
            return RuleEntry(entry.since, relevance_straight_through, entry.supports)
        if op_type in GRADIENT_KEPT:
            return entry
        return RuleEntry(entry.since, entry.rule, _refused)


def _refused(c: NodeContext) -> str | None:
    return (f"Transformer Attribution's LRP has no relevance rule for {c.node.op_type} "
            "(it has for linear layers, products, sums, normalisations and activations)")


def _divisor_constant(c: NodeContext) -> str | None:
    return None if divides_by_statistic(c) else "no relevance rule for a division by an activation"


def _statistics_only(c: NodeContext) -> str | None:
    if c.y() in norm_chains(c.b).held or c.y() in gate_branches(c.b):
        return None
    return _refused(c)


def _held(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    """The statistics of a normalisation are held constant: they get no relevance."""
    return [None] * len(c.node.input)


def _normalised(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    """All relevance to the normalised input, the statistics held constant (Chefer et al.'s
    LayerNorm rule): input 0 of a normalisation op; for a chain of primitive ops, the
    numerator of its Div or Mul and the x of its centring x - mean(x)."""
    if c.node.op_type in _NORMALISATIONS:
        return _pass_through(c, gy)
    return _unbroadcast_to(c, gy, norm_chains(c.b).relevance_to[c.y()])


def _active(c: NodeContext) -> list[int]:
    return [i for i in range(len(c.node.input)) if c.need(i)]


def _pass_through(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    return [gy[0]] + [None] * (len(c.node.input) - 1)


def _shares(c: NodeContext, r: str, scale: float = 1.0) -> list[Grad]:
    """x_i * VJP_i(scale * R / z) for every active input i: each input's proportional share."""
    b = c.b
    s = _safe_div(b, r, c.y())
    if scale != 1.0:
        s = b.op("Mul", s, b.scalar(scale, s))
    entry = GRADIENT.lookup(c.node.domain, c.node.op_type, b.opset)
    assert entry is not None
    grads = entry.rule(c, [s])
    return [b.op("Mul", c.x(i), g) if g is not None and c.need(i) else None
            for i, g in enumerate(grads)]


def _halved(c: NodeContext, r: str) -> list[Grad]:
    """Half of each share, halving whichever is smaller: the product (probabilities x V gives
    [.., tokens, head size]) or the shares (Q K^T gives [.., tokens, tokens] products)."""
    b = c.b
    if _smaller_than_operands(b, c.y(), c.x(0)):
        return _shares(c, r, 0.5)
    return [None if g is None else b.op("Mul", g, b.scalar(0.5, g)) for g in _shares(c, r)]


def _smaller_than_operands(b: GraphBuilder, y: str, x: str) -> bool:
    """Whether y's last axis is smaller than x's: a fixed size where x's is symbolic (as a
    head size against a sequence length), or both fixed (programs built for static shapes),
    so elementwise work on y is the cheaper."""
    last_y, last_x = (b.info(name).shape[-1] if b.info(name).shape else None for name in (y, x))
    if isinstance(last_y, int) and isinstance(last_x, int):
        return last_y < last_x
    return isinstance(last_y, int) and not isinstance(last_x, int)


def _product(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    if gy[0] is None:
        return [None] * len(c.node.input)
    active = _active(c)
    weights_constant = c.node.op_type == "Conv" or len([i for i in active if i < 2]) == 1
    if not weights_constant:
        return _halved(c, gy[0])
    layer = Layer(c)
    grads: list[Grad] = [None] * len(c.node.input)
    grads[layer.xi] = _alpha_one(layer, gy[0])
    return grads


def _alpha_one(layer: Layer, r: str) -> str:
    """R_x = x+ (W+ s) + x- (W- s), s = R / (x+ W+ + x- W-): LRP-alpha-beta with alpha 1,
    beta 0 and no bias, divided as Chefer et al. divide (see _safe_div)."""
    b, x = layer.b, layer.x
    xp, xn = positive_part(b, x), negative_part(b, x)
    stacked = _stacked_dense(layer, xp, xn, r)
    if stacked is not None:
        return stacked
    wp, wn = layer.weight("plus"), layer.weight("minus")
    z = b.op("Add", layer.forward(xp, wp, None), layer.forward(xn, wn, None))
    s = _nonnegative_div(b, r, z)
    return b.op("Add", b.op("Mul", xp, layer.vjp(wp, s)), b.op("Mul", xn, layer.vjp(wn, s)))


def _stacked_dense(layer: Layer, xp: str, xn: str, r: str) -> str | None:
    """The same rule for y = x @ W with a constant 2-D W in two products instead of four:
    z from the forward's y (_alpha_one_z), and s @ [W+; W-]^T both vector-Jacobian products
    side by side. |W| and [W+; W-] are computed in the graph from W (ONNX Runtime folds them
    when the session starts), so an exported explainer stores W once."""
    b = layer.b
    weight = static_value(b, layer.w)
    rank = b.info(layer.x).rank
    if layer.op != "MatMul" or layer.xi != 0 or weight is None or weight.ndim != 2 or not rank:
        return None
    w = layer.w
    both = b.memo(("chefer_w", w), lambda: b.op("Concat", positive_part(b, w),
                                               negative_part(b, w), axis=0))
    both_t = b.memo(("chefer_wt", w), lambda: b.op("Transpose", both, perm=[1, 0]))
    x2 = b.op("Concat", xp, xn, axis=-1)
    s = _nonnegative_div(b, r, _alpha_one_z(layer, x2, both))
    shares = b.op("Mul", x2, b.op("MatMul", s, both_t))
    halves = b.op("Reshape", shares, b.ints([0] * (rank - 1) + [2, weight.shape[0]]))
    return b.reduce("ReduceSum", halves, [rank - 1], keepdims=False)


def _alpha_one_z(layer: Layer, x2: str, both: str) -> str:
    """z = x+ W+ + x- W- = (y + |x| |W|) / 2 (the cross terms x+ W- and x- W+ cancel): one
    product the size of the forward's instead of [x+, x-] @ [W+; W-], twice its size. In half
    precision the difference would lose z's small entries (rounding of |x| |W| is ~1e-3 of
    it), so there z is the stacked product."""
    b, w = layer.b, layer.w
    if b.dtype(layer.x) in HALF_TYPES:
        return b.op("MatMul", x2, both)
    magnitude = b.memo(("chefer_abs_w", w), lambda: b.op("Abs", w))
    total = b.op("Add", layer.c.y(), b.op("MatMul", b.op("Abs", layer.x), magnitude))
    # z >= 0; rounding of the difference may leave a tiny negative where z is 0.
    return b.op("Relu", b.op("Mul", total, b.scalar(0.5, total)))


def _scaling(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    chains = norm_chains(c.b)
    if c.y() in chains.relevance_to:
        return _normalised(c, gy)
    if c.y() in chains.held:  # a normalisation's 1 / root: a statistic
        return _held(c, gy)
    active = _active(c)
    if len(active) == 1:
        return _unbroadcast_to(c, gy, active[0])
    if c.node.op_type == "Mul":
        gated = gated_input(c.b, c.node)
        if gated is not None:
            return _unbroadcast_to(c, gy, gated)
        return _halved(c, gy[0])
    return [None, None]


def _unbroadcast_to(c: NodeContext, gy: list[Grad], index: int) -> list[Grad]:
    """All of R to input `index`, summed over the axes that input was broadcast along (the
    gradient rule of Add gives exactly that)."""
    entry = GRADIENT.lookup("", "Add", c.b.opset)
    assert entry is not None
    needs = tuple(i == index for i in range(2))
    add = onnx.helper.make_node("Add", list(c.node.input[:2]), list(c.node.output))
    grads = list(entry.rule(NodeContext(c.b, add, needs), gy))
    return [grads[i] if i == index else None for i in range(len(c.node.input))]


def _sum(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    if gy[0] is None:
        return [None, None]
    if c.y() in norm_chains(c.b).relevance_to:
        return _normalised(c, gy)
    active = _active(c)
    if len(active) == 1 and c.node.op_type == "Add":
        return _unbroadcast_to(c, gy, active[0])
    shares = _shares(c, gy[0])
    if len(active) == 1:
        return shares
    b = c.b
    first, second = shares[0], shares[1]
    assert first is not None and second is not None
    # Both branches' per-row numbers side by side, [N, 2]: fewer (tiny) nodes to run.
    sums = b.op("Concat", _row_sum(b, first), _row_sum(b, second), axis=1)
    magnitudes = b.op("Abs", sums)
    share_of_total = b.op("Mul", _safe_div(b, magnitudes, b.reduce(
        "ReduceSum", magnitudes, [1], keepdims=True)), _row_sum(b, gy[0]))
    factors = _safe_div(b, share_of_total, sums)
    factor_a, factor_b = b.node("Split", [factors] + ([b.ints([1, 1])] if b.opset >= 13
                                                      else []), 2, axis=1,
                                **({} if b.opset >= 13 else {"split": [1, 1]}))
    return [b.op("Mul", first, _expand_rows(b, factor_a, c.x(0))),
            b.op("Mul", second, _expand_rows(b, factor_b, c.x(1)))]


def _proportional(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    if gy[0] is None:
        return [None] * len(c.node.input)
    return _shares(c, gy[0])


def _row_sum(b: GraphBuilder, x: str) -> str:
    """[N, 1]: the sum of each row over every other axis."""
    return b.reduce("ReduceSum", b.op("Flatten", x, axis=1), [1], keepdims=True)


def _expand_rows(b: GraphBuilder, per_row: str, like: str) -> str:
    """[N, 1] -> [N, 1, ..., 1] with the rank of `like`, to broadcast against it."""
    extra = b.rank(like) - 2
    return b.unsqueeze(per_row, list(range(2, 2 + extra))) if extra > 0 else per_row


def _safe_div(b: GraphBuilder, a: str, d: str) -> str:
    """a / (d + 1e-9), and 0 where d == 0 (Chefer et al.'s safe_divide)."""
    zero = b.scalar(0.0, d)
    quotient = b.op("Div", a, b.op("Add", d, _stabilizer(b, d)))
    return b.op("Where", b.op("Equal", d, zero), zero, quotient)


def _nonnegative_div(b: GraphBuilder, r: str, z: str) -> str:
    """R / (z + 1e-9) for z = x+ W+ + x- W- >= 0: where z = 0 every term x W of it is 0, so
    whatever the quotient there, its products with x+ W+ and x- W- vanish as safe_divide's 0
    would (no Equal/Where needed)."""
    return b.op("Div", r, b.op("Add", z, _stabilizer(b, z)))


def _stabilizer(b: GraphBuilder, like: str) -> str:
    """1e-9 in the type of `like`, at least its smallest positive value: in float16, 1e-9
    rounds to 0 and an underflowed z = 0 would give R / 0 = inf, then inf * 0 = NaN."""
    tiny = float(np.finfo(b.np_dtype(like)).smallest_subnormal)
    return b.scalar(max(STABILIZER, tiny), like)


def gated_input(b: GraphBuilder, node: onnx.NodeProto) -> int | None:
    """For Mul(x, f(x)) or Mul(c x, f(x)), with f elementwise and built from x and constants
    and c a constant: the index of x (or c x)."""
    for i in (0, 1):
        if _computed_from(b, node.input[1 - i], _unscaled(b, node.input[i]), depth=10):
            return i
    return None


def _unscaled(b: GraphBuilder, name: str) -> str:
    """x for c * x or x / c with c constant (GPT-2's 0.5 * x), else `name` itself."""
    node = producer(b, name)
    if node is None or node.op_type not in SCALINGS or len(node.input) != 2:
        return name
    static = [_is_static(b, i) for i in node.input]
    if static == [False, True] or (node.op_type == "Mul" and static == [True, False]):
        return node.input[static.index(False)]
    return name


_GATES: weakref.WeakKeyDictionary[GraphBuilder, frozenset[str]] = weakref.WeakKeyDictionary()


def gate_branches(b: GraphBuilder) -> frozenset[str]:
    """Outputs of the nodes computing the f(x) of every gate x * f(x) among the model's
    nodes: the gate rule hands them no relevance, so their ops (Pow, Sqrt...) need none."""
    if b not in _GATES:
        emitted = b.prefix + "/"
        found: set[str] = set()
        for node in b.graph.node:
            if node.op_type != "Mul" or node.name.startswith(emitted) or len(node.input) != 2:
                continue
            gated = gated_input(b, node)
            if gated is not None:
                _branch(b, node.input[1 - gated], _unscaled(b, node.input[gated]), found)
        _GATES[b] = frozenset(found)
    return _GATES[b]


def _branch(b: GraphBuilder, tensor: str, x: str, found: set[str]) -> None:
    """Add the outputs of f's nodes, from `tensor` back to x (checked by _computed_from)."""
    if tensor == x or tensor in found or _is_static(b, tensor):
        return
    node = producer(b, tensor)
    if node is None:
        return
    found.add(tensor)
    for name in node.input:
        if name:
            _branch(b, name, x, found)


def _computed_from(b: GraphBuilder, tensor: str, x: str, depth: int) -> bool:
    if tensor == x:
        return True
    if b.static_value(tensor) is not None:
        return True
    if depth == 0:
        return False
    node = producer(b, tensor)
    if node is None or node.op_type not in _ELEMENTWISE:
        return False
    inputs = [i for i in node.input if i]
    return any(i == x or not _is_static(b, i) for i in inputs) and all(
        _computed_from(b, i, x, depth - 1) for i in inputs)


def _is_static(b: GraphBuilder, name: str) -> bool:
    return b.static_value(name) is not None


CHEFER = CheferRuleSet()
