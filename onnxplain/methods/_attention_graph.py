"""The attention methods' token scores, computed inside the ONNX graph (autodiff.program's
Post): maps, gradients and relevances of every layer ([batch, heads, tokens, tokens]) are
reduced where ONNX Runtime computed them, and only one row per input comes back.

Every method is a chain of per-layer token matrices M_l read at the query row q. The row is
carried from the last layer down as a vector, e_q^T X_L X_(L-1) ... X_start, so no matrix
product of two token matrices is ever formed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..autodiff.program import Post
from ..graph.builder import GraphBuilder

RELEVANCE = "relevance"
ROW = "row"

# (builder, attention map, gradients by pass label and tensor) -> [N, S, S]
Weighting = Callable[[GraphBuilder, str, Mapping[str, Mapping[str, str]]], str]


def head_mean(b: GraphBuilder, x: str) -> str:
    return b.reduce("ReduceMean", x, [1], keepdims=False)


def _first_row(b: GraphBuilder, matrix: str, query: int | None) -> str:
    """[1, 1, S]: e_q, or the mean of all rows (1/S everywhere) when query is None."""
    eye = b.op("EyeLike", b.squeeze(b.op("Gather", matrix, b.ints([0]), axis=0), [0]))
    row = (b.op("Gather", eye, b.ints([query]), axis=0) if query is not None
           else b.reduce("ReduceMean", eye, [0], keepdims=True))
    return b.unsqueeze(row, [0])


def _normalised_step(b: GraphBuilder, v: str, m: str) -> str:
    """v^T normalise_rows(I + M) = w^T M + w with w = v / rowsum(I + M)."""
    sums = b.op("Add", b.reduce("ReduceSum", m, [-1], keepdims=False), b.scalar(1.0, m))
    w = b.op("Div", v, b.unsqueeze(sums, [1]))
    return b.op("Add", b.op("MatMul", w, m), w)


STEPS: dict[str, Callable[[GraphBuilder, str, str], str]] = {
    # Abnar and Zuidema's rollout: prod normalise(I + M_l).
    "rollout": _normalised_step,
    # Chefer et al. 2021b: R = R + M_l R, layer after layer.
    "accumulate": lambda b, v, m: b.op("Add", v, b.op("MatMul", v, m)),
    # A plain product of the M_l.
    "product": lambda b, v, m: b.op("MatMul", v, m),
}


def chain_post(name: str, maps: Sequence[str], start: int, weighting: Weighting, step: str,
               query: int | None) -> Post:
    """Post computing row `query` of X_L ... X_start, X_l = STEPS[step] applied to
    M_l = weighting(layer l): [N, S] scores under the label ROW."""
    def emit(b: GraphBuilder, grads: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        matrices = [weighting(b, a, grads) for a in maps[start:]]
        v = _first_row(b, matrices[-1], query)
        for m in reversed(matrices):
            v = STEPS[step](b, v, m)
        return {ROW: b.squeeze(v, [1])}
    return Post((name, tuple(maps), start, step, query), emit)


def attention_mean(b: GraphBuilder, a: str, grads) -> str:
    """E_h A."""
    return head_mean(b, a)


def gradient_times_attention(positive: bool) -> Weighting:
    """E_h (G * A), or E_h (G * A)+."""
    def weighting(b: GraphBuilder, a: str, grads) -> str:
        product = b.op("Mul", grads[""][a], a)
        return head_mean(b, b.op("Relu", product) if positive else product)
    return weighting


def gradient_times_relevance(b: GraphBuilder, a: str, grads) -> str:
    """E_h (G * R)+ with R the LRP relevance of the map."""
    return head_mean(b, b.op("Relu", b.op("Mul", grads[""][a], grads[RELEVANCE][a])))
