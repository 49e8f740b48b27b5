"""Sum a gradient back over the axes that numpy-style broadcasting expanded."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ModelError
from ..graph.builder import GraphBuilder
from .registry import NodeContext

Shape = tuple | None

# Before opset 13 ReduceSum takes its axes as an attribute, so they must be known statically
# or masked in at run time; before opset 10 Slice cannot cut a run-time shape out either.
RUNTIME_AXES_OPSET = 13
SLICE_INPUTS_OPSET = 10


def _broadcast_axes(b: GraphBuilder, x: str, y: str, others: Sequence[Shape] | None = None
                    ) -> tuple[int, list[int], list[int]]:
    b.rank(x), b.rank(y)  # raise a clear error when a rank is unknown
    return broadcast_axes(b.info(x).certain, b.info(y).certain, others)


def broadcast_axes(shape_x: tuple, shape_y: tuple, others: Sequence[Shape] | None = None
                   ) -> tuple[int, list[int], list[int]]:
    """(leading axes added, size-1 axes of x that were expanded, axes of x that may be 1).

    Axes are decided from the inferred shapes only when certain: a dim of x that is unknown
    (or only guessed) and not provably equal to y's may be 1 at run time, unless every
    other operand (`others`, certain shapes aligned at the right like y; None for an
    unknown one; None when they are not known at all) is certainly 1 there or does not
    reach that axis: then y's dim is x's.
    """
    rank_x = len(shape_x)
    lead = len(shape_y) - rank_x
    axes: list[int] = []
    uncertain: list[int] = []
    for i in range(rank_x):
        dx, dy = shape_x[i], shape_y[lead + i]
        if dx == 1:
            if dy != 1:
                axes.append(i)
        elif isinstance(dx, int) or dy == 1 or (dx is not None and dx == dy):
            continue  # x is not broadcast along this axis
        elif others is not None and not _others_expand(others, len(shape_y), lead + i):
            continue
        else:
            uncertain.append(i)
    return lead, axes, uncertain


def _others_expand(others: Sequence[Shape], rank_y: int, axis: int) -> bool:
    """Whether some other operand may be larger than 1 along axis `axis` of the result."""
    for shape in others:
        if shape is None:
            return True
        own = axis - (rank_y - len(shape))
        if own >= 0 and shape[own] != 1:
            return True
    return False


def unbroadcast(b: GraphBuilder, g: str, x: str, y: str,
                others: Sequence[Shape] | None = None) -> str:
    """Reduce g, shaped like the broadcast result y, to the shape of operand x; `others` are
    the certain shapes of the other operands (see broadcast_axes; None: not known).

    When the expanded axes are uncertain statically, the size-1 axes of x are found at run
    time (Shape, Equal, NonZero), so dynamic batch and sequence axes work.
    """
    lead, axes, uncertain = _broadcast_axes(b, x, y, others)
    if lead:
        g = b.reduce("ReduceSum", g, list(range(lead)), keepdims=False)
    if not uncertain:
        return b.reduce("ReduceSum", g, axes, keepdims=True) if axes else g
    if b.opset < SLICE_INPUTS_OPSET:
        raise ModelError(undecidable_reason(b, x))
    if b.opset < RUNTIME_AXES_OPSET:
        return _sum_where_one(b, g, x, axes, uncertain)
    ones = b.op("Equal", b.shape(x), b.ints([1]))
    found = b.reshape(b.op("NonZero", ones), [-1])
    return b.op("ReduceSum", g, found, keepdims=1, noop_with_empty_axes=1)


def _sum_where_one(b: GraphBuilder, g: str, x: str, axes: list[int], maybe: list[int]) -> str:
    """unbroadcast before opset 13 (static reduce axes only): each axis of x that may be 1
    is summed, and the sum kept (broadcast back over the axis by Where) where x's dim is 1 at
    run time; x's shape is then sliced out of the result."""
    if axes:
        g = b.reduce("ReduceSum", g, axes, keepdims=True)
    shape = b.shape(x)
    for axis in maybe:
        one = b.op("Equal", b.slice(shape, [axis], [axis + 1], [0]), b.ints([1]))
        g = b.where(one, b.reduce("ReduceSum", g, [axis], keepdims=True), g)
    rank = b.rank(x)
    return b.slice(g, [0] * rank, shape, list(range(rank)))


def undecidable_reason(b: GraphBuilder, x: str) -> str:
    return (f"cannot tell statically which axes of '{x}' are broadcast, and opset {b.opset} "
            f"has no Slice with run-time ends (opset {SLICE_INPUTS_OPSET}+ decides at run "
            "time)")


def broadcast_supports(c: NodeContext) -> str | None:
    """`supports` for ops that broadcast their inputs into output 0: reject, before building,
    the old-opset cases where unbroadcast could not decide the axes."""
    b = c.b
    if b.opset >= SLICE_INPUTS_OPSET:
        return None
    for i, name in enumerate(c.node.input):
        if c.need(i) and b.info(name).rank is not None and b.info(c.y()).rank is not None:
            if _broadcast_axes(b, name, c.y(), other_shapes(b, c.node.input, i))[2]:
                return undecidable_reason(b, name)
    return None


def other_shapes(b: GraphBuilder, inputs: Sequence[str], index: int) -> list[Shape]:
    """Certain shapes of every input but `index` (None where the rank is unknown)."""
    return [b.info(name).certain for i, name in enumerate(inputs) if i != index and name]
