"""RISE (Petsiuk, Das, Saenko 2018): the score-weighted average of random input masks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..images import image_layout
from . import MethodOutput, MethodSpec, register
from ._budget import Work, count_of, rows_and_bytes
from ._perturb import perturbation_run, perturbed_input
from ._tokens import cached_inputs
from .options import (
    brief,
    input_option,
    integer,
    number,
    perturbation_baseline,
    seed_option,
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


def rise(engine, feeds, target, sources, *, n_masks: int = 2000, grid: int = 7,
         keep: float = 0.5, seed: int = 0, baseline=0.0, input: str | None = None):
    """S_c(x) = 1 / (N p) * sum_i f_c(x (.) M_i + (1 - M_i) baseline) M_i, with E[M] = p.

    Petsiuk, Das, Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box
    Models", arXiv:1806.07421. Images ([N, C, H, W] or [N, H, W, C]) get smooth masks (a
    grid x grid binary grid, cells kept with probability `keep`, upsampled bilinearly and
    shifted at random), shared over channels; other inputs get binary masks over their
    features (token ids take the integer `baseline`, e.g. the padding id). The same masks
    explain every row; the saliency is unsigned, shaped [N, 1, H, W] / [N, H, W, 1] for
    images and like the input otherwise. The masks are made and applied in the program
    `export` saves (export.rise), the baseline fed as its input.
    """
    from ..export.graph import FED  # export imports the methods
    from ..export.methods import ATTRIBUTION, BASELINE

    name = perturbed_input(feeds, input, cached_inputs(engine.model))
    value = feeds[name]
    layout = image_layout(value.shape) if value.dtype.kind == "f" else None
    size = value.shape[1:] if layout is None else \
        value.shape[2:] if layout == "NCHW" else value.shape[1:3]
    rise_plan(tuple(size), n_masks, grid if layout else None, keep, seed)  # one-line refusals
    fill = rise_baseline(value, baseline)
    options = {"n_masks": int(n_masks), "grid": int(grid), "keep": float(keep),
               "seed": int(seed), "baseline": FED, "input": name,
               "row_shape": list(value.shape[1:])}
    run = perturbation_run(engine, "rise", feeds, target, options,
                           {BASELINE + name: np.ascontiguousarray(fill)}, int(n_masks), "rise",
                           (ATTRIBUTION + name,))
    extras = {"n_masks": n_masks, "grid": grid if layout else None, "keep": keep}
    notes = [] if value.dtype.kind == "f" else [
        f"rise: masked tokens of '{name}' were set to id {int(fill.flat[0])}"]
    return MethodOutput(run, at_inputs={name: run.post[ATTRIBUTION + name]}, extras=extras,
                        notes=notes, signed=False)


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


def rise_work(options, feeds) -> Work:
    """n_masks forward runs per row; the draws of every mask are held at once (rise_plan):
    grid x grid float64 cells for images, one bool per element otherwise."""
    masks, grid = count_of(options, "n_masks"), count_of(options, "grid")
    # A bad `input` is the method's own one-line refusal; here it only sizes the masks.
    name = options.get("input") if isinstance(options.get("input"), str) else None
    name = name if name in feeds else next(iter(feeds), None)
    value = np.asarray(feeds[name]) if name is not None else np.zeros((1, 1))
    rows, _ = rows_and_bytes(feeds)
    image = value.dtype.kind == "f" and image_layout(value.shape) is not None
    per_mask = 8 * grid * grid if image else math.prod(value.shape[1:])
    option = "grid" if image and grid * grid > masks else "n_masks"
    return Work(option, grid if option == "grid" else masks, masks,
                masks * per_mask + 8 * rows * masks)


register(MethodSpec(
    name="rise",
    run=rise,
    summary="average of random smooth input masks weighted by the model's score on each",
    reference="Petsiuk, Das, Saenko 2018, arXiv:1806.07421",
    family="perturbation",
    options=(integer("n_masks", 2000, "random masks", low=1),
             integer("grid", 7, "mask cells per side before upsampling", low=1),
             number("keep", 0.5, "probability that a cell is kept", low=0, high=1,
                    open_low=True),
             seed_option("seed of the masks"), perturbation_baseline(), input_option()),
    needs_sources=False,
    work=rise_work,
))
