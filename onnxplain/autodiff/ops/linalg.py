"""MatMul, Gemm and Einsum: each gradient is another product with the output gradient."""

from __future__ import annotations

from ...graph.builder import GraphBuilder
from ...graph.shapes import TensorInfo
from ..broadcast import (
    RUNTIME_AXES_OPSET,
    SLICE_INPUTS_OPSET,
    broadcast_axes,
    unbroadcast,
    undecidable_reason,
)
from ..registry import NodeContext, rule


def _swap_last(b: GraphBuilder, x: str) -> str:
    rank = b.rank(x)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return b.op("Transpose", x, perm=perm)


def _batched_grad(b: GraphBuilder, product: str, operand: str, out: str,
                  other: str | None = None) -> str:
    """Sum a [batch..., r, c] product over the batch axes that broadcasting added to `operand`
    (only where the `other` factor of the MatMul may be larger there)."""
    out_shape = b.info(out).certain or ()
    operand_shape = b.info(operand).certain or ()
    batch = tuple(out_shape[:-2]) if len(out_shape) >= 2 else ()
    b.infos[product] = TensorInfo(b.dtype(operand), batch + tuple(operand_shape[-2:]))
    others = None
    if other is not None and b.info(other).certain is not None and b.rank(other) >= 2:
        others = [tuple(b.info(other).certain[:-2]) + (1, 1)]  # its matrix axes never expand
    return unbroadcast(b, product, operand, product, others)


def _matmul_supports(c: NodeContext) -> str | None:
    """Opset 9 must know statically which batch axes of an operand were broadcast."""
    b, y = c.b, c.y()
    if b.opset >= SLICE_INPUTS_OPSET or b.rank(y) < 2:
        return None
    batch_y = (b.info(y).certain or (None,) * b.rank(y))[:-2]
    for i, name in enumerate(c.node.input):
        rank = b.rank(name)
        if c.need(i) and rank >= 2:
            batch_x = (b.info(name).certain or (None,) * rank)[:-2]
            if broadcast_axes(batch_x, batch_y)[2]:
                return undecidable_reason(b, name)
    return None


@rule("MatMul", supports=_matmul_supports)
def matmul(c, gy):
    """Y = A B (numpy semantics): dA = g B^T and dB = A^T g, summed over broadcast batch axes."""
    g, b = gy[0], c.b
    a, w, y = c.x(0), c.x(1), c.y()
    rank_a, rank_b = b.rank(a), b.rank(w)
    grads: list[str | None] = [None, None]
    if rank_a == 1 and rank_b == 1:
        return [b.op("Mul", g, w) if c.need(0) else None,
                b.op("Mul", g, a) if c.need(1) else None]
    if rank_a == 1:
        # y[..., n] = sum_k a[k] B[..., k, n]
        row = b.unsqueeze(g, [-2])
        if c.need(0):
            grads[0] = b.reshape(
                b.reduce("ReduceSum", b.op("MatMul", row, _swap_last(b, w)),
                         list(range(rank_b - 1)), keepdims=False), [-1])
        if c.need(1):
            grads[1] = b.op("MatMul", b.unsqueeze(a, [-1]), row)
        return grads
    if rank_b == 1:
        # y[..., m] = sum_k A[..., m, k] w[k]
        column = b.unsqueeze(g, [-1])
        if c.need(0):
            grads[0] = b.op("MatMul", column, b.unsqueeze(w, [0]))
        if c.need(1):
            per_batch = b.op("MatMul", _swap_last(b, a), column)
            grads[1] = b.reshape(
                b.reduce("ReduceSum", per_batch, list(range(rank_a - 2)), keepdims=False)
                if rank_a > 2 else per_batch, [-1])
        return grads
    if c.need(0):
        grads[0] = _batched_grad(b, b.op("MatMul", g, _swap_last(b, w)), a, y, w)
    if c.need(1):
        grads[1] = _batched_grad(b, b.op("MatMul", _swap_last(b, a), g), w, y, a)
    return grads


