"""RISE (Petsiuk, Das, Saenko 2018): the score-weighted average of random input masks."""

from __future__ import annotations

import math

import numpy as np

from ..export.graph import FED
from ..export.methods import ATTRIBUTION, BASELINE
from ..export.perturb import perturbed_input
from ..export.rise import mask_shape, rise_baseline
from ..runtime.budget import Work, count_of, rows_and_bytes
from . import MethodOutput, MethodSpec, register
from ._perturb import perturbation_run
from .options import (
    input_option,
    integer,
    number,
    perturbation_baseline,
    seed_option,
)


def rise(engine, feeds, target, sources, *, n_masks: int, grid: int, keep: float, seed: int,
         baseline, input: str | None):
    """S_c(x) = 1 / (N p) * sum_i f_c(x (.) M_i + (1 - M_i) baseline) M_i, with E[M] = p.

    Petsiuk, Das, Saenko 2018, "RISE: Randomized Input Sampling for Explanation of Black-box
    Models", arXiv:1806.07421. Images ([N, C, H, W] or [N, H, W, C]) get smooth masks (a
    grid x grid binary grid, cells kept with probability `keep`, upsampled bilinearly and
    shifted at random), shared over channels; other inputs get binary masks over their
    features (token ids take the integer `baseline`, e.g. the padding id). The same masks
    explain every row; the saliency is unsigned, shaped [N, 1, H, W] / [N, H, W, 1] for
    images and like the input otherwise, and 0 in a row whose score no mask changed. The
    masks are made and applied in the program `export` saves (export.rise), the baseline
    fed as its input.
    """

    name = perturbed_input(engine.model, input, {k: v.ndim for k, v in feeds.items()})
    value = feeds[name]
    layout, _ = mask_shape(value.shape[1:], value.dtype)
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


def rise_work(options, feeds) -> Work:
    """n_masks forward runs per row; the draws of every mask are held at once (rise_plan):
    grid x grid float64 cells for images, one bool per element otherwise."""
    masks, grid = count_of(options, "n_masks"), count_of(options, "grid")
    # A bad `input` is the method's own one-line refusal; here it only sizes the masks.
    name = options.get("input") if isinstance(options.get("input"), str) else None
    name = name if name in feeds else next(iter(feeds), None)
    value = np.asarray(feeds[name]) if name is not None else np.zeros((1, 1))
    rows, _ = rows_and_bytes(feeds)
    image = mask_shape(value.shape[1:], value.dtype)[0] is not None
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
