"""RISE as one graph (methods.rise's estimator): the masks are made inside the perturbation
Loop (export.perturb) from the iteration's indices.

The seed fixes the random draws as today's numpy code takes them (rise_plan:
np.random.default_rng): for images a grid x grid kept/dropped grid and a crop shift per
mask, stored as small initializers [n_masks, grid, grid] and [n_masks, 2] with the two
bilinear resize matrices; each iteration gathers its masks' draws, upsamples them by two
matrix products and crops them at their shifts (rows of the resize matrices), so no
n_masks x H x W table is stored. Tabular rows and token ids keep one boolean per feature
per mask ([n_masks, *row], as in-process did before)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from .._text import brief
from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from ..images import image_layout
from .loop import Chunk
from .methods import ATTRIBUTION, baseline_input, register_export
from .perturb import (
    Perturbation,
    Scores,
    baseline_row,
    perturbation_loop,
    perturbed_input,
    row_shape,
    zeros,
)


@dataclass(frozen=True)
class RisePlan:
    """The random draws behind every mask, taken up front: they are tiny (a grid x grid
    boolean grid and a shift per mask), so mask i never depends on the chunk it is made in."""

    shape: tuple[int, ...]       # the mask's shape: (H, W) for images, else the features
    kept: np.ndarray             # [n, grid, grid] (images) or [n, *shape] booleans
    shifts: np.ndarray | None    # [n, 2] crop offsets in [0, cell) (images)
    rows: np.ndarray | None      # [(grid + 1) * cell_h, grid] bilinear weights along H
    cols: np.ndarray | None      # [(grid + 1) * cell_w, grid] bilinear weights along W

    @property
    def count(self) -> int:
        return self.kept.shape[0]


def rise_plan(shape: tuple[int, ...], n_masks: int, grid: int | None, keep: float, seed: int
              ) -> RisePlan:
    """The draws of `n_masks` RISE masks of `shape`, from np.random.default_rng(seed).

    With `grid` (images, shape (H, W)): cells of a grid x grid grid are kept with probability
    `keep`, and each mask is cropped at a random shift in [0, ceil(H / grid)) x
    [0, ceil(W / grid)). With grid=None: every feature of `shape` is kept with probability
    `keep` (tabular features, token ids).
    """
    if n_masks < 1:
        raise InputError(f"rise: n_masks must be at least 1, got {n_masks}")
    if not 0 < keep <= 1:
        raise InputError(f"rise: keep is a probability in (0, 1], got {keep}")
    rng = np.random.default_rng(seed)
    if grid is None:
        return RisePlan(tuple(shape), rng.random((n_masks, *shape)) < keep, None, None, None)
    if grid < 1:
        raise InputError(f"rise: grid must be at least 1 cell per side, got {grid}")
    height, width = shape
    cells = (math.ceil(height / grid), math.ceil(width / grid))
    kept = rng.random((n_masks, grid, grid)) < keep
    shifts = np.stack([rng.integers(0, cells[0], n_masks),
                       rng.integers(0, cells[1], n_masks)], axis=1)
    return RisePlan((height, width), kept, shifts, _bilinear((grid + 1) * cells[0], grid),
                    _bilinear((grid + 1) * cells[1], grid))


def _bilinear(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] weights of a linear resize with half-pixel centres and clamped edges
    (torch's align_corners=False, tf.image.resize): resizing is then a matrix product."""
    source = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), low), 1 - (source - low))
    np.add.at(weights, (np.arange(n_out), high), source - low)
    return weights


