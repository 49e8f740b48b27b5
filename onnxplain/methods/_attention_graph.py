"""The attention methods' token matrices, computed inside the ONNX graph (autodiff.program's
Post): maps, gradients and relevances of every layer ([batch, heads, tokens, tokens]) are
reduced where ONNX Runtime computed them, and only [batch, tokens, tokens] comes back."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..autodiff.program import Post
from ..graph.builder import GraphBuilder

RELEVANCE = "relevance"
JOINT = "joint"

# (builder, attention maps, gradients by pass label and tensor) -> [N, S, S] per layer
Weighting = Callable[[GraphBuilder, str, Mapping[str, Mapping[str, str]]], str]


def head_mean(b: GraphBuilder, x: str) -> str:
    return b.reduce("ReduceMean", x, [1], keepdims=False)


def _identity(b: GraphBuilder, matrix: str) -> str:
    """[S, S] identity for [N, S, S] matrices, S read at run time."""
    first = b.op("Gather", matrix, b.ints([0]), axis=0)
    return b.op("EyeLike", b.squeeze(first, [0]))


def _normalised_rows(b: GraphBuilder, x: str) -> str:
    return b.op("Div", x, b.reduce("ReduceSum", x, [-1], keepdims=True))


def rollout_post(name: str, maps: Sequence[str], start: int, weighting: Weighting) -> Post:
    """prod over layers from `start` of normalise(I + weighting(layer)), later on the left."""
    def emit(b: GraphBuilder, grads: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        joint = None
        for a in maps[start:]:
            step = weighting(b, a, grads)
            step = _normalised_rows(b, b.op("Add", step, _identity(b, step)))
            joint = step if joint is None else b.op("MatMul", step, joint)
        assert joint is not None
        return {JOINT: joint}
    return Post((name, tuple(maps), start), emit)


def accumulate_post(name: str, maps: Sequence[str], weighting: Weighting) -> Post:
    """R = I, then R = R + weighting(layer) R for every layer."""
    def emit(b: GraphBuilder, grads: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        joint = None
        for a in maps:
            step = weighting(b, a, grads)
            joint = (b.op("Add", step, _identity(b, step)) if joint is None
                     else b.op("Add", joint, b.op("MatMul", step, joint)))
        assert joint is not None
        return {JOINT: joint}
    return Post((name, tuple(maps)), emit)


def product_post(name: str, maps: Sequence[str], weighting: Weighting) -> Post:
    """prod over layers of weighting(layer), later on the left (no identity, no norm)."""
    def emit(b: GraphBuilder, grads: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        joint = None
        for a in maps:
            step = weighting(b, a, grads)
            joint = step if joint is None else b.op("MatMul", step, joint)
        assert joint is not None
        return {JOINT: joint}
    return Post((name, tuple(maps)), emit)


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
