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

from ..errors import InputError
from ..images import image_layout
from ..runtime.batching import DEFAULT_BUDGET_MB
from . import MethodOutput, MethodSpec, register
from ._budget import MAX_RUNS, MAX_RUNS_OPTION, Work, check_work
from ._perturb import perturbation_run, perturbed_input
from ._tokens import cached_inputs
from .options import Option, input_option, perturbation_baseline


def window_geometry(row_shape: tuple[int, ...], window, stride) -> tuple[tuple, tuple]:
    """Window and stride shapes over a row: images [C, H, W] or [H, W, C] get square
    `window` x `window` patches over every channel; other rows a window along each axis."""
    size, step = _pair(window, "window"), _pair(stride, "stride")
    layout = image_layout((1, *row_shape))
    if layout == "NCHW":
        return (row_shape[0], *size), (row_shape[0], *step)
    if layout == "NHWC":
        return (*size, row_shape[2]), (*step, row_shape[2])
    if len(row_shape) == 1:
        return (size[0],), (step[0],)
    return tuple(min(size[0], d) for d in row_shape), tuple(step[0] for _ in row_shape)


def _pair(value, what: str) -> tuple[int, int]:
    try:
        if isinstance(value, str):
            value = [int(part) for part in value.replace("x", ",").split(",") if part.strip()]
        values = [int(v) for v in np.atleast_1d(value)]
    except (ValueError, TypeError, OverflowError):
        raise InputError(f"{what} must be one or two positive integers, got {value!r}"
                         ) from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise InputError(f"{what} must be one or two positive integers, got {value!r}")
    return values[0], values[1]


def window_counts(row_shape: tuple[int, ...], window: tuple, stride: tuple) -> list[int]:
    """Window positions along each axis of a row, as Captum places them: steps of `stride`
    until the window reaches the end, the last one clipped at the border if it overhangs."""
    counts = []
    for dim, size, step in zip(row_shape, window, stride, strict=True):
        if size > dim:
            raise InputError(f"the occlusion window {window} is larger than the input row "
                             f"{row_shape}")
        counts.append(math.ceil((dim - size) / step) + 1)
    return counts


def check_budget(count: int, max_runs, row_shape: tuple, window: tuple,
                 budget_mb: float = DEFAULT_BUDGET_MB) -> None:
    """Refuse more than `max_runs` occluded copies per row (the shared work budget), saying
    what would raise it; the count comes from the window geometry, so it is checked here."""
    about = f"with window {window} over an input row of shape {tuple(row_shape)}"
    work = Work("window", count, count, 0, advice="use a larger window (-O window=N)",
                about=about)
    check_work("occlusion", work, max_runs, budget_mb)


def occlusion(engine, feeds, target, sources, *, window=None, stride=None, baseline=0.0,
              input=None, max_runs=MAX_RUNS):
    """Occlusion maps for one input (`input`, default the first float or token-id input):
    `window` and `stride` in pixels for images (one number for square, or "h,w"; default
    8 and 8), in elements for other inputs (default 1: one token or column at a time);
    `baseline` a number or an array like one row (token ids: the id put in); more than
    `max_runs` windows per row are refused (MAX_RUNS by default). The windows run in the
    program `export` saves (export.occlusion), the baseline fed as its input."""
    from ..export.graph import FED  # export imports the methods
    from ..export.methods import ATTRIBUTION, BASELINE

    name = perturbed_input(feeds, input, cached_inputs(engine.model))
    value = feeds[name]
    row_shape = value.shape[1:]
    image = image_layout(value.shape) is not None
    window = window if window is not None else (8 if image else 1)
    stride = stride if stride is not None else window
    size, step = window_geometry(row_shape, window, stride)
    count = math.prod(window_counts(row_shape, size, step))
    check_budget(count, max_runs, row_shape, size, engine.memory_budget_mb)
    fill = np.broadcast_to(baseline_like(baseline, value), value.shape)
    options = {"window": window, "stride": stride, "baseline": FED, "input": name,
               "row_shape": list(row_shape), "max_runs": max_runs}
    run = perturbation_run(engine, "occlusion", feeds, target, options,
                           {BASELINE + name: np.ascontiguousarray(fill)}, count, "occlusion",
                           (ATTRIBUTION + name,))
    extras = {"window": list(size), "stride": list(step), "windows": count}
    return MethodOutput(run, at_inputs={name: run.post[ATTRIBUTION + name]}, extras=extras)


def baseline_like(baseline, value: np.ndarray) -> np.ndarray:
    """The values occluded elements take, shaped like one row."""
    array = np.asarray(baseline)
    if array.dtype.kind not in "fiub":
        try:
            array = np.asarray(float(str(baseline)))
        except ValueError:
            raise InputError(f"baseline must be a number or an array, got {baseline!r}"
                             ) from None
    try:
        return np.broadcast_to(array, value.shape[1:]).astype(value.dtype)
    except ValueError:
        raise InputError(f"baseline of shape {array.shape} does not broadcast to an input "
                         f"row {value.shape[1:]}") from None


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
