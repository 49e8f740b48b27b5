"""Elementwise arithmetic: binary ops with broadcasting, variadic ops, Where, Clip, Cast."""

from __future__ import annotations

import math

import numpy as np

from ..broadcast import broadcast_supports, other_shapes, unbroadcast
from ..registry import NodeContext, rule


def _each(c: NodeContext, g: str | None, *parts) -> list[str | None]:
    """For each input i: unbroadcast(part_i()) if input i needs a gradient, else None."""
    if g is None:
        return [None] * len(parts)
    return [unbroadcast(c.b, make(), c.x(i), c.y(), other_shapes(c.b, c.node.input, i))
            if c.need(i) else None for i, make in enumerate(parts)]


@rule("Add", supports=broadcast_supports)
def add(c, gy):
    g = gy[0]
    return _each(c, g, lambda: g, lambda: g)


@rule("Sub", supports=broadcast_supports)
def sub(c, gy):
    g = gy[0]
    return _each(c, g, lambda: g, lambda: c.b.op("Neg", g))


@rule("Mul", supports=broadcast_supports)
def mul(c, gy):
    g, b = gy[0], c.b
    return _each(c, g, lambda: b.op("Mul", g, c.x(1)), lambda: b.op("Mul", g, c.x(0)))


@rule("Div", supports=broadcast_supports)
def div(c, gy):
    g, b = gy[0], c.b
    # d(a/b)/db = -a/b^2 = -y/b
    return _each(c, g, lambda: b.op("Div", g, c.x(1)),
                 lambda: b.op("Neg", b.op("Mul", g, b.op("Div", c.y(), c.x(1)))))


@rule("Pow", supports=broadcast_supports)
def pow_(c, gy):
    g, b = gy[0], c.b
    base, exponent = c.x(0), c.x(1)

    def d_base() -> str:
        fixed = b.static_value(exponent)
        if fixed is not None and fixed.size == 1:
            e = float(fixed.reshape(()))
            if e == 2.0:
                return b.op("Mul", g, b.op("Mul", base, b.scalar(2.0, base)))
            power = b.op("Pow", base, b.scalar(e - 1.0, base))
            return b.op("Mul", g, b.op("Mul", power, b.scalar(e, base)))
        e = exponent if b.dtype(exponent) == b.dtype(base) else b.op(
            "Cast", exponent, to=b.dtype(base))
        power = b.op("Pow", base, b.op("Sub", e, b.scalar(1.0, base)))
        return b.op("Mul", g, b.op("Mul", power, e))

    def d_exponent() -> str:
        return b.op("Mul", g, b.op("Mul", c.y(), b.op("Log", base)))

    return _each(c, g, d_base, d_exponent)


@rule("Sum", supports=broadcast_supports)
def sum_(c, gy):
    g = gy[0]
    return _each(c, g, *[lambda: g] * len(c.node.input))


@rule("Mean", supports=broadcast_supports)
def mean(c, gy):
    g, b = gy[0], c.b
    if g is None:
        return []
    scaled = b.op("Div", g, b.scalar(len(c.node.input), g))
    return _each(c, g, *[lambda: scaled] * len(c.node.input))


@rule("Min", "Max", supports=broadcast_supports)
def min_max(c, gy):
    """The gradient goes to the inputs equal to the result, split evenly between ties."""
    g, b = gy[0], c.b
    if g is None:
        return []
    masks = [b.op("Cast", b.equal(x, c.y()), to=b.dtype(g)) for x in c.node.input]
    share = b.op("Div", g, b.add_all(masks)) if len(masks) > 1 else g
    return _each(c, g, *[(lambda m=m: b.op("Mul", share, m)) for m in masks])


@rule("Where", supports=broadcast_supports)
def where(c, gy):
    g, b = gy[0], c.b
    if g is None:
        return []
    zero = b.scalar(0.0, g)
    # The condition is boolean and never needs a gradient.
    return _each(c, g, lambda: None, lambda: b.where(c.x(0), g, zero),
                 lambda: b.where(c.x(0), zero, g))


@rule("Neg")
def neg(c, gy):
    return [c.b.op("Neg", gy[0])]


@rule("Abs")
def abs_(c, gy):
    return [c.b.op("Mul", gy[0], c.b.op("Sign", c.x(0)))]


@rule("Sqrt")
def sqrt(c, gy):
    b = c.b
    return [b.op("Div", b.op("Mul", gy[0], b.scalar(0.5, gy[0])), c.y())]


@rule("Exp")
def exp(c, gy):
    return [c.b.op("Mul", gy[0], c.y())]


@rule("Log")
def log(c, gy):
    return [c.b.op("Div", gy[0], c.x(0))]


@rule("Reciprocal")
def reciprocal(c, gy):
    b = c.b
    return [b.op("Neg", b.op("Mul", gy[0], b.op("Mul", c.y(), c.y())))]


@rule("Erf")
def erf(c, gy):
    b, x = c.b, c.x(0)
    gauss = b.op("Exp", b.op("Neg", b.op("Mul", x, x)))
    return [b.op("Mul", gy[0], b.op("Mul", gauss, b.scalar(2.0 / math.sqrt(math.pi), x)))]


@rule("Sin")
def sin(c, gy):
    return [c.b.op("Mul", gy[0], c.b.op("Cos", c.x(0)))]


@rule("Cos")
def cos(c, gy):
    return [c.b.op("Neg", c.b.op("Mul", gy[0], c.b.op("Sin", c.x(0))))]


def _clip_bounds(c: NodeContext) -> tuple[str, str]:
    """Clip's min and max as tensors: attributes before opset 11, optional inputs after."""
    b, x = c.b, c.x(0)
    info = np.finfo(b.np_dtype(x))
    if b.opset < 11:
        return (b.scalar(c.attr("min", float(info.min)), x),
                b.scalar(c.attr("max", float(info.max)), x))
    low = c.x(1) or b.scalar(float(info.min), x)
    high = c.x(2) or b.scalar(float(info.max), x)
    return low, high


@rule("Clip")
def clip(c, gy):
    """Gradient passes where min <= x <= max (inclusive, as torch.clamp); bounds get the rest."""
    g, b, x = gy[0], c.b, c.x(0)
    low, high = _clip_bounds(c)
    below, above = b.op("Less", x, low), b.op("Greater", x, high)
    inside = b.op("Not", b.op("Or", below, above))
    zero = b.scalar(0.0, g)
    grads: list[str | None] = [b.keep(g, inside) if c.need(0) else None]
    for i, mask in ((1, below), (2, above)):
        if c.need(i):
            grads.append(b.reduce("ReduceSum", b.where(mask, g, zero), None, keepdims=False))
        else:
            grads.append(None)
    return grads


@rule("Cast", "CastLike")
def cast(c, gy):
    return [c.b.op("Cast", gy[0], to=c.b.dtype(c.x(0)))]


@rule("Identity")
def identity(c, gy):
    return [gy[0]]


@rule("Dropout")
def dropout(c, gy):
    """Inference-mode Dropout is the identity; a graph run with training_mode=True is not."""
    return [gy[0]]
