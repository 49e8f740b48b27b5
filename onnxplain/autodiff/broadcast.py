"""Sum a gradient back over the axes that numpy-style broadcasting expanded."""

from __future__ import annotations

from ..errors import ModelError
from ..graph.builder import GraphBuilder


def unbroadcast(b: GraphBuilder, g: str, x: str, y: str) -> str:
    """Reduce g, shaped like the broadcast result y, to the shape of operand x.

    Axes are found statically from the inferred shapes when they are certain; otherwise the
    size-1 axes of x are found at run time (Shape, Equal, NonZero), so dynamic batch and
    sequence axes work.
    """
    rank_x, rank_y = b.rank(x), b.rank(y)
    shape_x, shape_y = b.info(x).certain, b.info(y).certain
    lead = rank_y - rank_x
    if lead:
        g = b.reduce("ReduceSum", g, list(range(lead)), keepdims=False)
    axes: list[int] = []
    uncertain = False
    for i in range(rank_x):
        dx, dy = shape_x[i], shape_y[lead + i]
        if dx == 1:
            if dy != 1:
                axes.append(i)
        elif isinstance(dx, int) or dy == 1 or (dx is not None and dx == dy):
            continue  # x is not broadcast along this axis
        else:
            uncertain = True  # x's dim is unknown and may be 1 at run time
    if not uncertain:
        return b.reduce("ReduceSum", g, axes, keepdims=True) if axes else g
    if b.opset < 13:
        raise ModelError(f"cannot tell statically which axes of '{x}' are broadcast; models "
                         f"with opset {b.opset} need static reduce axes (opset 13+ decides at "
                         "run time)")
    ones = b.op("Equal", b.shape(x), b.ints([1]))
    found = b.reshape(b.op("NonZero", ones), [-1])
    return b.op("ReduceSum", g, found, keepdims=1, noop_with_empty_axes=1)
