"""AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024, arXiv:2402.05602) as a modified gradient.

The paper's rules, written in the Gradient x Input form its authors' LXT uses: the backward
pass below carries a modified gradient g, the relevance of a tensor t is t * g, and the
input relevance is x * g (methods/attn_lrp.py). Seeded with the one-hot target, the output
relevance is the target logit. Rule by op family:

- Linear ops (weighted layers with their biases, sums, residual adds, masks, scaling by
  constants, reshapes, selections, rotary embeddings, BatchNormalization at inference): the
  gradient, which in this form is the epsilon rule without epsilon (biases absorb their share).
- Softmax: the gradient, which in this form is the paper's softmax rule
  R_x = x * (R_y - s * sum(R_y)) (its Proposition 3.1).
- Elementwise nonlinear functions (GELU, SiLU, tanh, erf, exp, c / x...): the identity rule
  R_x = R_y, i.e. g_x = g * f(x) / x (0 where x = 0); piecewise-linear ones through the origin
  (ReLU, LeakyReLU, PReLU, Abs) have f(x) / x = f'(x), so their gradient is kept. A gate
  x * f(x) written out as primitive ops (SiLU, GELU as exporters decompose them) is one such
  function: x gets g * f(x), f's branch nothing.
- Products of activations (Q K^T, probabilities x V, a gated MLP's act(gate) * up): the
  uniform rule, each of the n active operands gets the gradient divided by n (so queries and
  keys get 1/4 of theirs, values 1/2, as in LXT).
- LayerNorm and RMSNorm, as ops or written out as primitive ops (rules/lrp_norms.py): the
  identity rule on the normalisation, i.e. the standard deviation (root mean square) held
  constant; LayerNorm's mean subtraction stays in the gradient, so its relevance is conserved.
- Quantize/dequantize: the straight-through estimator (the gradient registry's rule).
Every other op is refused with a reason (a division of two activations outside a
normalisation, LogSoftmax, recurrent cells, group norms, non-standard domains), so no
relevance is silently made up. Which operands count as activations is a property of the
model, not of what is attributed: the builder differentiates from every attributable input.
"""

from __future__ import annotations

from dataclasses import replace

from ..autodiff import GRADIENT, NodeContext, RuleSet
from ..autodiff.broadcast import unbroadcast
from ..autodiff.ops.normalization import layer_norm_axes, layer_norm_stats, rms_norm_stats
from ..autodiff.registry import Grad, RuleEntry, Supports, plain_gradient
from ..graph.op_kinds import (
    ACTIVATIONS,
    DENSE,
    EINSUM,
    GATE_FUNCTIONS,
    GROUP_NORMS,
    NEGATION,
    PERIODIC,
    POWERS,
    RECURRENT,
    SCALINGS,
    SLOPE_IS_RATIO,
    SOFTSIGN,
    UNARY_MATH,
)
from .chefer import gated_input
from .lrp import both_supports
from .lrp_norms import divides_by_statistic, norm_chains

# Where f(x) / x equals f'(x) (SLOPE_IS_RATIO) the gradient already is the identity rule.
_NONLINEAR = (ACTIVATIONS | GATE_FUNCTIONS | UNARY_MATH | POWERS | PERIODIC | SOFTSIGN) - \
    SLOPE_IS_RATIO - NEGATION
_PRODUCTS = frozenset({"Mul"}) | DENSE | EINSUM
_REFUSED = {
    "LogSoftmax": "AttnLRP starts from a score and has no rule for the log-probabilities "
                  "of LogSoftmax: explain an export that outputs the logits",
    **dict.fromkeys(RECURRENT, "AttnLRP has no rule for recurrent cells"),
    **dict.fromkeys(GROUP_NORMS, "AttnLRP has rules for LayerNorm and RMSNorm only"),
}


class AttnLrpRuleSet(RuleSet):
    """GRADIENT with AttnLRP's rules (module docstring)."""

    def __init__(self) -> None:
        super().__init__(name="attn_lrp", parent=GRADIENT)

    def lookup(self, domain: str, op_type: str, opset: int) -> RuleEntry | None:
        entry = super().lookup(domain, op_type, opset)
        if entry is None:
            return None
        if domain not in ("", "ai.onnx"):
            return RuleEntry(entry.since, entry.rule, _no_rule)
        if op_type in _REFUSED:
            return RuleEntry(entry.since, entry.rule, lambda c: _REFUSED[c.node.op_type])
        if op_type in _NONLINEAR:
            return RuleEntry(entry.since, _identity,
                              both_supports(entry.supports, _constant("parameters")))
        if op_type in _NORMS:
            return RuleEntry(entry.since, _NORMS[op_type],
                              both_supports(entry.supports, _constant("scale and bias")))
        if op_type in _PRODUCTS:
            return RuleEntry(entry.since, _product, entry.supports)
        if op_type == "Div":
            return RuleEntry(entry.since, _division, both_supports(entry.supports,
                                                                  _divisor_held))
        return entry


