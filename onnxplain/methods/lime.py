"""LIME (Ribeiro, Singh and Guestrin 2016): a weighted ridge regression of the model's score
on random coalitions of features, near the input; its weights explain the prediction."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import numpy as np

from ..engine import Engine
from ..errors import InputError
from . import MethodOutput, MethodSpec, register
from ._budget import counted
from .kernel_shap import check_count, coalition_run
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
    from ..export.coalitions import FIT, INTERCEPT, WEIGHTS  # imports us
    from ..export.methods import ATTRIBUTION

    check_count("lime", "n_samples", n_samples)
    if not isinstance(kernel_width, Real) or not kernel_width > 0:
        raise InputError(f"option 'kernel_width' of method 'lime' must be > 0, "
                         f"got {kernel_width!r}")
    if not isinstance(alpha, Real) or not alpha >= 0:
        raise InputError(f"option 'alpha' of method 'lime' must be >= 0, got {alpha!r}")
    run, name, masks = coalition_run(
        engine, "lime", feeds, target, features=features, cell=cell, n_segments=n_segments,
        baseline=baseline, input=input,
        options={"n_samples": n_samples, "seed": seed, "kernel_width": float(kernel_width),
                 "alpha": float(alpha)},
        read=(WEIGHTS, INTERCEPT, FIT))
    extras = {"weights": run.post[WEIGHTS], "intercept": run.post[INTERCEPT],
              "score": run.post[FIT], "feature_mask": np.stack(masks)}
    return MethodOutput(run, at_inputs={name: run.post[ATTRIBUTION + name]}, extras=extras)


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


def ridge_map(present: np.ndarray, weights: np.ndarray, alpha: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(C [F, M], c [M]): the coefficients C y and the intercept c . y of the ridge fit of
    scores y [M] on the coalitions present [M, F] with sample weights w (the intercept
    unpenalised): centring by weighted means leaves it out of the penalty,
    coef = (Zc' W Zc + alpha I)^-1 Zc' W (y - mean_w(y)), b = mean_w(y) - mean_w(z) . coef.
    Linear in y (lstsq: with alpha = 0 and too few samples the system is singular, and
    the minimum-norm solution is pinv(gram) times the right-hand side)."""
    z = present.astype(np.float64)
    total = weights.sum()
    z_mean = weights @ z / total
    zc = z - z_mean
    gram = zc.T @ (weights[:, None] * zc) + alpha * np.eye(z.shape[1])
    # Zc' W (I - 1 w' / total): the weighted centring of y folded into the matrix.
    weighted = zc.T * weights[None, :]
    right = weighted - np.outer(weighted.sum(axis=1), weights / total)
    coef = np.linalg.lstsq(gram, right, rcond=None)[0]
    return coef, weights / total - z_mean @ coef


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
