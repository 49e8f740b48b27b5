"""Layer-wise Relevance Propagation (Bach et al. 2015, PLOS ONE 10(7):e0130140; Montavon et al.
2019, "Layer-wise relevance propagation: an overview") as backward rules that override entries
of the gradient registry.

What flows backward is relevance itself, as in Zennit: the seed is the relevance of the output
(the target logit, see methods/lrp.py) and each rule maps the relevance R_y of a node's output
to the relevance of its inputs. Rules by op family:

- Weighted layers (Conv, ConvTranspose, Gemm, MatMul with one constant operand): the rule a
  composite assigns to the node (epsilon, gamma, z-plus, alpha-beta, flat, w-square, box; see
  rules/lrp_layers.py).
- BatchNormalization right after a Conv or Gemm: merged into that layer (rules/lrp_merge.py,
  Zennit's canonizer), so it passes relevance unchanged and the layer's rule sees the merged
  weights; with merge_batch_norm=False it gets the proportional rule below, as in Captum.
- Linear ops without weights to modify, where each input contributes x_i * dy/dx_i (Add, Sub,
  Sum, Mean, Neg, Mul or Div by a constant, BatchNormalization at inference, AveragePool,
  GlobalAveragePool, ReduceMean, ReduceSum, CumSum, Einsum with one active operand, Resize):
  the proportional rule R_x = x * VJP(R_y / stab(y)) with y the op's own output, so a residual
  Add splits R_y in proportion to the two contributions (Zennit's Norm rule, Captum's epsilon
  rule on BatchNorm and pools), and constant terms (biases, BN shifts) absorb their share.
- Elementwise activations (Relu, LeakyRelu, PRelu, Elu, Selu, Celu, ThresholdedRelu, Sigmoid,
  Tanh, Softplus, Softsign, HardSigmoid, HardSwish, Gelu, Mish, Clip) and Softmax/LogSoftmax:
  relevance passes unchanged, as in Zennit and Captum. At a ReLU this equals masking by y > 0
  whenever the consumer is an LRP rule, since those multiply by the activation. A Softmax
  hands the relevance of each probability to its own logit (when the explained output is a
  probability, its relevance is the probability; explain the logits to start from them).
- MaxPool, GlobalMaxPool, ReduceMax/Min, Min, Max: winner-take-all (the relevance of a window
  goes to its maximum: the ordinary gradient rule, which is what Zennit does; Captum's epsilon
  rule on MaxPool gives the same up to y / (y + 1e-9)).
- QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear (quantized models): relevance
  passes unchanged, the straight-through estimator's rule for relevance (round() as the
  identity leaves Clip; see autodiff/ops/quantize.py).
- Reshapes and selections (Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat, Split,
  Slice, Gather*, Expand, Tile, Pad, Identity, Dropout, Cast, Where, TopK): their gradient rule,
  which moves relevance unchanged (and adds the copies Expand and Tile made).
- Every other op (Exp, Log, Pow, products of two activations, LayerNormalization...) has no
  LRP rule and is reported, with the other unsupported nodes, before anything is emitted.

Composites (Zennit's term) say which rule goes on which weighted layer; "first" is each weighted
layer reached from an attribution source without passing another one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..autodiff import GRADIENT, NodeContext, RuleSet, has_no_gradient
from ..autodiff.ops.quantize import STRAIGHT_THROUGH, carried_by, relevance_straight_through
from ..autodiff.registry import Grad, RuleEntry, Supports
from ..errors import InputError
from ..graph.model import Model
from ..graph.op_kinds import (
    ACTIVATIONS,
    ARITHMETIC,
    BATCH_NORMS,
    CASTS,
    CONVOLUTIONS,
    DENSE,
    EINSUM,
    INFERENCE_IDENTITIES,
    NARY_SUMS,
    NEGATION,
    ORDER_SELECTIONS,
    PADS,
    POOLED_SUMS,
    SOFTMAXES,
    VALUE_MOVERS,
    WEIGHTED,
    WHERE,
)
from .lrp_layers import Layer, LayerRule, ratio
from .lrp_merge import Constants, Merged
from .lrp_merge import merge_batch_norm as merge_batch_norm_of

PASS_THROUGH = ACTIVATIONS | SOFTMAXES
PROPORTIONAL = ARITHMETIC | NARY_SUMS | NEGATION | BATCH_NORMS | POOLED_SUMS | EINSUM
GRADIENT_KEPT = ORDER_SELECTIONS | VALUE_MOVERS | PADS | INFERENCE_IDENTITIES | CASTS | WHERE


@dataclass(frozen=True, eq=False)
class LrpParams:
    """The parameters of every rule a composite may assign (method options of `lrp`)."""

    epsilon: float = 1e-6
    gamma: float = 0.25
    alpha: float = 2.0
    beta: float = 1.0
    # Arrays, or the names of program inputs [rows, *bound] holding them (export.methods.lrp)
    low: np.ndarray | str | None = None
    high: np.ndarray | str | None = None
    stabilizer: float = 1e-6

    def check(self, composite: str) -> LrpParams:
        """Raise InputError for values no rule accepts; return self."""
        if composite not in COMPOSITES:
            raise InputError(f"unknown LRP composite '{composite}' (choose from "
                             f"{', '.join(COMPOSITES)})")
        for name in ("epsilon", "stabilizer"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a finite number > 0 (it keeps divisions by "
                                 f"zero away; use e.g. 1e-9 for LRP-0), got {value}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise InputError(f"gamma must be a finite number >= 0, got {self.gamma}")
        if not (self.beta >= 0 and math.isclose(self.alpha - self.beta, 1.0, abs_tol=1e-9)):
            raise InputError(f"alpha-beta needs beta >= 0 and alpha - beta = 1 (so that "
                             f"relevance is conserved), got alpha={self.alpha}, beta={self.beta}")
        if composite in NEEDS_BOUNDS:
            self._check_bounds(composite)
        return self

    def _check_bounds(self, composite: str) -> None:
        if self.low is None or self.high is None:
            raise InputError(f"composite '{composite}' puts the box rule on the first layer: "
                             "give low and high, the bounds of the input values (e.g. 0 and 1 "
                             "for raw pixels, or the normalised bounds)")
        if isinstance(self.low, str) or isinstance(self.high, str):
            return  # program inputs: their values were checked where they are fed
        low, high = np.asarray(self.low, np.float64), np.asarray(self.high, np.float64)
        try:
            np.broadcast_shapes(low.shape, high.shape)
        except ValueError:
            raise InputError(f"low {low.shape} and high {high.shape} do not broadcast "
                             "together") from None
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))) or np.any(low > high):
            raise InputError("low and high must be finite, with low <= high")

    def epsilon_rule(self) -> LayerRule:
        return LayerRule("epsilon", epsilon=self.epsilon)

    def rule(self, kind: str) -> LayerRule:
        """The rule `kind` with these parameters."""
        if kind == "epsilon":
            return self.epsilon_rule()
        if kind == "gamma":
            return LayerRule("gamma", gamma=self.gamma)
        if kind == "alpha-beta":
            return LayerRule("alpha-beta", alpha=self.alpha, beta=self.beta)
        if kind == "box":
            return LayerRule("box", low=_bound(self.low), high=_bound(self.high))
        return LayerRule(kind)


def _bound(value: np.ndarray | str | None) -> np.ndarray | str:
    return value if isinstance(value, str) else np.asarray(value)


# ---- composites: which rule goes on which weighted layer ---------------------------------
# A composite maps (op group: "conv" or "dense", first layer?, params) to a rule.
Composite = Callable[[str, bool, LrpParams], LayerRule]


def _conv_dense(conv: str, first: str | None = None) -> Composite:
    """`first` on first layers, `conv` on other convolutions, epsilon on dense layers."""
    def pick(group: str, is_first: bool, p: LrpParams) -> LayerRule:
        if is_first and first is not None:
            return p.rule(first)
        return p.rule(conv) if group == "conv" else p.epsilon_rule()
    return pick


def _everywhere(kind: str) -> Composite:
    return lambda group, is_first, p: p.rule(kind)


COMPOSITES: dict[str, Composite] = {
    "epsilon-plus": _conv_dense("z-plus"),
    "epsilon-plus-flat": _conv_dense("z-plus", first="flat"),
    "epsilon-gamma-box": _conv_dense("gamma", first="box"),
    "epsilon-alpha2-beta1": _conv_dense("alpha-beta"),
    "epsilon": _everywhere("epsilon"),
    "gamma": _everywhere("gamma"),
    "z-plus": _everywhere("z-plus"),
    "alpha-beta": _everywhere("alpha-beta"),
    "flat": _everywhere("flat"),
    "w-square": _everywhere("w-square"),
}
NEEDS_BOUNDS = frozenset({"epsilon-gamma-box"})


@dataclass(frozen=True)
class Assigned:
    """A weighted layer found on the path from the sources, and its rule."""

    node: str
    op_type: str
    first: bool
    rule: LayerRule
    merged: Merged | None = None

    @property
    def label(self) -> str:
        """The node, with the BatchNormalization merged into it if any."""
        return self.node if self.merged is None else f"{self.node} + {self.merged.bn_node}"

    def key(self) -> str:
        return self.rule.key() + (self.merged.key() if self.merged else "")


def weighted_group(op_type: str, active: Sequence[bool]) -> str | None:
    """"conv" or "dense" for a weighted layer whose weights are constants, else None."""
    if op_type in CONVOLUTIONS and active and active[0] and not any(active[1:]):
        return "conv"
    if op_type in DENSE and sum(active[:2]) == 1 and not any(active[2:]):
        return "dense"
    return None


def assign(model: Model, sources: Sequence[str], composite: str, params: LrpParams,
           merge_batch_norm: bool = True) -> dict[str, Assigned]:
    """The rule of every weighted layer downstream of `sources`, keyed by its output tensor.

    Walks the nodes in order (ONNX graphs are topologically sorted), tracking which tensors
    depend on a source (active) and which do so without a weighted layer between (fresh).
    With `merge_batch_norm`, a BatchNormalization right after a layer joins it (lrp_merge).
    """
    pick = COMPOSITES[composite]
    constants = Constants(model) if merge_batch_norm else None
    active, fresh = set(sources), set(sources)
    found: dict[str, Assigned] = {}
    for node in model.proto.graph.node:
        flags = [name in active for name in node.input]
        if not any(flags) or has_no_gradient(node.domain, node.op_type):
            continue
        outputs = carried_by(node, lambda name: model.infos.get(name) is not None
                             and model.infos[name].is_float, active)
        active.update(outputs)
        reached = any(name in fresh for name in node.input)
        group = weighted_group(node.op_type, flags) if node.domain in ("", "ai.onnx") else None
        if group is not None:
            merged = merge_batch_norm_of(model, node, constants) if constants else None
            found[node.output[0]] = Assigned(node.name or node.output[0], node.op_type, reached,
                                             pick(group, reached, params), merged)
        elif reached:
            fresh.update(outputs)
    return found


# ---- the rule set --------------------------------------------------------------------------
class LrpRuleSet(RuleSet):
    """GRADIENT with LRP's rules: each op family as the module docstring says; ops without an
    LRP meaning are refused with a reason (listed together by the driver)."""

    def __init__(self, name: str, layers: dict[str, Assigned], fallback: Composite,
                 params: LrpParams):
        super().__init__(name=name, parent=GRADIENT)
        self.layers = layers
        self.fallback = fallback
        self.params = params
        self.merged_outputs = {a.merged.output for a in layers.values() if a.merged}

    @property
    def labels(self) -> dict[str, str]:
        """Node -> rule, for every weighted layer on the path from the sources."""
        return {a.label: a.rule.label for a in self.layers.values()}

    def lookup(self, domain: str, op_type: str, opset: int) -> RuleEntry | None:
        entry = super().lookup(domain, op_type, opset)
        if entry is not None and domain not in ("", "ai.onnx"):
            return RuleEntry(entry.since, entry.rule, _no_lrp_rule)
        if entry is None or op_type in GRADIENT_KEPT:
            return entry
        if op_type in WEIGHTED:
            return RuleEntry(entry.since, self._weighted,
                             both_supports(entry.supports, _weighted_ok))
        if op_type in PROPORTIONAL:
            return RuleEntry(entry.since, self._proportional,
                             both_supports(entry.supports, _proportional_ok))
        if op_type in PASS_THROUGH:
            return RuleEntry(entry.since, _pass_through, entry.supports)
        if op_type in STRAIGHT_THROUGH:
            return RuleEntry(entry.since, relevance_straight_through, entry.supports)
        return RuleEntry(entry.since, entry.rule, _no_lrp_rule)

    def _weighted(self, c: NodeContext, gy: list[Grad]) -> list[Grad]:
        grads: list[Grad] = [None] * len(c.node.input)
        if gy[0] is None:
            return grads
        assigned = self.layers.get(c.y())
        layer = Layer(c, assigned.merged if assigned else None)
        rule = assigned.rule if assigned else self.fallback(
            "conv" if c.node.op_type in CONVOLUTIONS else "dense", False, self.params)
        grads[layer.xi] = rule.relevance(layer, gy[0], self.params.stabilizer)
        return grads

    def _proportional(self, c: NodeContext, gy: list[Grad]) -> list[Grad]:
        """R_x = x * VJP(R_y / stab(y)): each input's share of y, as x_i * dy/dx_i."""
        if gy[0] is None:
            return [None] * len(c.node.input)
        if c.y() in self.merged_outputs:  # a BatchNormalization merged into its layer
            return _pass_through(c, gy)
        b = c.b
        s = ratio(b, gy[0], c.y(), self.params.stabilizer)
        entry = GRADIENT.lookup(c.node.domain, c.node.op_type, b.opset)
        assert entry is not None
        grads = entry.rule(c, [s] + [None] * (len(c.node.output) - 1))
        return [b.op("Mul", c.x(i), g) if g is not None and c.need(i) else None
                for i, g in enumerate(grads)]