def _no_rule(c: NodeContext) -> str:
    return (f"AttnLRP has no rule for {c.node.domain}.{c.node.op_type} (only standard ONNX "
            "ops have rules)")


def _constant(what: str) -> Supports:
    """Refuses a node whose inputs after the first (its `what`) depend on the input."""
    def supports(c: NodeContext) -> str | None:
        if any(c.need(i) for i in range(1, len(c.node.input))):
            return (f"AttnLRP's rule for {c.node.op_type} needs its {what} to be constants, "
                    "not computed from the input")
        return None
    return supports


def _divisor_held(c: NodeContext) -> str | None:
    if not c.need(0) or divides_by_statistic(c):
        return None
    return "AttnLRP has no rule for a division of two activations (outside a normalisation)"


def _identity(c: NodeContext, gy: list[Grad], index: int = 0) -> list[Grad]:
    """g_x = g * f(x) / x for x input `index`, so that R_x = x g_x = f(x) g = R_y; 0 where
    x = 0."""
    grads: list[Grad] = [None] * len(c.node.input)
    if gy[0] is None:
        return grads
    b, x = c.b, c.x(index)
    zero = b.scalar(0.0, x)
    ratio = b.op("Where", b.op("Equal", x, zero), zero, b.op("Div", c.y(), x))
    grads[index] = b.op("Mul", gy[0], ratio)
    if len(c.node.input) > 1:  # Pow, Div: x may have been broadcast against a constant
        grads[index] = unbroadcast(b, grads[index], x, c.y())
    return grads


def _division(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    """a / x with only x active is an elementwise function of x (identity rule); else as
    a product."""
    if c.need(1) and not c.need(0):
        return _identity(c, gy, index=1)
    return _product(c, gy)


def _product(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    """Mul, Div, MatMul, Gemm, Einsum: the gradient where one operand is active; with more,
    the normalisation's or the gate's own input alone, or else the uniform rule."""
    factors = 2 if c.node.op_type == "Gemm" else len(c.node.input)  # Gemm's C is added
    active = [i for i in range(factors) if c.need(i)]
    if gy[0] is None or len(active) < 2:
        return plain_gradient(c, gy)
    kept = None
    if c.node.op_type in SCALINGS:
        kept = norm_chains(c.b).relevance_to.get(c.y())
        if kept is None and c.node.op_type == "Mul":
            kept = gated_input(c.b, c.node)
    if kept is not None:
        only = tuple(i == kept for i in range(len(c.node.input)))
        return plain_gradient(replace(c, needs=only), gy)
    b = c.b
    share = b.op("Mul", gy[0], b.scalar(1.0 / len(active), gy[0]))
    grads = plain_gradient(replace(c, needs=tuple(c.need(i) and i < factors
                                             for i in range(len(c.node.input)))), [share])
    if c.need(2) and factors == 2:  # an active bias of Gemm: its own gradient, not a share
        grads[2] = plain_gradient(replace(c, needs=(False, False, True)), gy)[2]
    return grads


def _layer_norm(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    """y = (x - mean) r scale + bias with r held: g_x = r (gs - mean(gs)), gs = g scale."""
    grads: list[Grad] = [None] * len(c.node.input)
    if gy[0] is None or not c.need(0):
        return grads
    b, axes = c.b, layer_norm_axes(c)
    _, inv_std = layer_norm_stats(c, axes)
    gs = b.op("Mul", gy[0], c.x(1))
    grads[0] = b.op("Mul", b.op("Sub", gs, b.reduce("ReduceMean", gs, axes, keepdims=True)),
                    inv_std)
    return grads


def _rms_norm(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    """y = x r scale with r held: g_x = g scale r."""
    grads: list[Grad] = [None] * len(c.node.input)
    if gy[0] is None or not c.need(0):
        return grads
    b = c.b
    _, inv_rms = rms_norm_stats(c)
    grads[0] = b.op("Mul", b.op("Mul", gy[0], c.x(1)), inv_rms)
    return grads


_NORMS = {"LayerNormalization": _layer_norm, "RMSNormalization": _rms_norm}
ATTN_LRP = AttnLrpRuleSet()
