"""The attention methods' token scores, computed inside the ONNX graph (autodiff.program's
Post): maps, gradients and relevances of every layer ([batch, heads, tokens, tokens]) are
reduced where ONNX Runtime computed them, and only one row per input comes back.

Every method is a chain of per-layer token matrices M_l read at the query row q. The row is
carried from the last layer down as a vector, e_q^T X_L X_(L-1) ... X_start, so no matrix
product of two token matrices is ever formed.

Everything here runs in float32, whatever the model's precision: products of a gradient and a
relevance (each ~1e-4 in a random-weight BERT) and their products across layers fall below
float16's smallest subnormal (6e-8) and would come back as an all-zero map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from onnx import TensorProto

from ..autodiff.ops.shape import iota
from ..autodiff.program import Pass, Post
from ..graph.builder import HALF_TYPES, GraphBuilder
from ..rules.chefer import CHEFER

RELEVANCE = "relevance"
ROW = "row"

# (builder, attention map, gradients by pass label and tensor) -> [N, S, S]
Weighting = Callable[[GraphBuilder, str, Mapping[str, Mapping[str, str]]], str]


@dataclass(frozen=True)
class Reading:
    """What an attention method's graph (export.attention) reads and where its scores go,
    resolved before building: in process from the inputs, by export from static shapes.

    `query`: the row read (None: the mean of all rows; LAST_REAL: each row's last real
    token, read from the padding mask in the graph); `prefix` tokens before the `grid` of
    patches of an image; `text`: token-id inputs that take one score per token; `cached`:
    the maps are [Tq, P + Tq] (a KV cache), squared in the graph.
    """

    query: int | str | None
    prefix: int = 0
    grid: tuple[int, int] | None = None
    text: tuple[str, ...] = ()
    cached: bool = False


LAST_REAL = "last_real"


def head_mean(b: GraphBuilder, x: str) -> str:
    return b.reduce("ReduceMean", x, [1], keepdims=False)


def wide_type(b: GraphBuilder, x: str) -> int:
    """The type the scores computed from x are in: float32 for half precision, else x's."""
    return TensorProto.FLOAT if b.dtype(x) in HALF_TYPES else b.dtype(x)


def wide(b: GraphBuilder, x: str) -> str:
    """x as float32 where it is half precision (see the module docstring)."""
    if b.dtype(x) not in HALF_TYPES:
        return x
    return b.memo(("float32", x), lambda: b.op("Cast", x, to=TensorProto.FLOAT))


def _first_row(b: GraphBuilder, matrix: str, query: int | None) -> str:
    """[1, 1, S]: e_q, or the mean of all rows (1/S everywhere) when query is None."""
    eye = b.op("EyeLike", b.squeeze(b.op("Gather", matrix, b.ints([0]), axis=0), [0]))
    row = (b.op("Gather", eye, b.ints([query]), axis=0) if query is not None
           else b.reduce("ReduceMean", eye, [0], keepdims=True))
    return b.unsqueeze(row, [0])


def _unit_row(b: GraphBuilder, a: str, query: int | str) -> str:
    """[1 or N, 1, K]: e_(P+q) over the K keys of a map [N, H, Tq, K], P = K - Tq the cached
    keys before the queries' own (0 without a KV cache); `query` an index, or the name of an
    int64 [N] tensor of one index per row."""
    keys = b.dim(a, 3)
    at = b.op("Add", b.op("Sub", keys, b.dim(a, 2)),
              b.ints([query]) if isinstance(query, int) else b.unsqueeze(query, [1]))
    hot = b.op("Cast", b.op("Equal", b.unsqueeze(iota(b, keys), [0]), at),
               to=wide_type(b, a))
    return b.unsqueeze(hot, [1])


def _with_cached_rows(b: GraphBuilder, m: str, identity: bool) -> str:
    """[N, K, K] from a layer's [N, Tq, K] matrix: P = K - Tq rows on top for the cached keys,
    which are inputs of this step: rows that keep them as they are (zero rows, since the
    steps add the identity; identity rows for the plain product)."""
    past = b.op("Sub", b.dim(m, 2), b.dim(m, 1))
    zero = b.ints([0])
    square = b.pad(m, b.concat([zero, past, zero, zero, zero, zero], 0))
    if not identity:
        return square
    cached = b.op("Cast", b.op("Less", iota(b, b.dim(m, 2)), past), to=b.dtype(m))
    eye = b.op("EyeLike", b.squeeze(b.op("Gather", square, b.ints([0]), axis=0), [0]))
    return b.op("Add", square, b.op("Mul", eye, b.unsqueeze(cached, [1])))