def _pass_through(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    """Relevance passes an activation unchanged (Zennit's Pass rule, Captum's activations)."""
    return [gy[0]] + [None] * (len(c.node.input) - 1)


def both_supports(first: Supports | None, second: Supports) -> Supports:
    def supports(c: NodeContext) -> str | None:
        return (first(c) if first is not None else None) or second(c)
    return supports


def _weighted_ok(c: NodeContext) -> str | None:
    active = [c.need(i) for i in range(len(c.node.input))]
    if weighted_group(c.node.op_type, active) is not None:
        return None
    if c.node.op_type in DENSE and sum(active[:2]) == 2:
        return "LRP has no rule for a product of two activations"
    return "LRP needs the layer's weights and bias to be constants, not computed from the input"


def _proportional_ok(c: NodeContext) -> str | None:
    op = c.node.op_type
    if op in ("Mul", "Einsum") and sum(c.need(i) for i in range(len(c.node.input))) > 1:
        return "LRP has no rule for a product of two activations"
    if op == "Div" and c.need(1):
        return "LRP has no rule for a division by an activation"
    return None


def _no_lrp_rule(c: NodeContext) -> str | None:
    return (f"LRP has no relevance rule for {c.node.op_type} (it has for weighted layers, "
            "linear ops, activations, pools and reshapes)")


def lrp_rules(model: Model, sources: Sequence[str], composite: str = "epsilon-plus",
              params: LrpParams | None = None, merge_batch_norm: bool = True) -> LrpRuleSet:
    """The LRP rule set of `composite` for relevance at `sources` (tensor names); with
    `merge_batch_norm`, BatchNormalizations after a Conv or Gemm join that layer.

    Its name, which engines cache programs by, encodes every layer's rule and parameters.
    """
    params = (params or LrpParams()).check(composite)
    layers = assign(model, sources, composite, params, merge_batch_norm)
    scalars = (params.epsilon, params.gamma, params.alpha, params.beta, params.stabilizer)
    text = repr((sorted((out, a.key()) for out, a in layers.items()), scalars))
    digest = hashlib.sha1(text.encode())
    name = f"lrp/{composite}/{digest.hexdigest()[:16]}"
    return LrpRuleSet(name, layers, COMPOSITES[composite], params)
