"""Backward rule of onnxplain's EpsilonSoftmax (see onnxplain.ops.epsilon_softmax).

With p = [A, e] = softmax(z), z = [-d, eps] / tau and output gradients g = [gA, ge]:
dL/dz_k = A_k (gA_k - s) with s = sum_k A_k gA_k + e ge, so G = dL/dd = -dL/dz / tau, and
the distance's Jacobian turns G [N, K] into gradients for x [N, D] and the centers W [K, D]:

    squared_l2: dx = 2 (x rowsum(G) - G W)             dW = 2 (W colsum(G) - G^T x)
    l2:         the same without the 2, with G / d (0 where d = 0)
    l1:         dx = sum_k G_nk sign(x_n - W_k)        dW = -sum_n G_nk sign(x_n - W_k)
    cosine:     dx = -(G U - rowsum(G c) u) / |x|      dW = -(G^T u - colsum(G c) U) / |W|
                (u, U the unit rows of x and W, c the cosines)
"""

from __future__ import annotations

from ...ops.epsilon_softmax import DOMAIN, OP_TYPE, emit_distances, row_norms, unit_rows
from ..registry import NodeContext, rule


@rule(OP_TYPE, domain=DOMAIN)
def epsilon_softmax(c: NodeContext, gy):
    b = c.b
    distance = c.str_attr("distance", "l2")
    g = _distance_gradient(c, gy)
    x, w = c.x(0), c.x(1)
    if distance == "l1":
        signs = b.op("Sign", b.op("Sub", b.unsqueeze(x, [1]), b.unsqueeze(w, [0])))
        spread = b.op("Mul", b.unsqueeze(g, [2]), signs)
        return [b.reduce("ReduceSum", spread, [1], False) if c.need(0) else None,
                b.op("Neg", b.reduce("ReduceSum", spread, [0], False)) if c.need(1) else None]
    if distance == "cosine":
        return _cosine(c, g)
    if distance == "l2":
        d = emit_distances(b, x, w, "l2")
        positive = b.op("Greater", d, b.scalar(0.0, d))
        safe = b.where(positive, d, b.op("Add", d, b.scalar(1.0, d)))
        g = b.keep(b.op("Div", g, safe), positive)
    else:
        g = b.op("Add", g, g)
    return _difference_gradients(c, g)


def _distance_gradient(c: NodeContext, gy) -> str:
    """dL/dd [N, K] from the gradients of the activations and of the epsilon neuron."""
    b = c.b
    activations, eps_activation = c.y(0), c.y(1)
    g_act, g_eps = gy[0], gy[1] if len(gy) > 1 else None
    parts = []
    if g_act is not None:
        parts.append(b.reduce("ReduceSum", b.op("Mul", activations, g_act), [1], True))
    if g_eps is not None:
        parts.append(b.unsqueeze(b.op("Mul", eps_activation, g_eps), [1]))
    s = b.add_all(parts)
    centered = b.op("Sub", g_act, s) if g_act is not None else b.op("Neg", s)
    dz = b.op("Mul", activations, centered)
    temperature = float(c.attr("temperature", 1.0))
    return b.op("Mul", dz, b.scalar(-1.0 / temperature, dz))


def _difference_gradients(c: NodeContext, g: str) -> list[str | None]:
    """Gradients of sum G_nk h(|x_n - W_k|^2)-type terms, where g already holds
    G * dh/d(squared distance): dx = x rowsum(g) - g W, dW = W colsum(g) - g^T x."""
    b, x, w = c.b, c.x(0), c.x(1)
    grads: list[str | None] = [None, None]
    if c.need(0):
        rows = b.reduce("ReduceSum", g, [1], True)
        grads[0] = b.op("Sub", b.op("Mul", x, rows), b.op("MatMul", g, w))
    if c.need(1):
        cols = b.unsqueeze(b.reduce("ReduceSum", g, [0], False), [1])
        gt = b.op("Transpose", g, perm=[1, 0])
        grads[1] = b.op("Sub", b.op("Mul", w, cols), b.op("MatMul", gt, x))
    return grads


def _cosine(c: NodeContext, g: str) -> list[str | None]:
    b, x, w = c.b, c.x(0), c.x(1)
    unit_x, unit_w = unit_rows(b, x), unit_rows(b, w)
    gt = b.op("Transpose", g, perm=[1, 0])
    weighted = b.op("Mul", g, b.op("MatMul", unit_x, b.op("Transpose", unit_w, perm=[1, 0])))
    grads: list[str | None] = [None, None]
    if c.need(0):
        along = b.op("Mul", b.reduce("ReduceSum", weighted, [1], True), unit_x)
        inner = b.op("Sub", b.op("MatMul", g, unit_w), along)
        grads[0] = b.op("Neg", b.op("Div", inner, row_norms(b, x)))
    if c.need(1):
        cols = b.unsqueeze(b.reduce("ReduceSum", weighted, [0], False), [1])
        inner = b.op("Sub", b.op("MatMul", gt, unit_x), b.op("Mul", cols, unit_w))
        grads[1] = b.op("Neg", b.op("Div", inner, row_norms(b, w)))
    return grads