@rule("Gemm")
def gemm(c, gy):
    """Y = alpha A' B' + beta C with A' = A^T if transA (same for B); each gradient is a Gemm."""
    g, b = gy[0], c.b
    a, w = c.x(0), c.x(1)
    alpha, beta = c.attr("alpha", 1.0), c.attr("beta", 1.0)
    trans_a, trans_b = c.attr("transA", 0), c.attr("transB", 0)
    grads: list[str | None] = [None, None, None]

    def product(left: str, right: str, **trans) -> str:
        # Gemm's C input is optional only from opset 11.
        bias = [] if b.opset >= 11 else [b.scalar(0.0, g)]
        return b.op("Gemm", left, right, *bias, alpha=alpha, **trans)

    if c.need(0):
        if trans_a:  # dA = (g B'^T)^T = B' g^T
            grads[0] = product(w, g, transA=int(bool(trans_b)), transB=1)
        else:
            grads[0] = product(g, w, transB=int(not trans_b))
    if c.need(1):
        if trans_b:  # dB = (A'^T g)^T = g^T A'
            grads[1] = product(g, a, transA=1, transB=int(bool(trans_a)))
        else:
            grads[1] = product(a, g, transA=int(not trans_a))
    if c.need(2):
        scaled = g if beta == 1.0 else b.op("Mul", g, b.scalar(beta, g))
        grads[2] = unbroadcast(b, scaled, c.x(2), c.y())
    return grads


def _einsum_terms(c: NodeContext) -> tuple[list[str], str] | None:
    """Input terms and output term with implicit output made explicit; None if unparsable."""
    equation = c.str_attr("equation", "").replace(" ", "")
    if "->" in equation:
        inputs, output = equation.split("->")
    else:
        inputs = equation
        letters = inputs.replace(",", "").replace("...", "")
        output = ("..." if "..." in inputs else "") + "".join(
            sorted(ch for ch in set(letters) if letters.count(ch) == 1))
    terms = inputs.split(",")
    return (terms, output) if len(terms) == len(c.node.input) else None


def _einsum_supports(c: NodeContext) -> str | None:
    parsed = _einsum_terms(c)
    if parsed is None:
        return "cannot parse the equation"
    terms, output = parsed
    for term in terms + [output]:
        letters = term.replace("...", "")
        if len(set(letters)) != len(letters):
            return f"repeated index in '{term}' (diagonals) is not supported"
        if "..." in term and not term.startswith("..."):
            return f"an ellipsis that does not lead its term ('{term}') is not supported"
    if any("..." in t for t in terms) and "..." not in output:
        return "summing over ellipsis axes (ellipsis missing from the output) is not supported"
    if "..." in output and c.b.opset < RUNTIME_AXES_OPSET:
        return f"ellipsis broadcasting needs opset {RUNTIME_AXES_OPSET} (run-time reduce axes)"
    return None


@rule("Einsum", since=12, supports=_einsum_supports)
def einsum(c, gy):
    """dX_k = einsum(g, X_j for j != k) with X_k's own term as output.

    Indices only in X_k were summed away forward, so the gradient is broadcast back along
    them; leading ellipsis axes that broadcasting added to X_k are summed.
    """
    g, b = gy[0], c.b
    parsed = _einsum_terms(c)
    assert parsed is not None
    terms, output = parsed
    grads: list[str | None] = []
    for k, term in enumerate(terms):
        if not c.need(k):
            grads.append(None)
            continue
        others = [t for j, t in enumerate(terms) if j != k]
        seen = set(output.replace("...", "")).union(*(set(t.replace("...", "")) for t in others))
        letters = term.replace("...", "")
        kept = "".join(ch for ch in letters if ch in seen)
        # The output holds every ellipsis axis, broadcast: X_k's gradient gets all of them.
        ellipsis = "..." if "..." in output else ""
        equation = ",".join([output] + others) + "->" + ellipsis + kept
        operands = [g] + [c.x(j) for j in range(len(terms)) if j != k]
        grad = b.op("Einsum", *operands, equation=equation)
        full_lead = b.rank(c.y()) - len(output.replace("...", ""))
        grads.append(_einsum_restore(c, grad, k, term, kept, full_lead))
    return grads


def _einsum_restore(c: NodeContext, grad: str, k: int, term: str, kept: str,
                    full_lead: int) -> str:
    """Bring the product back to X_k's shape: unsqueeze dropped indices, sum broadcast axes."""
    b, x = c.b, c.x(k)
    letters = term.replace("...", "")
    rank_x = b.rank(x)
    lead = rank_x - len(letters)  # X_k's own ellipsis axes
    missing = [full_lead + i for i, ch in enumerate(letters) if ch not in kept]
    if missing:
        grad = b.unsqueeze(grad, missing)
    x_shape = b.info(x).certain or (None,) * rank_x
    # ONNX's Einsum inference copies ellipsis dims from the first input, even where another
    # input broadcasts them: treat them as unknown so the size-1 axes are found at run time.
    dims = [None] * full_lead + [1 if ch not in kept else x_shape[lead + i]
                                 for i, ch in enumerate(letters)]
    b.infos[grad] = TensorInfo(b.dtype(x), tuple(dims))
    if full_lead:
        grad = unbroadcast(b, grad, x, grad)
    if missing:
        grad = b.op("Expand", grad, b.shape(x))
    return grad
