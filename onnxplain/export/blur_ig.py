"""Blur Integrated Gradients as one graph: methods.blur_ig runs it in process and `export`
saves it. Its steps run in a Loop, about `internal_batch_size` rows per iteration
(export.loop), so memory does not grow with the steps.

Step i < steps evaluates the model at x_i = blur(x, sigma_i) and adds
(sigma_{i+1} - sigma_i) * (blur(x, sigma_i + grad_step) - x_i) / grad_step * dS/dx(x_i) to a
sum the program negates at the end, as PAIR's saliency.core.BlurIG does. Each step weighs by
its own sigma difference (a left Riemann sum, even for the uneven sqrt spacing), so the sum
approximates S(x) - S(blur(x, sigma_steps)): the Loop's first iteration also runs the clean
rows [x; blur(x, sigma_steps)], whose scores give the convergence delta
(declare_completeness). The blur is
scipy.ndimage.gaussian_filter's, which PAIR calls: a 1-D Gaussian truncated at
int(4 sigma + 0.5) pixels (truncate=4.0), applied along the height and then the width with
zeros beyond the border (mode="constant"), each pass summed in double and rounded to the
input's type (scipy's output array has the image's type), and sigma 0 the image itself. With
zeros outside, a pass is a matrix product: rows i of the side's [L, L] matrix hold the
kernel at offsets m - i, and the kernels of a chunk's steps are computed in the graph from
per-step tables (-1/(2 sigma^2) and the radius), so the program's size does not grow with
max_sigma or the steps."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..graph.shapes import TensorInfo
from .baselines import graph_layout
from .graph import ExplainerGraph
from .loop import Chunk, Walk, aliases, gradient_loop, repeated, weighted_blocks
from .methods import declare_completeness, declare_per_input, float_inputs, register_export
from .noise import as_double
from .random import indices

TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default, which PAIR keeps


def blur_sigmas(max_sigma: float, steps: int, sqrt: bool) -> np.ndarray:
    """sigma_0 .. sigma_steps, PAIR's spacing: i max_sigma / steps, or its square root."""
    if sqrt:
        return np.array([math.sqrt(float(i) * max_sigma / float(steps))
                         for i in range(steps + 1)])
    return np.array([float(i) * max_sigma / float(steps) for i in range(steps + 1)])


@register_export("blur_ig", ("max_sigma", "steps", "grad_step", "sqrt",
                             "internal_batch_size"))
def blur_ig(eg: ExplainerGraph, options: dict) -> None:
    """BlurIG_i = -sum_s (sigma_{s+1} - sigma_s) d blur(x, sigma_s)_i / d sigma
    d S(blur(x, sigma_s)) / d x_i (the module); extra outputs: the scores at x and at the
    most blurred image and the gap (declare_completeness)."""
    max_sigma, steps = float(options["max_sigma"]), int(options["steps"])
    grad_step, per_run = float(options["grad_step"]), int(options["internal_batch_size"])
    # The options are checked against their declarations (methods.blur_ig) before a build.
    b = eg.b
    inputs = list(eg.sources) if eg.sources is not None else float_inputs(eg)
    layouts = {name: _layout(b, name) for name in inputs}
    eg.take_model_nodes()
    sigmas = blur_sigmas(max_sigma, steps, bool(options["sqrt"]))
    walk = _walk(eg, inputs, layouts, sigmas, grad_step)
    sums = gradient_loop(eg, walk, per_run)
    values = {}
    for name, total in zip(inputs, sums, strict=True):
        values[name] = b.op("Cast", b.op("Neg", total), to=b.dtype(name))
        b.infos[values[name]] = b.info(name)
    declare_per_input(eg, values, f"Blur IG ({steps} steps to sigma {max_sigma})")
    declare_completeness(eg, values)


def _layout(b, name: str) -> str:
    return graph_layout(b, name, "blur_ig blurs image inputs [N, C, H, W] or [N, H, W, C]")


def _walk(eg: ExplainerGraph, inputs: list[str], layouts: dict[str, str],
          sigmas: np.ndarray, grad_step: float) -> Walk:
    """The model at blur(x, sigma_s) for the steps s; sums: per input (double), the steps'
    weight * (blur(x, sigma_s + grad_step) - blur(x, sigma_s)) / grad_step * gradient. The
    clean rows: [x; x blurred at the path's start] (the other inputs twice)."""
    model, b = eg.model, eg.b
    rows = aliases(eg, [spec.name for spec in model.inputs])
    start = {name: _most_blurred(b, name, layouts[name], float(sigmas[-1])) for name in inputs}
    clean = {spec.name: b.concat([spec.name, start.get(spec.name, spec.name)], 0)
             for spec in model.inputs}
    # Padded to the largest kernel any step uses: the tables' offsets -R .. R.
    radius = _radius(float(sigmas[-2]) + grad_step) if len(sigmas) > 1 else 0
    tables = {"at": _kernel_tables(sigmas[:-1]),
              "beside": _kernel_tables(sigmas[:-1] + grad_step)}
    weights = np.diff(sigmas)
    slopes: dict[str, str] = {}

    def feeds(bb, chunk: Chunk) -> dict[str, str]:
        made = {name: repeated(bb, chunk, alias) for name, alias in rows.items()
                if name not in inputs}
        kernels = {key: _kernels(bb, table, chunk, radius) for key, table in tables.items()}
        for name in inputs:
            x = rows[name]
            at, beside = (_blurred(bb, x, layouts[name], kernels[key], radius)
                          for key in ("at", "beside"))  # [k, N, *row] each
            slopes[name] = bb.op("Div", bb.op("Sub", beside, at), bb.scalar(grad_step, at))
            made[name] = bb.reshape(at, bb.concat([bb.ints([-1]), bb.dims(x, 1)], 0))
        return made

    def contributions(bb, chunk: Chunk, grads: dict[str, str]) -> list[str]:
        weight = bb.op("Gather", bb.const(weights), chunk.index, axis=0)
        parts = []
        for name in inputs:
            product = bb.op("Mul", bb.reshape(grads[name], bb.shape(slopes[name])),
                            slopes[name])
            parts.append(weighted_blocks(bb, chunk, bb.op("Cast", product,
                                                          to=TensorProto.DOUBLE),
                                         weight, rows[name]))
        return parts

    return Walk(model, len(sigmas) - 1, clean, 2, inputs, feeds, contributions,
                [as_double(b, name) for name in inputs])