def rise_masks(plan: RisePlan, start: int, stop: int) -> np.ndarray:
    """Masks start..stop-1 of `plan` as float32 [stop - start, *plan.shape] in [0, 1]: the
    definition the graph computes (export.rise), written out for the tests' references.

    Images: M_i = crop(upsample(G_i)) with G_i the kept cells, upsampled bilinearly to
    ((grid + 1) * cell_h, (grid + 1) * cell_w) and cropped to H x W at the mask's shift.
    Features: the kept booleans as 0 / 1.
    """
    kept = plan.kept[start:stop]
    if plan.shifts is None:
        return kept.astype(np.float32)
    height, width = plan.shape
    shifts = plan.shifts[start:stop]
    # Cropping the upsampled grid = taking H consecutive rows of the resize matrix.
    rows = plan.rows[shifts[:, :1] + np.arange(height)]          # [n, H, grid]
    cols = plan.cols[shifts[:, 1:] + np.arange(width)]           # [n, W, grid]
    masks = rows @ kept.astype(np.float64) @ cols.transpose(0, 2, 1)
    return masks.astype(np.float32)


def rise_baseline(value: np.ndarray, baseline) -> np.ndarray:
    """The baseline broadcast to the input (a scalar, or an array such as a blurred image)."""
    fill = np.asarray(baseline)
    if value.dtype.kind in "iu" and np.any(fill != np.round(fill)):
        raise InputError(f"rise: the baseline of an integer input must be an integer id, "
                         f"got {brief(baseline)}")
    try:
        return np.broadcast_to(fill.astype(value.dtype), value.shape)
    except ValueError:
        raise InputError(f"rise: baseline shape {fill.shape} does not broadcast to the "
                         f"input's {value.shape}") from None


def mask_shape(row: tuple[int, ...], dtype: np.dtype) -> tuple[str | None, tuple[int, ...]]:
    """(the image layout or None, the shape of one mask): a float image row's masks are
    H x W, shared over its channels (smooth, from a grid); other rows' masks are shaped
    like the row (one boolean per feature or token)."""
    layout = image_layout((1, *row)) if np.dtype(dtype).kind == "f" else None
    if layout is None:
        return None, tuple(row)
    return layout, tuple(row[1:] if layout == "NCHW" else row[:2])


@register_export("rise", ("n_masks", "grid", "keep", "seed", "baseline", "input"),
                 any_output=True)
