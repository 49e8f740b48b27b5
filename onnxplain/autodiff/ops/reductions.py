"""Reductions: ReduceSum, Mean, Max, Min, L1, L2, SumSquare, LogSum, LogSumExp and Prod.

Each rule brings the output gradient (and the output, where the formula needs it) back to
the keepdims shape, so that broadcasting against x spreads it over the reduced axes. The
reduced axes are an attribute before opset 13 (ReduceSum) or 18 (the others) and an optional
input after; a constant input is read at rewrite time, a computed one at run time. Empty
axes with noop_with_empty_axes=1 reduce over no axis: every formula below then degenerates
to the elementwise derivative, which is what ONNX Runtime and the reference compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ...graph.builder import GraphBuilder
from ..registry import NodeContext, rule


@dataclass(frozen=True)
class Axes:
    """The reduced axes of one node: known at rewrite time, or a tensor read at run time."""

    static: tuple[int, ...] | None  # non-negative and sorted; () reduces nothing (noop)
    tensor: str | None = None
    noop: int = 0


def input_axes_since(op_type: str) -> int:
    """The opset from which `axes` is an input instead of an attribute."""
    return 13 if op_type == "ReduceSum" else 18


def reduce_axes(c: NodeContext) -> Axes:
    b, x = c.b, c.x(0)
    rank = b.rank(x)
    every = tuple(range(rank))
    if b.opset < input_axes_since(c.node.op_type):
        listed = c.attr("axes", None)
        # Absent (or empty) axes attribute: reduce over all axes.
        return Axes(tuple(sorted({a % rank for a in listed})) if listed else every)
    noop = int(c.attr("noop_with_empty_axes", 0))
    name = c.x(1)
    values = b.static_ints(name) if name else []
    if values is None:
        return Axes(None, name, noop)
    if not values:
        return Axes(() if noop else every, None, noop)
    return Axes(tuple(sorted({a % rank for a in values})), None, noop)


def kept_shape(b: GraphBuilder, x: str, axes: Axes) -> str:
    """Shape(x) with the run-time reduced axes set to 1 (the keepdims output shape)."""
    def make() -> str:
        rank = b.rank(x)
        column = b.reshape(axes.tensor, [-1, 1])
        # An axis a is reduced when it appears in `axes` as a or as a - rank.
        hit = b.op("Or", b.op("Equal", column, b.ints(range(rank))),
                   b.op("Equal", column, b.ints(range(-rank, 0))))
        counts = b.op("ReduceSum", b.op("Cast", hit, to=TensorProto.INT64), b.ints([0]), keepdims=0)
        reduced = b.op("Greater", counts, b.const(np.array(0, dtype=np.int64)))
        if not axes.noop:
            # Empty axes without noop_with_empty_axes reduce over every axis.
            empty = b.op("Equal", b.op("Size", axes.tensor), b.const(np.array(0, np.int64)))
            reduced = b.op("Or", reduced, empty)
        return b.where(reduced, b.ints([1]), b.shape(x))
    return b.memo(("kept_shape", x, axes.tensor, axes.noop), make)


class Reduction:
    """Helpers bound to one reduce node: keepdims views, like-reductions and expansion."""

    def __init__(self, c: NodeContext):
        self.c, self.b, self.x = c, c.b, c.x(0)
        self.axes = reduce_axes(c)
        self.keepdims = int(c.attr("keepdims", 1))

    def keep(self, t: str) -> str:
        """A tensor shaped like the output, reshaped to the keepdims shape."""
        b, axes = self.b, self.axes
        if self.keepdims or axes.static == ():
            return t
        if axes.static is not None:
            return b.unsqueeze(t, axes.static)
        return b.reshape(t, kept_shape(b, self.x, axes))

    def reduce(self, op_type: str, t: str) -> str:
        """Reduce an x-shaped tensor over the same axes, keeping dims."""
        b, axes = self.b, self.axes
        if axes.static is not None:
            return b.reduce(op_type, t, list(axes.static), keepdims=True)
        return b.op(op_type, t, axes.tensor, keepdims=1, noop_with_empty_axes=axes.noop)

    def expand(self, t: str) -> str:
        return self.b.op("Expand", t, self.b.shape(self.x))

    def count(self, like: str) -> str:
        """Number of elements reduced into each output element, a scalar of like's type."""
        b, axes = self.b, self.axes
        shape = b.info(self.x).certain
        if axes.static is not None and shape is not None and all(
                isinstance(shape[a], int) for a in axes.static):
            return b.scalar(float(np.prod([shape[a] for a in axes.static])), like)
        # Size(y) is 0 only when x is empty too, so the NaN never reaches an element.
        return b.op("Div", b.size(self.x, like), b.size(self.c.y(), like))