def _query_rows(b: GraphBuilder, a: str, grads: Mapping[str, Mapping[str, str]],
                query: int | str) -> tuple[str, dict[str, dict[str, str]]]:
    """Row `query` of a map ([N, H, 1, S]) and the same rows of its gradients, keyed as a
    weighting looks them up (`query` as _unit_row takes it)."""
    def row(x: str) -> str:
        if isinstance(query, int):
            return b.op("Gather", x, b.ints([query]), axis=2)
        sizes = b.concat([b.dims(x, 0, 2), b.ints([1]), b.dim(x, 3)], 0)
        at = b.op("Expand", b.reshape(query, [-1, 1, 1, 1]), sizes)
        return b.op("GatherElements", x, at, axis=2)
    sliced = row(a)
    return sliced, {label: {sliced: row(found[a])} if a in found else {}
                    for label, found in grads.items()}


def _normalised_step(b: GraphBuilder, v: str, m: str) -> str:
    """v^T normalise_rows(I + M) = w^T M + w with w = v / rowsum(I + M)."""
    sums = b.op("Add", b.reduce("ReduceSum", m, [-1], keepdims=False), b.scalar(1.0, m))
    w = b.op("Div", v, b.unsqueeze(sums, [1]))
    return b.op("Add", b.op("MatMul", w, m), w)


def _normalised_first(b: GraphBuilder, e: str, m: str) -> str:
    """_normalised_step for v = e_q given only row q of M ([N, 1, S]): w_q M[q] + w, with
    w_q = 1 / rowsum_q as the full step computes it."""
    sums = b.op("Add", b.reduce("ReduceSum", m, [-1], keepdims=True), b.scalar(1.0, m))
    w = b.op("Div", e, sums)
    return b.op("Add", b.op("Mul", b.op("Div", b.scalar(1.0, m), sums), m), w)


STEPS: dict[str, Callable[[GraphBuilder, str, str], str]] = {
    # Abnar and Zuidema's rollout: prod normalise(I + M_l).
    "rollout": _normalised_step,
    # Chefer et al. 2021b: R = R + M_l R, layer after layer.
    "accumulate": lambda b, v, m: b.op("Add", v, b.op("MatMul", v, m)),
    # A plain product of the M_l.
    "product": lambda b, v, m: b.op("MatMul", v, m),
}
# The same steps for v = e_q given row q of M_l alone (the last layer: only that row is read).
FIRST_STEPS: dict[str, Callable[[GraphBuilder, str, str], str]] = {
    "rollout": _normalised_first,
    "accumulate": lambda b, e, m: b.op("Add", e, m),
    "product": lambda b, e, m: m,
}


def chain_post(name: str, maps: Sequence[str], start: int, weighting: Weighting, step: str,
               query: int | str | None, cached: bool = False) -> Post:
    """Post computing row `query` (an index, an int64 [N] tensor of one per row, or None: the
    mean of all rows) of X_L ... X_start, X_l = STEPS[step] applied to
    M_l = weighting(layer l): [N, S] scores under the label ROW. With `cached` keys
    ([Tq, P + Tq] maps) every M_l gets rows for the P cached positions (_with_cached_rows)
    and the scores are [N, P + Tq], the cached positions first."""
    def emit(b: GraphBuilder, grads: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        def square(m: str) -> str:
            return _with_cached_rows(b, m, step == "product") if cached else m
        matrices = [square(weighting(b, a, grads)) for a in maps[start:-1]]
        if query is None:
            matrices.append(square(weighting(b, maps[-1], grads)))
            v = _first_row(b, matrices[-1], query)
        else:
            # The last layer's matrix is read at row q only: weigh just that row.
            row, view = _query_rows(b, maps[-1], grads, query)
            v = FIRST_STEPS[step](b, _unit_row(b, maps[-1], query), weighting(b, row, view))
        for m in reversed(matrices):
            v = STEPS[step](b, v, m)
        return {ROW: b.squeeze(v, [1])}
    return Post((name, tuple(maps), start, step, query, cached), emit)


def attention_mean(b: GraphBuilder, a: str, grads) -> str:
    """E_h A."""
    return head_mean(b, wide(b, a))


def gradient_times_attention(positive: bool) -> Weighting:
    """E_h (G * A), or E_h (G * A)+."""
    def weighting(b: GraphBuilder, a: str, grads) -> str:
        product = b.op("Mul", wide(b, grads[""][a]), wide(b, a))
        return head_mean(b, b.op("Relu", product) if positive else product)
    return weighting


def gradient_times_relevance(b: GraphBuilder, a: str, grads) -> str:
    """E_h (G * R)+ with R the LRP relevance of the map."""
    product = b.op("Mul", wide(b, grads[""][a]), wide(b, grads[RELEVANCE][a]))
    return head_mean(b, b.op("Relu", product))


def relevance_pass(maps, active) -> Pass:
    """R_l for every map under Chefer et al.'s LRP. Activations are what depends on the
    source tensors `active` (not only on the maps), so that a residual sum splits relevance
    between both its branches in the first layer too."""
    return Pass(RELEVANCE, CHEFER, tuple(maps), tuple(active))
