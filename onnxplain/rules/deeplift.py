"""DeepLIFT's Rescale rule (Shrikumar, Greenside, Kundaje 2017, arXiv:1704.02685) as backward
rules that override entries of the gradient registry.

DeepLIFT explains the difference from a reference: Δt = t(x) - t(x'). Its multipliers
m_ΔxΔt = C_ΔxΔt / Δx follow the chain rule, and the contributions C = Δx · m sum to Δt
(summation-to-delta). Linear ops (Conv, Gemm, MatMul, Add, BatchNormalization in inference,
the average pools, ReduceMean, reshapes...) have their weights as multipliers, so they keep
their usual gradient rule. Nonlinear ops get a rule that needs x and x' at once, so the
program runs on a batch of 2N rows, [x; x'], and every rule splits its tensors in halves at
run time (Slice at N = batch / 2). Like Captum's DeepLift, the multipliers computed from the
halves are applied to both halves, and both halves are seeded with the explained score.

Rules, per op (Δ = first half - second half, duplicated over both halves; ε = `eps`):
- Relu, LeakyRelu, PRelu (its input x; the slope keeps its gradient), Elu, Selu, Celu,
  Sigmoid, Tanh, Softplus, Softsign (elementwise Rescale):
      dx = g · Δy / Δx, or the ordinary derivative where |Δx| < ε.
- MaxPool (Captum's maxpool rule): the output difference is split into its positive part,
  max(y, y') - y', routed to the window maximum of x, and its negative part, y - max(y, y'),
  routed to the window maximum of x'; the two halves' scatters are summed and divided by Δx
  (ordinary gradient where |Δx| < ε).
- Softmax (Captum's softmax rule): the elementwise Rescale above, then minus its mean over
  the softmax axes, since adding a constant to every logit leaves a softmax unchanged. The
  centring moves mean(m) · sum(Δx) over the logits, so summation-to-delta does not hold
  through a Softmax (the paper explains the logits instead; so can a caller, by choosing
  the output before the softmax).
- Every other op keeps its gradient rule, nonlinear or not (GlobalMaxPool, ReduceMax,
  LogSoftmax, Gelu, Erf, Exp, Mul of two activations, LayerNormalization...): on such ops the
  result is gradient-like and summation-to-delta no longer holds exactly (the method reports
  the gap as its convergence delta and warns when it is large).
- LSTM, GRU and RNN are refused, naming the node: their gates multiply activations inside
  one node, and no rule here splits them.

Where onnxplain deliberately differs from Captum 0.9:
- Captum hooks only nn.Module activations of the supported types; functional calls
  (torch.relu, F.softmax) and modules used twice are not rescaled (the latter raise). ONNX has
  no modules, so onnxplain applies the rule to every node of those op types. On a model with
  functional activations the two disagree, and onnxplain is the one whose contributions sum
  to Δt. It also rescales activations that a decomposition made into nodes, e.g. the Sigmoid
  in SiLU = x · sigmoid(x), whose Mul then keeps its gradient (neither tool is exact there).
- Captum's softmax rule subtracts the mean over the whole tensor, rows and both halves
  together, so rows of one batch change each other's attributions; onnxplain subtracts the
  mean per row over the softmax axes. For one row the two agree.
- Captum's maxpool fallback (|Δx| < ε) takes `grad_input[0]`, the ordinary gradient of the
  first row broadcast to every row; onnxplain uses each row's own gradient. Behind a ReLU,
  |Δx| < ε at a pool input generically means both ReLUs are off (their Rescale multiplier
  is then 0) or the whole receptive field agrees (Δx = 0 there), so attributions rarely
  differ.
- Captum leaves PReLU, SELU, CELU and Softsign to the gradient; onnxplain rescales them too,
  as the paper's rule covers every elementwise nonlinearity.

Two Captum 0.9 defects onnxplain does not reproduce (both break Captum's own
summation-to-delta; tests/methods/test_deeplift.py works around them in the oracle):
- When a hooked module feeds another directly (ReLU then MaxPool2d, as in most CNNs), the
  first one's hook reads its output gradient before the second one's hook replaces it, so
  that ReLU rescales the ordinary max-pool gradient.
- Its maxpool rule scatters back with max_unpool, which keeps one value where overlapping
  windows (ResNet's 3x3 stride 2) pick the same element; the chain rule adds them.
"""

from __future__ import annotations

import functools

import numpy as np

from ..autodiff import GRADIENT, NodeContext, RuleSet
from ..autodiff.ops.normalization import softmax_axes
from ..autodiff.registry import Grad, Rule, plain_gradient
from ..graph.builder import GraphBuilder
from ..graph.op_kinds import MONOTONE_ACTIVATIONS, RECURRENT

INT64_MAX = np.iinfo(np.int64).max
DEFAULT_EPS = 1e-10  # Captum's DeepLift default

# Elementwise nonlinearities y = f(x) that get the Rescale rule on their first input: the
# monotone ones, as Captum's DeepLift rescales; the others (Gelu, Clip, ...) keep the gradient
# there too, so that results match Captum's.
RESCALED = MONOTONE_ACTIVATIONS


# ---- halves of the paired batch ----------------------------------------------------------
def halves(b: GraphBuilder, t: str) -> tuple[str, str]:
    """(t[:N], t[N:]) with N = batch / 2: the input rows and their reference rows."""
    def make(first: bool) -> str:
        half = b.memo(("deeplift_half", t), lambda: b.op(
            "Div", b.dim(t, 0), b.ints([2])))
        if first:
            return b.slice(t, [0], half, [0])
        return b.slice(t, half, [INT64_MAX], [0])
    return (b.memo(("deeplift_first", t), lambda: make(True)),
            b.memo(("deeplift_second", t), lambda: make(False)))


