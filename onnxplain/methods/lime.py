"""LIME (Ribeiro, Singh and Guestrin 2016): a weighted ridge regression of the model's score
on random coalitions of features, near the input; its weights explain the prediction."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import numpy as np

from ..engine import Engine
from ..errors import InputError
from ..features import row_masks
from . import MethodOutput, MethodSpec, register
from ._budget import counted
from ._common import clean_run, fixed_objective
from ._perturb import perturbed_input
from ._tokens import cached_inputs
from .kernel_shap import (
    check_count,
    coalition_baseline,
    coalition_values,
    feature_groups,
    select_rows,
)
from .options import (
    COALITION_BASELINE,
    feature_options,
    input_option,
    integer,
    number,
    seed_option,
)


def lime(engine: Engine, feeds: Mapping[str, np.ndarray], target, sources, *,
         features: str | np.ndarray = "auto", cell: int = 0, n_segments: int = 50,
         n_samples: int = 1000, kernel_width: float = 0.25, alpha: float = 1.0, seed: int = 0,
         baseline=0.0, input: str | None = None) -> MethodOutput:
    """(w, b) = argmin sum_z pi(z) (f(h_x(z)) - b - w . z)^2 + alpha |w|^2  (b unpenalised),

    over n_samples coalitions z ~ Bernoulli(1/2)^F (the first one all ones, the input
    itself), with pi(z) = sqrt(exp(-d(z)^2 / kernel_width^2)) and d(z) the cosine distance
    between z and the all-ones vector, 1 - sqrt(|z| / F) (1 for the empty coalition), as
    lime's image and text explainers compute it (Ribeiro et al. 2016, eq. 1-2 write
    exp(-D^2 / sigma^2): the same kernel with sigma = sqrt(2) kernel_width). h_x(z) keeps
    the features in z and sets the others to `baseline` (a scalar, an array like a row, or
    background rows [B, *row] averaged over). Returns w on the input (each element gets its
    feature's weight); extras: the weights [N, F], the intercepts b and the weighted R^2.
    Image grid cells are `cell` pixels, 0 for an 8x8 grid over the image; superpixels
    (SLIC) aim at `n_segments` segments.
    """
    check_count("lime", "n_samples", n_samples)
    check_count("lime", "n_segments", n_segments)
    if not isinstance(kernel_width, Real) or not kernel_width > 0:
        raise InputError(f"option 'kernel_width' of method 'lime' must be > 0, "
                         f"got {kernel_width!r}")
    if not isinstance(alpha, Real) or not alpha >= 0:
        raise InputError(f"option 'alpha' of method 'lime' must be >= 0, got {alpha!r}")
    name = perturbed_input(feeds, input, cached_inputs(engine.model))
    objective, outputs = fixed_objective(engine, feeds, target)
    x = feeds[name]
    masks = row_masks(x, features, cell=cell, n_segments=n_segments)
    base = coalition_baseline(baseline, x)
    rows = x.shape[0]
    widest = max(int(mask.max()) + 1 for mask in masks)
    weights = np.full((rows, widest), np.nan)
    intercept, score = np.empty(rows), np.empty(rows)
    for group in feature_groups(masks):
        width = int(masks[group[0]].max()) + 1
        present = lime_samples(width, n_samples, seed)
        scores = coalition_values(engine, select_rows(feeds, group),
                                  objective.take(group), name,
                                  [masks[i] for i in group], present, base, "lime")
        fitted = weighted_ridge(present, scores, lime_kernel(present, kernel_width), alpha)
        weights[group, :width], intercept[group], score[group] = fitted
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    mapped = np.stack([weights[i][masks[i]] for i in range(rows)]).astype(dtype)
    extras = {"weights": weights, "intercept": intercept, "score": score,
              "feature_mask": np.stack(masks)}
    return MethodOutput(clean_run(outputs, objective, engine), at_inputs={name: mapped},
                        extras=extras)


def lime_samples(width: int, n_samples: int, seed: int) -> np.ndarray:
    """[n_samples, F] bool coalitions: all ones first, then independent fair coin flips
    per feature (lime's image explainer)."""
    rng = np.random.default_rng(seed)
    present = rng.integers(0, 2, size=(n_samples, width)).astype(bool)
    present[0] = True
    return present


def lime_kernel(present: np.ndarray, kernel_width: float) -> np.ndarray:
    """sqrt(exp(-d^2 / width^2)), d the cosine distance of each coalition to all ones."""
    size = present.sum(axis=1)
    distance = 1.0 - np.sqrt(size / present.shape[1])  # 1 for the empty coalition
    # d / width first: width ** 2 over- or underflows for widths like 1e308 or 1e-320.
    return np.sqrt(np.exp(-np.square(distance / np.float64(kernel_width))))


def weighted_ridge(present: np.ndarray, scores: np.ndarray, weights: np.ndarray,
                   alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coefficients [rows, F], intercepts [rows], weighted R^2 [rows]) of the ridge fit of
    scores [rows, M] on the coalitions: centring by weighted means leaves the intercept out
    of the penalty, coef = (Zc' W Zc + alpha I)^-1 Zc' W yc, b = mean_w(y) - mean_w(z) coef.
    """
    z = present.astype(np.float64)
    total = weights.sum()
    z_mean = weights @ z / total
    y_mean = scores @ weights / total
    zc = z - z_mean
    yc = scores - y_mean[:, None]
    gram = zc.T @ (weights[:, None] * zc) + alpha * np.eye(z.shape[1])
    # lstsq: with alpha = 0 and too few samples the system is singular; take min-norm.
    coef = np.linalg.lstsq(gram, zc.T @ (weights[:, None] * yc.T), rcond=None)[0].T
    intercept = y_mean - coef @ z_mean
    residual = ((scores - intercept[:, None] - coef @ z.T) ** 2) @ weights
    spread = (yc ** 2) @ weights
    # sklearn's convention for a constant target: R^2 = 1 if fitted exactly, else 0.
    # "Constant" up to rounding: centring leaves ~1e-16 relative noise behind.
    tiny = total * (1e-12 * np.abs(scores).max(axis=1, initial=0.0)) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(spread > tiny, 1 - residual / spread,
                      np.where(residual > tiny, 0.0, 1.0))
    return coef, intercept, r2


register(MethodSpec(
    name="lime",
    run=lime,
    summary="weights of a kernel-weighted ridge regression on random coalitions of features",
    reference="Ribeiro, Singh and Guestrin 2016, arXiv:1602.04938",
    family="perturbation",
    options=(*feature_options(), integer("n_samples", 1000, "random coalitions", low=1),
             number("kernel_width", 0.25, "width of lime's kernel on the cosine distance",
                    low=0, open_low=True),
             number("alpha", 1.0, "ridge penalty of the regression", low=0),
             seed_option("seed of the coalitions"), COALITION_BASELINE, input_option()),
    needs_sources=False,
    work=counted("n_samples"),
))
