"""LIME (Ribeiro, Singh and Guestrin 2016): a weighted ridge regression of the model's score
on random coalitions of features, near the input; its weights explain the prediction."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import numpy as np

from ..errors import InputError
from ..export.coalitions import FIT, INTERCEPT, WEIGHTS
from ..export.methods import ATTRIBUTION
from ..runtime.engine import Engine
from . import MethodOutput, MethodSpec, register
from .kernel_shap import check_count, coalition_run
from .options import (
    COALITION_BASELINE,
    MAX_RUNS_OPTION,
    feature_options,
    input_option,
    integer,
    number,
    seed_option,
)


def lime(engine: Engine, feeds: Mapping[str, np.ndarray], target, sources, *,
         features: str | np.ndarray, cell: int, n_segments: int, n_samples: int,
         kernel_width: float, alpha: float, seed: int, baseline, input: str | None,
         max_runs: int) -> MethodOutput:
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
    (SLIC) aim at `n_segments` segments. `max_runs` bounds the forward runs per row:
    n_samples times the background rows.
    """

    check_count("lime", "n_samples", n_samples)
    if not isinstance(kernel_width, Real) or not kernel_width > 0:
        raise InputError(f"option 'kernel_width' of method 'lime' must be > 0, "
                         f"got {kernel_width!r}")
    if not isinstance(alpha, Real) or not alpha >= 0:
        raise InputError(f"option 'alpha' of method 'lime' must be >= 0, got {alpha!r}")
    run, name, masks = coalition_run(
        engine, "lime", feeds, target, features=features, cell=cell, n_segments=n_segments,
        baseline=baseline, input=input, max_runs=max_runs,
        options={"n_samples": n_samples, "seed": seed, "kernel_width": float(kernel_width),
                 "alpha": float(alpha)},
        read=(WEIGHTS, INTERCEPT, FIT))
    extras = {"weights": run.post[WEIGHTS], "intercept": run.post[INTERCEPT],
              "score": run.post[FIT], "feature_mask": np.stack(masks)}
    return MethodOutput(run, at_inputs={name: run.post[ATTRIBUTION + name]}, extras=extras)


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
             seed_option("seed of the coalitions"), COALITION_BASELINE, input_option(),
             MAX_RUNS_OPTION),
    needs_sources=False,
))