@rule("ReduceSum")
def reduce_sum(c, gy):
    red = Reduction(c)
    return [red.expand(red.keep(gy[0]))]


@rule("ReduceMean")
def reduce_mean(c, gy):
    red = Reduction(c)
    g = red.keep(gy[0])
    return [red.expand(c.b.op("Div", g, red.count(g)))]


@rule("ReduceMax", "ReduceMin")
def reduce_max_min(c, gy):
    """The gradient goes to the elements equal to the result, split evenly between ties."""
    b, red = c.b, Reduction(c)
    g = red.keep(gy[0])
    mask = b.op("Cast", b.equal(red.x, red.keep(c.y())), to=b.dtype(g))
    return [b.op("Mul", mask, b.op("Div", g, red.reduce("ReduceSum", mask)))]


@rule("ReduceL1")
def reduce_l1(c, gy):
    red = Reduction(c)
    return [c.b.op("Mul", red.keep(gy[0]), c.b.op("Sign", red.x))]


@rule("ReduceL2")
def reduce_l2(c, gy):
    """dx = g * x / y, and 0 where y = 0 (the subgradient torch.linalg.norm picks)."""
    b, red = c.b, Reduction(c)
    g, y = red.keep(gy[0]), red.keep(c.y())
    zero = b.scalar(0.0, g)
    share = b.where(b.equal(y, zero), zero, b.op("Div", g, y))
    return [b.op("Mul", red.x, share)]


@rule("ReduceSumSquare")
def reduce_sum_square(c, gy):
    b, red = c.b, Reduction(c)
    g = red.keep(gy[0])
    return [b.op("Mul", red.x, b.op("Mul", g, b.scalar(2.0, g)))]


@rule("ReduceLogSum")
def reduce_log_sum(c, gy):
    """y = log(sum x): dx = g / sum x = g / exp(y)."""
    b, red = c.b, Reduction(c)
    g = red.keep(gy[0])
    return [red.expand(b.op("Div", g, b.op("Exp", red.keep(c.y()))))]


@rule("ReduceLogSumExp")
def reduce_log_sum_exp(c, gy):
    """dx = g * exp(x - y), the softmax of x over the reduced axes."""
    b, red = c.b, Reduction(c)
    g = red.keep(gy[0])
    return [b.op("Mul", g, b.op("Exp", b.op("Sub", red.x, red.keep(c.y()))))]


@rule("ReduceProd")
def reduce_prod(c, gy):
    """dx_i = g * prod_{j != i} x_j, exact when some x_j are zero.

    With p = the product of the nonzero elements and z = the number of zeros in the slice:
    a nonzero x_i gets p / x_i if z = 0, else 0; a zero x_i gets p if z = 1, else 0.
    """
    b, red = c.b, Reduction(c)
    x, g = red.x, red.keep(gy[0])
    zero, one = b.scalar(0.0, x), b.scalar(1.0, x)
    is_zero = b.equal(x, zero)
    safe = b.where(is_zero, one, x)
    zeros = red.reduce("ReduceSum", b.op("Cast", is_zero, to=b.dtype(x)))
    nonzero_prod = red.reduce("ReduceProd", safe)
    at_zero = b.where(b.equal(zeros, one), nonzero_prod, zero)
    at_nonzero = b.where(b.equal(zeros, zero), nonzero_prod, zero)
    others = b.where(is_zero, at_zero, b.op("Div", at_nonzero, safe))
    return [b.op("Mul", g, others)]
