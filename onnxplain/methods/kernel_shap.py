"""Kernel SHAP (Lundberg and Lee 2017): Shapley values of input features as the solution of a
weighted linear regression over coalitions of features. The coalitions are fixed by the
seed, so the regression is a constant matrix (shapley_map); the program export.coalitions
emits scores them in a Loop and applies it, in process and exported alike. Here: the
coalitions, the matrices, and the input preparation (feature masks, background rows)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..export.coalitions import ADDITIVITY, EXPECTED, MASK, SCORE, VALUES
from ..export.designs import (
    check_matrix,
    check_runs,
    coalition_baseline,
    coalition_runs,
    coalitions,
)
from ..export.graph import FED
from ..export.methods import ATTRIBUTION
from ..export.perturb import perturbed_input
from ..features import row_masks
from ..runtime.engine import Engine, GradientRun
from . import MethodOutput, MethodSpec, register
from ._perturb import perturbation_run, stitch, take_target
from .options import (
    COALITION_BASELINE,
    MAX_RUNS_OPTION,
    feature_options,
    input_option,
    integer,
    seed_option,
)

ADDITIVITY_TOLERANCE = 1e-4


class AdditivityWarning(UserWarning):
    """sum(values) + E[f] differs from f(x): the model returned NaN or Inf somewhere."""


def kernel_shap(engine: Engine, feeds: Mapping[str, np.ndarray], target, sources, *,
                features: str | np.ndarray, cell: int, n_segments: int, n_samples: int,
                seed: int, baseline, input: str | None, max_runs: int) -> MethodOutput:
    """phi = argmin_phi sum_z pi(z) (v(z) - E[f] - z . phi)^2  s.t.  sum(phi) = f(x) - E[f],

    with the Shapley kernel pi(z) = (F - 1) / (C(F, |z|) |z| (F - |z|)) and v(z) the target
    score with the features outside z set to the baseline (Lundberg and Lee 2017, Theorem 2:
    over all coalitions this gives exact Shapley values). F <= 12, or n_samples >=
    2^F - 2, evaluates every coalition; otherwise coalition sizes whose subsets all fit the
    budget are enumerated and the rest sampled in complementary pairs with probability
    proportional to the kernel's mass per size. `baseline` is a scalar, an array like one
    row, or background rows [B, *row]: then v(z) averages over them, as shap's
    KernelExplainer does, and E[f] is the mean score of the background. Features: see
    onnxplain.features.feature_mask (or pass an integer mask); image grid cells are `cell`
    pixels, 0 for an 8x8 grid over the image; superpixels (SLIC) aim at `n_segments`
    segments. Every row uses the same coalitions (seeded by `seed`), so a batch gives what
    its rows give one by one. The coalitions fix the regression, so phi is a constant
    matrix (shapley_map) times the scores: the program export.coalitions emits, which
    `export` saves, scores the coalitions in a Loop and applies it with one MatMul.
    `max_runs` bounds the forward runs per row: the coalitions scored (2^F - 1 when every
    one is, else n_samples + 1 or + 2) times the background rows.
    """

    check_count("kernel_shap", "n_samples", n_samples)
    run, name, masks = coalition_run(
        engine, "kernel_shap", feeds, target, features=features, cell=cell,
        n_segments=n_segments, baseline=baseline, input=input, max_runs=max_runs,
        options={"n_samples": n_samples, "seed": seed},
        read=(VALUES, EXPECTED, ADDITIVITY, SCORE))
    post = run.post
    _warn_additivity(post[ADDITIVITY], post[SCORE], post[EXPECTED])
    widths = sorted({int(mask.max()) + 1 for mask in masks})
    found = [coalitions(width, n_samples, seed) for width in widths]
    extras = {"values": post[VALUES], "expected_value": post[EXPECTED],
              "additivity_error": post[ADDITIVITY], "feature_mask": np.stack(masks),
              "exact": all(exact for _, _, exact in found),
              "coalitions": max(len(present) for present, _, _ in found) + 1}
    return MethodOutput(run, at_inputs={name: run.post[ATTRIBUTION + name]}, extras=extras)


def coalition_run(engine: Engine, method: str, feeds: Mapping[str, np.ndarray], target, *,
                  features, cell: int, n_segments: int, baseline, input: str | None,
                  max_runs: int, options: Mapping, read: Sequence[str]
                  ) -> tuple[GradientRun, str, list[np.ndarray]]:
    """Kernel SHAP's or LIME's program (export.coalitions) run on the rows: (the run, its
    attribution and `read` outputs in post, in row order; the perturbed
    input; each row's feature mask). The masks and the background rows are the program's
    inputs, computed here (input preparation); rows whose masks have different feature
    counts (superpixels) run one program per count, their extras padded with NaN. More
    than `max_runs` forward runs per row (the coalitions scored x the background rows:
    export.designs.check_runs) are refused."""

    check_count(method, "n_segments", n_segments)
    name = perturbed_input(engine.model, input, {k: v.ndim for k, v in feeds.items()})
    x = feeds[name]
    # Background rows are few and shared by all rows: baked in (the program's key holds
    # their digest), where a fed input would be split into chunks of rows.
    background = background_rows(coalition_baseline(baseline, x), x)
    masks = row_masks(x, features, cell=cell, n_segments=n_segments)
    n_samples, seed = options["n_samples"], options["seed"]
    for width in sorted({int(mask.max()) + 1 for mask in masks}):
        check_matrix(method, width, n_samples, engine.memory_budget_mb)
        check_runs(method, width, n_samples, seed, len(background), max_runs,
                   engine.memory_budget_mb, len(x))
    runs, groups = [], feature_groups(masks)
    for group in groups:
        width = int(masks[group[0]].max()) + 1
        chosen = {**options, "features": FED, "n_features": width, "baseline": background,
                  "input": name}
        part = feeds if len(groups) == 1 else select_rows(feeds, group)
        count = coalition_runs(method, width, n_samples, seed) * len(background)
        runs.append(perturbation_run(
            engine, method, part, take_target(target, len(x), group), chosen,
            {MASK: np.stack([masks[i] for i in group])}, count, method,
            (ATTRIBUTION + name, *read)))
    run = runs[0] if len(runs) == 1 else stitch(runs, groups)
    return run, name, masks


def background_rows(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The baseline as background rows [B, *row] (one row for a scalar or a row)."""
    if base.ndim == x.ndim:
        return np.ascontiguousarray(base)
    return np.ascontiguousarray(np.broadcast_to(base, x.shape[1:])[None])


def feature_groups(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Row indices grouped by feature count: rows of a group share one set of coalitions."""
    widths = np.array([int(mask.max()) + 1 for mask in masks])
    return [np.flatnonzero(widths == w) for w in np.unique(widths)]


def select_rows(feeds: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[rows] for key, value in feeds.items()}


def check_count(method: str, key: str, value) -> None:
    """An integer option that must be at least 1 (sample counts)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"option '{key}' of method '{method}' must be an integer >= 1, "
                         f"got {value!r}")


def _warn_additivity(error: np.ndarray, fx: np.ndarray, expected: np.ndarray) -> None:
    with np.errstate(invalid="ignore"):
        relative = error / (np.maximum(np.abs(fx), np.abs(expected)) + 1e-12)
    bad = ~(relative <= ADDITIVITY_TOLERANCE)  # NaN counts as bad
    if np.any(bad):
        rows = ", ".join(map(str, np.flatnonzero(bad)[:5]))
        warnings.warn(f"kernel_shap: sum of values + E[f] misses f(x) by more than "
                      f"{ADDITIVITY_TOLERANCE:g} (relative) on rows {rows}; the model may "
                      "return NaN or Inf under the baseline", AdditivityWarning, stacklevel=4)


register(MethodSpec(
    name="kernel_shap",
    run=kernel_shap,
    summary="Shapley values of features from a kernel-weighted regression over coalitions",
    reference="Lundberg and Lee 2017, arXiv:1705.07874",
    family="perturbation",
    options=(*feature_options(),
             integer("n_samples", 2048, "coalitions sampled when there are more than 12 "
                     "features", low=1),
             seed_option("seed of the coalitions"), COALITION_BASELINE, input_option(),
             MAX_RUNS_OPTION),
    needs_sources=False,
))