def rise(eg, options):
    """S = 1 / (n p) sum_i S(x (.) M_i + (1 - M_i) baseline) M_i, the baseline the input
    `baseline/<input>` (one row, or one per row); exactly 0 in rows where no mask changed
    the score (the sum alone would be a map constant up to the masks' sampling noise)."""
    b = eg.b
    name = perturbed_input(eg.model, options.get("input"))
    row = row_shape(eg, name, options)
    dtype = b.np_dtype(name)
    layout, size = mask_shape(row, dtype)
    count, keep = int(options["n_masks"]), float(options["keep"])
    plan = rise_plan(size, count, None if layout is None else int(options["grid"]),
                     keep, int(options["seed"]))
    fill = baseline_input(eg, name, baseline_row(
        eg, name, row, options, lambda baseline, like: rise_baseline(like, baseline)))
    masks: dict[str, str] = {}  # the chunk's masks, made once per body

    def chunk_masks(bb: GraphBuilder, chunk: Chunk) -> str:
        if "masks" not in masks:
            masks["masks"] = _features(bb, plan, chunk) if layout is None else \
                _smooth(bb, plan, chunk)
        return masks["masks"]

    def perturb(bb: GraphBuilder, chunk: Chunk, clean: dict[str, str]) -> dict[str, str]:
        made = chunk_masks(bb, chunk)
        x, base = bb.unsqueeze(clean[name], [0]), bb.unsqueeze(fill, [0])
        if layout is None:  # [k, 1, *row]: the masked features take the baseline's values
            copies = bb.where(bb.unsqueeze(made, [1]), x, base)
        else:  # m * x + (1 - m) * b as numpy computes it: float32 masks, float32 or wider
            wide = TensorProto.DOUBLE if bb.dtype(name) == TensorProto.DOUBLE else \
                TensorProto.FLOAT
            m = bb.unsqueeze(bb.op("Cast", made, to=wide), [1, 2] if layout == "NCHW" else
                             [1, 4])  # [k, 1, ...]
            x, base = (v if bb.dtype(v) == wide else bb.op("Cast", v, to=wide) for v in (x, base))
            copies = bb.op("Add", bb.op("Mul", m, x),
                           bb.op("Mul", bb.op("Sub", bb.scalar(1.0, m), m), base))
            if wide != bb.dtype(name):
                copies = bb.op("Cast", copies, to=bb.dtype(name))
        return {name: bb.reshape(copies, bb.concat([bb.ints([-1]), bb.dims(clean[name], 1)],
                                                   0))}

    def contributions(bb: GraphBuilder, chunk: Chunk, scores: Scores) -> list[str]:
        wide = bb.op("Cast", chunk_masks(bb, chunk), to=TensorProto.DOUBLE)
        flat = bb.reshape(wide, bb.concat([chunk.k, bb.ints([int(np.prod(size))])], 0))
        # sum |S(copy) - S(x)| per row: 0 iff no copy changed the score.
        moved = bb.op("Abs", bb.op("Sub", scores.copies, bb.unsqueeze(scores.clean, [1])))
        return [bb.op("MatMul", scores.copies, flat), bb.reduce("ReduceSum", moved, [1], False)]

    run = perturbation_loop(eg, Perturbation(
        count, perturb, contributions,
        [zeros(b, [eg.rows, int(np.prod(size))]), zeros(b, [eg.rows])]))
    saliency = b.op("Div", run.sums[0], b.const(np.array(count * keep, np.float64)))
    # A score no mask moves leaves S(x) sum_i M_i / (n p): sampling noise, not a saliency.
    # 0 instead, which the explainer warns about as for every method.
    moved = b.op("Greater", run.sums[1], b.scalar(0.0, run.sums[1]))
    saliency = b.keep(saliency, b.unsqueeze(moved, [1]))
    out_type = b.dtype(name) if dtype.kind == "f" else TensorProto.FLOAT
    if layout is None:
        shape, like = b.shape(name), b.info(name).shape
    else:
        shape = b.concat([eg.rows, b.ints(list(size)), b.ints([1])] if layout == "NHWC" else
                         [eg.rows, b.ints([1]), b.ints(list(size))], 0)
        like = (None, *size, 1) if layout == "NHWC" else (None, 1, *size)
    saliency = b.op("Cast", b.reshape(saliency, shape), to=out_type)
    eg.declare(saliency, ATTRIBUTION + name, f"RISE saliency over {count} random masks "
               "(unsigned; 0 in rows whose score no mask changed), shaped like input '" +
               name + "'" +
               ("" if layout is None else " with one channel"), TensorInfo(out_type, like))


def _smooth(bb: GraphBuilder, plan: RisePlan, chunk: Chunk) -> str:
    """float [k, H, W]: masks chunk.index of an image plan, M = crop(upsample(G)) as
    rise_masks computes them (float64 products, then float32)."""
    height, width = plan.shape
    kept = bb.op("Cast", bb.op("Gather", bb.const(plan.kept, "rise_cells"), chunk.index,
                               axis=0), to=TensorProto.DOUBLE)  # [k, grid, grid], stored bool
    shifts = bb.op("Gather", bb.const(plan.shifts.astype(np.int64), "rise_shifts"),
                   chunk.index, axis=0)  # [k, 2]
    crops = []
    for axis, (table, extent) in enumerate(((plan.rows, height), (plan.cols, width))):
        at = bb.op("Add", bb.slice(shifts, [axis], [axis + 1], [1]),
                   bb.const(np.arange(extent, dtype=np.int64)[None]))  # [k, extent]
        crops.append(bb.op("Gather", bb.const(table, "rise_resize"), at, axis=0))
    upsampled = bb.op("MatMul", bb.op("MatMul", crops[0], kept),
                      bb.op("Transpose", crops[1], perm=[0, 2, 1]))
    return bb.op("Cast", upsampled, to=TensorProto.FLOAT)


def _features(bb: GraphBuilder, plan: RisePlan, chunk: Chunk) -> str:
    """bool [k, *row]: the kept features of masks chunk.index."""
    return bb.op("Gather", bb.const(plan.kept, "rise_kept"), chunk.index, axis=0)
