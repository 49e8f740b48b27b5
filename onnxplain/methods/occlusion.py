"""Occlusion (Zeiler and Fergus 2014, arXiv:1311.2901): slide a window over the input, replace
what it covers by a baseline, and credit the covered elements with the drop of the score.

    A(x)_i = mean over windows W containing i of  S_c(x) - S_c(x with W set to the baseline)

(the mean over covering windows is Captum's normalisation, so overlapping strides keep the
scale). Windows span every channel of an image; token ids and tabular rows are windowed
along their one axis. The occluded copies run in one ONNX program (export.occlusion), the
one `export` saves.
"""

from __future__ import annotations

import math

import numpy as np

from ..export.graph import FED
from ..export.methods import ATTRIBUTION, BASELINE
from ..export.occlusion import baseline_like, check_budget, windows
from ..export.perturb import perturbed_input
from . import MethodOutput, MethodSpec, register
from ._perturb import perturbation_run
from .options import MAX_RUNS_OPTION, Option, input_option, perturbation_baseline


def occlusion(engine, feeds, target, sources, *, window, stride, baseline, input, max_runs):
    """Occlusion maps for one input (`input`, default the first float or token-id input):
    `window` and `stride` in pixels for images (one number for square, or "h,w"; default
    8 and 8), in elements for other inputs (default 1: one token or column at a time);
    `baseline` a number or an array like one row (token ids: the id put in); more than
    `max_runs` windows per row are refused. The windows run in the program `export` saves
    (export.occlusion), the baseline fed as its input."""

    name = perturbed_input(engine.model, input, {k: v.ndim for k, v in feeds.items()})
    value = feeds[name]
    row_shape = value.shape[1:]
    size, step, counts = windows(row_shape, window, stride)
    count = math.prod(counts)
    check_budget(count, max_runs, row_shape, size, engine.memory_budget_mb)
    fill = np.broadcast_to(baseline_like(baseline, value), value.shape)
    # max_runs bounds the run, the program does not read it: no part of its key.
    options = {"window": window, "stride": stride, "baseline": FED, "input": name,
               "row_shape": list(row_shape)}
    run = perturbation_run(engine, "occlusion", feeds, target, options,
                           {BASELINE + name: np.ascontiguousarray(fill)}, count, "occlusion",
                           (ATTRIBUTION + name,))
    extras = {"window": list(size), "stride": list(step), "windows": count}
    return MethodOutput(run, at_inputs={name: run.post[ATTRIBUTION + name]}, extras=extras)


register(MethodSpec(
    name="occlusion",
    run=occlusion,
    summary="score drop when a sliding window is replaced by a baseline (forward runs only)",
    reference="Zeiler, Fergus 2014, arXiv:1311.2901",
    family="perturbation",
    options=(Option("window", None, "window size in pixels for images, elements otherwise: one "
                    "number (square) or 'h,w' (default: 8 for images, else 1)", ("pair",),
                    none=True),
             Option("stride", None, "step between windows, as window (default: the window)",
                    ("pair",), none=True),
             perturbation_baseline(), input_option(), MAX_RUNS_OPTION),
    needs_sources=False,
))