def _most_blurred(b, x: str, layout: str, sigma: float) -> str:
    """x [N, *row] blurred at `sigma` (> 0), as the steps blur: where the path starts."""
    radius = _radius(sigma)
    kernels = _kernels(b, _kernel_tables(np.array([sigma])), Chunk(b.ints([0]), b.ints([1])),
                       radius)
    out = b.reshape(_blurred(b, x, layout, kernels, radius),
                    b.concat([b.ints([-1]), b.dims(x, 1)], 0))
    b.infos[out] = b.info(x)
    return out


def _radius(sigma: float) -> int:
    """scipy's kernel radius: int(truncate * sigma + 0.5)."""
    return int(TRUNCATE * float(sigma) + 0.5)


def _kernel_tables(sigmas: np.ndarray) -> dict[str, np.ndarray]:
    """Per step: -1/(2 sigma^2) (0 for sigma 0, whose kernel is the identity) and the
    kernel's own radius, as scipy computes them."""
    scale = np.array([0.0 if s == 0 else -0.5 / (s * s) for s in sigmas])
    own = np.array([0 if s == 0 else _radius(s) for s in sigmas], np.int64)
    return {"scale": scale, "radius": own}


def _kernels(bb, table: dict[str, np.ndarray], chunk: Chunk, radius: int) -> str:
    """The chunk's normalised 1-D kernels, double [k, 2R + 1] (offsets -R .. R, zero past
    each step's own radius)."""
    offsets = np.arange(-radius, radius + 1)
    scale, own = (bb.unsqueeze(bb.op("Gather", bb.const(table[key]), chunk.index, axis=0),
                               [1]) for key in ("scale", "radius"))
    phi = bb.op("Exp", bb.op("Mul", scale, bb.const((offsets.astype(np.float64) ** 2)[None])))
    inside = bb.op("Not", bb.op("Greater", bb.const(np.abs(offsets)[None]), own))
    phi = bb.where(inside, phi, bb.const(np.array(0.0)))
    return bb.op("Div", phi, bb.reduce("ReduceSum", phi, [1], True))


def _side_matrices(bb, kernels: str, length: str, radius: int) -> str:
    """[k, 1, 1, L, L]: row i holds the kernel at offsets m - i, zeros past the border."""
    positions = indices(bb, length)
    offsets = bb.op("Sub", bb.unsqueeze(positions, [0]), bb.unsqueeze(positions, [1]))
    inside = bb.op("Not", bb.op("Greater", bb.op("Abs", offsets), bb.ints([radius])))
    # Offsets past R read any entry (R's own): the mask zeroes them.
    clipped = bb.where(inside, offsets, bb.ints([radius]))
    picked = bb.op("Gather", kernels, bb.op("Add", clipped, bb.ints([radius])), axis=1)
    matrix = bb.where(bb.unsqueeze(inside, [0]), picked, bb.const(np.array(0.0)))
    return bb.unsqueeze(matrix, [1, 2])


def _blurred(bb, x: str, layout: str, kernels: str, radius: int) -> str:
    """x [N, *row] blurred with each kernel along height, then width: [k, N, *row] in x's
    type, each pass rounded to it (module)."""
    nchw = x if layout == "NCHW" else bb.op("Transpose", x, perm=[0, 3, 1, 2])
    height, width = (_side_matrices(bb, kernels, bb.dim(nchw, axis), radius)
                     for axis in (2, 3))
    dtype = bb.dtype(x)
    image = bb.unsqueeze(bb.op("Cast", nchw, to=TensorProto.DOUBLE), [0])  # [1, N, C, H, W]
    down = bb.op("Cast", bb.op("Cast", bb.op("MatMul", height, image), to=dtype),
                 to=TensorProto.DOUBLE)
    across = bb.op("MatMul", down, bb.op("Transpose", width, perm=[0, 1, 2, 4, 3]))
    out = bb.op("Cast", across, to=dtype)
    if layout == "NHWC":
        out = bb.op("Transpose", out, perm=[0, 1, 3, 4, 2])
    shape = bb.info(x).shape
    bb.infos[out] = TensorInfo(dtype, None if shape is None else (None, *shape))
    return out