def both(b: GraphBuilder, t: str) -> str:
    """[t; t]: a per-pair value applied to the input rows and to the reference rows."""
    return b.concat([t, t], axis=0)


def delta(b: GraphBuilder, t: str) -> str:
    """Δt = t(x) - t(x'), for both halves: [Δt; Δt]."""
    def make() -> str:
        first, second = halves(b, t)
        return both(b, b.op("Sub", first, second))
    return b.memo(("deeplift_delta", t), make)


def _small(b: GraphBuilder, dx: str, eps: float) -> str:
    """|Δx| < ε: where the ratio Δy / Δx is unreliable and the derivative is used instead.
    ε is at least Δx's type's smallest normal number: float16 would round the default 1e-10
    to 0, and 0 / 0 made every multiplier NaN."""
    return b.op("Less", b.op("Abs", dx),
                b.scalar(max(eps, float(np.finfo(b.np_dtype(dx)).smallest_normal)), dx))


def _rescaled(c: NodeContext, g: str, fallback: str, eps: float) -> str:
    """where(|Δx| < ε, fallback, g · Δy / Δx), in Captum's order of operations."""
    b = c.b
    dx, dy = delta(b, c.x(0)), delta(b, c.y())
    return b.where(_small(b, dx, eps), fallback, b.op("Div", b.op("Mul", g, dy), dx))


# ---- the rules ---------------------------------------------------------------------------
def rescale(c: NodeContext, gy: list[Grad], eps: float = DEFAULT_EPS) -> list[Grad]:
    """Rescale: dx = g · Δy / Δx (the derivative where |Δx| < ε); other inputs as usual."""
    grads = plain_gradient(c, gy)
    if gy[0] is None or grads[0] is None:
        return grads
    grads[0] = _rescaled(c, gy[0], grads[0], eps)
    return grads


def softmax(c: NodeContext, gy: list[Grad], eps: float = DEFAULT_EPS) -> list[Grad]:
    """Rescale elementwise, then centre over the softmax axes (the logits' shift invariance)."""
    grads = plain_gradient(c, gy)
    if gy[0] is None or grads[0] is None:
        return grads
    b = c.b
    unnormalised = _rescaled(c, gy[0], grads[0], eps)
    mean = b.reduce("ReduceMean", unnormalised, softmax_axes(c), keepdims=True)
    return [b.op("Sub", unnormalised, mean)]


def max_pool(c: NodeContext, gy: list[Grad], eps: float = DEFAULT_EPS) -> list[Grad]:
    """Captum's maxpool rule: Δy⁺ = max(y, y') - y' goes back through the argmax of x,
    Δy⁻ = y - max(y, y') through the argmax of x'; dx = (both, summed) / Δx.

    The scatters reuse the ordinary MaxPool rule on g · [Δy⁺; Δy⁻]: each half is scattered
    through its own rows' Indices, then the halves are added (a pair's two routes)."""
    grads = plain_gradient(c, gy)
    g = gy[0]
    if g is None or grads[0] is None:
        return grads
    b = c.b
    y, y_ref = halves(b, c.y())
    top = b.op("Max", y, y_ref)
    split = b.concat([b.op("Sub", top, y_ref), b.op("Sub", y, top)], axis=0)
    scattered = plain_gradient(c, [b.op("Mul", g, split)])[0]
    assert scattered is not None
    first, second = halves(b, scattered)
    dx = delta(b, c.x(0))
    ratio = b.op("Div", both(b, b.op("Add", first, second)), dx)
    return [b.where(_small(b, dx, eps), grads[0], ratio)]


def _supports(c: NodeContext) -> str | None:
    """Why a DeepLIFT rule cannot apply here: the op's gradient rule cannot, or the opset
    has no Slice with computed bounds to split the batch."""
    if c.b.opset < 10:
        return "DeepLIFT splits the batch into inputs and references at run time, which " \
               "needs a computed Slice (opset 10 or newer)"
    entry = GRADIENT.lookup(c.node.domain, c.node.op_type, c.b.opset)
    return entry.supports(c) if entry is not None and entry.supports else None


# RECURRENT cells multiply gates by states inside the node: DeepLIFT's gating rule is not
# implemented, and the plain gradient there would pass for DeepLIFT's multipliers.


def _recurrent_refused(c: NodeContext) -> str:
    return (f"DeepLIFT has no rule for {c.node.op_type} node '{c.node.name}' (its gates "
            "multiply activations); use integrated_gradients or saliency")


@functools.cache
def deeplift_rules(eps: float = DEFAULT_EPS) -> RuleSet:
    """The DeepLIFT (Rescale) rule set for a given ε; engines cache programs by its name."""
    rules = RuleSet(name=f"deeplift(eps={float(eps)!r})", parent=GRADIENT)
    table: dict[str, Rule] = {op: rescale for op in RESCALED}
    table.update({"MaxPool": max_pool, "Softmax": softmax})
    for op_type, fn in table.items():
        rules.register(op_type, functools.partial(fn, eps=float(eps)),
                       supports=_supports)
    for op_type in RECURRENT:
        rules.register(op_type, plain_gradient, supports=_recurrent_refused)
    return rules


DEEPLIFT = deeplift_rules(DEFAULT_EPS)
