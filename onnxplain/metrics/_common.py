"""What the metrics share: the explained input and score, random attributions, rank
correlation and plain JSON numbers."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._text import counted
from ..attribution import Attribution
from ..errors import InputError
from ..images import image_layout
from ..runtime.engine import OutputSeed


def attributed_input(attribution: Attribution, feeds: Mapping[str, np.ndarray],
                     name: str | None = None) -> tuple[str, np.ndarray]:
    """The input whose elements the perturbation metrics remove (`name`, else the first
    attributed input) and its attribution shaped like it (see shaped_like_input: one value
    per element, per token for token ids, or a map shared over an image's channels)."""
    names = [key for key in attribution.attributions if key in feeds]
    if name is None:
        if not names:
            raise InputError("the attribution holds no values for any model input "
                             f"(inputs: {', '.join(feeds)})")
        name = names[0]
    elif name not in attribution.attributions:
        raise InputError(f"the attribution has no values for input '{name}' "
                         f"(it has: {', '.join(attribution.attributions) or 'none'})")
    if name not in feeds:
        raise InputError(f"unknown input '{name}' (inputs: {', '.join(feeds)})")
    values, wanted = attribution.attributions[name], feeds[name].shape
    shaped = shaped_like_input(values, wanted)
    if shaped is None:
        raise InputError(f"the attribution of '{name}' has shape {values.shape}, the input "
                         f"{wanted}: explain the same inputs that are evaluated")
    return name, shaped


def shaped_like_input(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """`values` as an attribution of an input of `shape`: as they are when the shapes agree;
    a map shared over an image's channels (size 1 on the channel axis of NCHW or NHWC
    images, as Grad-CAM and RISE give) repeated over them, so every channel of a pixel
    carries the pixel's score; None otherwise. Every metric reads maps through this."""
    values = np.asarray(values)
    if values.shape == tuple(shape):
        return values
    layout = image_layout(tuple(shape))
    if layout is None:
        return None
    axis = 1 if layout == "NCHW" else 3
    if values.shape != (*shape[:axis], 1, *shape[axis + 1:]):
        return None
    return np.broadcast_to(values, shape)


def explained_target(attribution: Attribution, rows: int, output_seed=None):
    """The score the attribution explains, as perturbed_scores takes it: class indices per
    row, an OutputSeed, or None (outputs with one value per row)."""
    if attribution.objective == "output_seed":
        if output_seed is None:
            raise InputError("the attribution explains an output seed; pass the same "
                             "output_seed to evaluate it")
        return OutputSeed(np.asarray(output_seed))
    if attribution.objective == "sum":
        return None
    if attribution.seed is not None:  # a dense objective: the same weights (objective)
        return OutputSeed(attribution.seed)
    target = np.asarray(attribution.target, dtype=np.int64).reshape(-1)
    if target.shape[0] != rows:
        raise InputError(f"the attribution explains {counted(target.shape[0], 'row')}, the "
                         f"inputs have {rows}: evaluate the inputs that were explained")
    return target


def row_values(attribution: Attribution, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """[rows, n] float64: every attributed value of each row, inputs in order, maps shared
    over channels repeated over the channels of their input (shaped_like_input)."""
    parts = []
    for name, values in attribution.attributions.items():
        shaped = shaped_like_input(values, feeds[name].shape) if name in feeds else None
        values = values if shaped is None else shaped
        parts.append(np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1))
    if not parts:
        raise InputError("the attribution holds no values")
    return np.concatenate(parts, axis=1)


def random_like(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise shaped like `values`, scaled to each row's root mean square: an
    attribution of the same size that carries no information about the model."""
    flat = np.nan_to_num(np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1))
    rms = np.sqrt(np.mean(np.square(flat), axis=1))
    # A row of zeros still needs an order: unit noise there.
    rms = np.where(rms > 0, rms, 1.0).reshape((-1,) + (1,) * (values.ndim - 1))
    return rng.standard_normal(values.shape) * rms


def draw_rng(seed: int, draw: int) -> np.random.Generator:
    """The generator of random draw `draw`: independent streams, reproducible per seed."""
    return np.random.default_rng([int(seed), int(draw)])


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties sharing their average rank (as scipy's rankdata)."""
    flat = np.asarray(values, dtype=np.float64)
    out = np.empty_like(flat)
    for index in np.ndindex(flat.shape[:-1]):
        row = flat[index]
        order = np.argsort(row, kind="stable")
        sorted_row = row[order]
        # Runs of equal values get the mean of the ranks they span.
        starts = np.flatnonzero(np.r_[True, sorted_row[1:] != sorted_row[:-1]])
        ends = np.r_[starts[1:], len(row)]
        average = (starts + ends - 1) / 2.0
        rank = np.empty(len(row))
        rank[order] = np.repeat(average, ends - starts)
        out[index] = rank
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation per row of [rows, n] arrays: the Pearson correlation of
    the ranks, rho = cov(R(a), R(b)) / (sigma_R(a) sigma_R(b)); NaN where a row is constant
    or not finite."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    ra = ranks(np.where(np.isfinite(a), a, 0.0))
    rb = ranks(np.where(np.isfinite(b), b, 0.0))
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    scale = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(axis=1) / scale
    return np.where(finite & (scale > 0), rho, np.nan)


def jsonable(value):
    """Plain Python numbers and lists; NaN and Inf become None (JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def nanmean(values, axis: int | None = None):
    """The mean of the finite values (NaN where there are none), without numpy's warning:
    a float, or an array along `axis`."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    count = finite.sum(axis=axis)
    total = np.where(finite, array, 0.0).sum(axis=axis)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(mean) if axis is None else mean


def check_output(explainer, attribution: Attribution) -> None:
    """The explainer must score the output the attribution explains."""
    if attribution.output != explainer.output:
        raise InputError(f"the attribution explains output '{attribution.output}', the "
                         f"explainer scores '{explainer.output}': create the Explainer with "
                         f"output='{attribution.output}'")
