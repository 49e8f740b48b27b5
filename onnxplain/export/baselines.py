"""Baselines computed from the input, as ONNX ops: the Gaussian blur of an image and seeded
uniform noise within each row's range. An exported Integrated Gradients or DeepLIFT with
baseline=blur or uniform computes its reference in the graph (export.methods.baseline_input);
in process the same ops run as a program of their own (baseline_program) whose result is
fed to the method's program, so both compute one definition.

The blur is separable, mirroring at the borders (reflect where the side is longer than the
kernel's radius, else the edge value), kernel radius max(1, round(3 sigma)). The uniform
baseline draws one row of U(0, 1) from export.random's generator keyed by the seed (every
row the same unit draws, scaled to its own [min, max]): a row's baseline does not depend on
the other rows of the batch."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from ..images import image_layout
from .random import WORD, indices, uniform

COMPUTED = ("blur", "uniform")


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of `sigma` pixels, radius max(1, round(3 sigma))."""
    radius = max(1, int(round(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def computed_baseline(b: GraphBuilder, x: str, kind: str, sigma: float, seed: int,
                      name: str) -> str:
    """The baseline `kind` (COMPUTED) of input `x` (called `name` in messages), shaped and
    typed like it."""
    if kind == "blur":
        return _blurred(b, x, float(sigma), name)
    if not 0 <= int(seed) < WORD:
        raise InputError(f"the uniform baseline's seed must be in 0 .. 2**32 - 1, not {seed}")
    return _uniform_in_range(b, x, int(seed))


def baseline_program(x: np.ndarray, kind: str, sigma: float, seed: int, name: str):
    """A model x -> computed_baseline(x), for `x`'s shape and type (run in process)."""
    dtype = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph([], "baseline", [helper.make_tensor_value_info(
        "x", dtype, ["N", *x.shape[1:]])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    b = GraphBuilder(model, {"x": TensorInfo(dtype, ("N", *x.shape[1:]))})
    out = computed_baseline(b, "x", kind, sigma, seed, name)
    model.graph.output.append(helper.make_tensor_value_info(out, dtype, None))
    return model


def graph_layout(b: GraphBuilder, x: str, refusal: str, shown: str | None = None) -> str:
    """'NCHW' or 'NHWC' of image tensor `x` in the graph (a symbolic side is taken as longer
    than 1, an image's), else InputError: `refusal`, then the shape of `shown` (default x)."""
    dims = b.info(x).shape
    layout = None if dims is None else image_layout(
        tuple(d if isinstance(d, int) else 2 for d in dims))
    if layout is None:
        raise InputError(f"{refusal}; '{shown or x}' has shape "
                         f"{'unknown' if dims is None else tuple(dims)}")
    return layout


def _blurred(b: GraphBuilder, x: str, sigma: float, name: str) -> str:
    layout = graph_layout(b, x, "a blurred baseline needs an image input", name)
    if sigma <= 0:
        return b.op("Identity", x)
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    nchw = x if layout == "NCHW" else b.op("Transpose", x, perm=[0, 3, 1, 2])
    # Every channel blurred alike: [N * C, 1, H, W] through a one-channel convolution, in
    # float (ONNX Runtime's CPU Conv takes no double; half inputs are widened).
    flat = b.op("Cast", b.reshape(nchw, b.concat([b.ints([-1, 1]), b.dims(nchw, 2)], 0)),
                to=TensorProto.FLOAT)
    b.infos[flat] = TensorInfo(TensorProto.FLOAT, (None, 1, None, None))
    # Blurred about each channel's minimum: a flat channel comes back exactly (its
    # attributions then are exactly 0, and warned), not off by the kernel's rounding.
    low = b.reduce("ReduceMin", flat, [2, 3], True)
    flat = b.op("Sub", flat, low)
    b.infos[flat] = TensorInfo(TensorProto.FLOAT, (None, 1, None, None))
    for axis, shape in ((2, (1, 1, len(kernel), 1)), (3, (1, 1, 1, len(kernel)))):
        padded = b.op("Gather", flat, _mirrored(b, b.dim(flat, axis), radius), axis=axis)
        b.infos[padded] = b.info(flat)
        flat = b.op("Conv", padded, b.const(kernel.reshape(shape).astype(np.float32)))
        b.infos[flat] = TensorInfo(TensorProto.FLOAT, (None, 1, None, None))
    flat = b.op("Add", flat, low)
    blurred = b.reshape(b.op("Cast", flat, to=b.dtype(x)), b.shape(nchw))
    out = blurred if layout == "NCHW" else b.op("Transpose", blurred, perm=[0, 2, 3, 1])
    b.infos[out] = b.info(x)
    return out


def _mirrored(b: GraphBuilder, length: str, radius: int) -> str:
    """Indices of a side of `length` (int64 [1]) padded by `radius` on both ends:
    mirrored (-p, 2 (L - 1) - p) where L > radius, else clamped to the edge."""
    p = b.op("Sub", indices(b, b.op("Add", length, b.ints([2 * radius]))), b.ints([radius]))
    last = b.op("Sub", length, b.ints([1]))
    zero = b.ints([0])
    low = b.op("Less", p, zero)
    high = b.op("Greater", p, last)
    mirrored = b.where(low, b.op("Neg", p),
                       b.where(high, b.op("Sub", b.op("Mul", last, b.ints([2])), p), p))
    clamped = b.where(low, zero, b.where(high, last, p))
    return b.where(b.op("Greater", length, b.ints([radius])), mirrored, clamped)


def _uniform_in_range(b: GraphBuilder, x: str, seed: int) -> str:
    axes = list(range(1, b.rank(x)))
    low, high = (b.reduce(op, x, axes, True) for op in ("ReduceMin", "ReduceMax"))
    size = b.reduce("ReduceProd", b.concat([b.ints([1]), b.dims(x, 1)], 0), [0], True)
    draws = uniform(b, b.ints([seed]), b.ints([0]), size, b.dtype(x))  # [1, 1, size]
    row = b.reshape(draws, b.concat([b.ints([1]), b.dims(x, 1)], 0))
    out = b.op("Add", low, b.op("Mul", row, b.op("Sub", high, low)))
    b.infos[out] = b.info(x)
    return out
