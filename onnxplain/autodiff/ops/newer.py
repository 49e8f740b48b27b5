"""Rules for ops of the newest opsets that no canonicalisation replaces: CumProd (26).

(RMSNormalization is with the normalisations; Swish, SwiGLU, RotaryEmbedding and
TensorScatter are rewritten into older ops on load, graph/canonical/newer_ops.py.)
"""

from __future__ import annotations

import numpy as np

from ..registry import NodeContext, rule
from .shape import iota


def _cumprod_supports(c: NodeContext) -> str | None:
    if c.b.static_value(c.x(1)) is None:
        return "CumProd over a computed axis is not supported (the axis must be a constant)"
    return None


@rule("CumProd", since=26, supports=_cumprod_supports)
def cumprod(c: NodeContext, gy):
    """dx_j = Σ_i g_i · ∂y_i/∂x_j, where ∂y_i/∂x_j is the product over y_i's window without
    x_j when j lies in it, else 0. For all j at once along a new axis: CumProd of x with
    x_j set to 1, times [j in the window] = 1 - CumProd of [k ≠ j] (same exclusive and
    reverse flags). O(n²) in the axis length n, and exact at zeros, where y / x is not."""
    b, x, g = c.b, c.x(0), gy[0]
    if g is None or not c.need(0):
        return [None, None]
    rank = b.rank(x)
    axis = int(np.asarray(b.static_value(c.x(1))).reshape(-1)[0]) % rank
    flags = {"exclusive": int(c.attr("exclusive", 0)), "reverse": int(c.attr("reverse", 0))}
    steps = iota(b, b.dim(x, axis))
    # eye[k, j, 1, ...] = (k == j), right-aligned against x with a j axis after `axis`.
    eye = b.reshape(b.op("Equal", b.unsqueeze(steps, [1]), steps),
                    [0, 0] + [1] * (rank - axis - 1))
    spread = b.unsqueeze(x, [axis + 1])
    without_j = b.op("Where", eye, b.scalar(1.0, x), spread)
    # CumProd's axis is a 0-D tensor.
    along = b.const(np.array(axis, np.int64), "axis")
    partial = b.op("CumProd", without_j, along, **flags)
    outside = b.op("CumProd", b.op("Cast", b.op("Not", eye), to=b.dtype(x)),
                   b.const(np.array(0, np.int64), "axis"), **flags)
    jacobian = b.op("Mul", partial, b.op("Sub", b.scalar(1.0, x), outside))
    total = b.op("Mul", b.unsqueeze(g, [axis + 1]), jacobian)
    return [b.reduce("ReduceSum", total, [axis], keepdims=False), None]
