"""Kernel SHAP (Lundberg and Lee 2017): Shapley values of input features as the solution of a
weighted linear regression over coalitions of features, every coalition scored through the
batched perturbation executor (runtime.perturb)."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping

import numpy as np

from ..engine import Engine
from ..errors import InputError
from ..features import apply_features, baseline_values, row_masks
from ..objective import Objective
from ..runtime.perturb import perturbed_scores
from . import MethodOutput, MethodSpec, register
from ._budget import counted
from ._common import clean_run, fixed_objective
from ._perturb import copies, perturbed_input
from ._tokens import cached_inputs
from .options import COALITION_BASELINE, feature_options, input_option, integer, seed_option

# Up to this many features every coalition is evaluated: 2^12 runs cost little.
EXACT_MAX_FEATURES = 12
ADDITIVITY_TOLERANCE = 1e-4


class AdditivityWarning(UserWarning):
    """sum(values) + E[f] differs from f(x): the model returned NaN or Inf somewhere."""


def kernel_shap(engine: Engine, feeds: Mapping[str, np.ndarray], target, sources, *,
                features: str | np.ndarray = "auto", cell: int = 0, n_segments: int = 50,
                n_samples: int = 2048, seed: int = 0, baseline=0.0, input: str | None = None
                ) -> MethodOutput:
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
    segments. Every row uses the same
    coalitions (seeded by `seed`), so a batch gives what its rows give one by one.
    """
    check_count("kernel_shap", "n_samples", n_samples)
    check_count("kernel_shap", "n_segments", n_segments)
    name = perturbed_input(feeds, input, cached_inputs(engine.model))
    objective, outputs = fixed_objective(engine, feeds, target)
    x = feeds[name]
    masks = row_masks(x, features, cell=cell, n_segments=n_segments)
    base = coalition_baseline(baseline, x)
    fx = objective.score(outputs[engine.output])
    rows = x.shape[0]
    widest = max(int(mask.max()) + 1 for mask in masks)
    values = np.full((rows, widest), np.nan)
    expected, error = np.empty(rows), np.empty(rows)
    counts, exact = [], True
    for group in feature_groups(masks):
        width = int(masks[group[0]].max()) + 1
        present, weights, enumerated = shapley_coalitions(width, n_samples, seed)
        # The empty coalition first: its score is E[f], the other end of the constraint.
        evaluated = np.vstack([np.zeros((1, width), dtype=bool), present])
        scores = coalition_values(engine, select_rows(feeds, group),
                                  objective.take(group), name,
                                  [masks[i] for i in group], evaluated, base, "kernel_shap")
        expected[group] = scores[:, 0]
        found = shapley_regression(present, weights, scores[:, 1:], scores[:, 0], fx[group])
        values[group, :width] = found
        error[group] = np.abs(found.sum(axis=1) + scores[:, 0] - fx[group])
        counts.append(len(evaluated))
        exact &= enumerated
    _warn_additivity(error, fx, expected)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    mapped = np.stack([values[i][masks[i]] for i in range(rows)]).astype(dtype)
    extras = {"values": values, "expected_value": expected, "additivity_error": error,
              "feature_mask": np.stack(masks), "exact": exact, "coalitions": max(counts)}
    return MethodOutput(clean_run(outputs, objective, engine), at_inputs={name: mapped},
                        extras=extras)


def shapley_coalitions(width: int, n_samples: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(present [M, F] bool, regression weights [M], whether every coalition is there): the
    coalitions other than the empty and full ones, with their Shapley kernel weights.

    Sizes s and F - s share the kernel mass m(s) = (F - 1) / (s (F - s)). Pairs of sizes
    are enumerated in order while the budget's share of the remaining mass covers all their
    subsets (as shap does); the remaining budget is spent on complementary pairs (S, ~S)
    drawn with P(size pair) proportional to its mass, each weighing (remaining mass) / count,
    so that the expected weight of every coalition is its kernel weight (duplicates merge).
    """
    exact = width <= EXACT_MAX_FEATURES or n_samples >= 2 ** width - 2
    budget = n_samples
    present, weights = [], []
    sizes = list(range(1, width // 2 + 1))
    mass = {k: _size_mass(width, k) * (1 if 2 * k == width else 2) for k in sizes}
    remaining = sum(mass.values())
    while sizes:
        k = sizes[0]
        count = math.comb(width, k) * (1 if 2 * k == width else 2)
        if not exact and budget * mass[k] / remaining < count * (1 - 1e-9):
            break
        subsets = _subsets_of_size(width, k)
        both = subsets if 2 * k == width else np.vstack([subsets, ~subsets])
        present.append(both)
        weights.append(np.full(len(both), _size_mass(width, k) / math.comb(width, k)))
        budget -= count
        remaining -= mass.pop(k)
        sizes.pop(0)
    if sizes:
        sampled, sampled_weights = _sample_pairs(width, sizes, mass, remaining,
                                                 max(2, budget), seed)
        present.append(sampled)
        weights.append(sampled_weights)
    if not present:  # F = 1: no coalition besides the empty and full ones
        return np.zeros((0, width), dtype=bool), np.zeros(0), True
    return np.vstack(present), np.concatenate(weights), not sizes


def shapley_regression(present: np.ndarray, weights: np.ndarray, scores: np.ndarray,
                       expected: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """[rows, F]: the kernel-weighted least squares of scores [rows, M] on the coalitions,
    with sum(phi) = f(x) - E[f] imposed by eliminating the last feature (as shap does):
    phi_F = delta - sum_{i<F} phi_i, so v(z) - E - z_F delta = sum_{i<F} (z_i - z_F) phi_i."""
    delta = fx - expected
    width = present.shape[1]
    if width == 1:
        return delta[:, None]
    z = present.astype(np.float64)
    design = (z[:, :-1] - z[:, -1:]) * np.sqrt(weights)[:, None]
    # Inf scores (a model undefined at the baseline) give NaN values: the additivity
    # warning reports them, numpy's own warnings would only repeat it.
    with np.errstate(invalid="ignore"):
        response = (scores - expected[:, None] - delta[:, None] * z[:, -1]) * np.sqrt(weights)
        head = np.linalg.lstsq(design, response.T, rcond=None)[0].T
        return np.concatenate([head, (delta - head.sum(axis=1))[:, None]], axis=1)


def coalition_values(engine: Engine, feeds: Mapping[str, np.ndarray], objective: Objective,
                     name: str, masks: list[np.ndarray], present: np.ndarray,
                     baseline: np.ndarray, label: str) -> np.ndarray:
    """[rows, K] float64: the explained score of each row with only the features of each
    coalition present[k] kept, the rest from `baseline` (see coalition_baseline; background
    rows [B, *row] are averaged over, one model run per coalition and background row)."""
    x = feeds[name]
    background = baseline.ndim == x.ndim
    repeats = len(baseline) if background else 1

    def make(row: int, start: int, stop: int) -> dict[str, np.ndarray]:
        coalition, rep = np.divmod(np.arange(start, stop), repeats)
        base = baseline[rep] if background else baseline
        values = apply_features(x[row], masks[row], present[coalition], base)
        return copies(feeds, name, values)

    scores = perturbed_scores(engine, feeds, objective, make, len(present) * repeats,
                              label=label)
    return scores.reshape(x.shape[0], len(present), repeats).mean(axis=2)


def coalition_baseline(baseline, x: np.ndarray) -> np.ndarray:
    """The baseline in x's dtype: a scalar, an array broadcastable to one row, or background
    rows [B, *row] (an array with the batch's rank)."""
    base = baseline_values(baseline, x.dtype)
    row_shape = x.shape[1:]
    if base.ndim == x.ndim:
        if base.shape[1:] != row_shape or len(base) == 0:
            raise InputError(f"background rows must be [B, {', '.join(map(str, row_shape))}]"
                             f", got shape {base.shape}")
        return base
    try:
        np.broadcast_to(base, row_shape)
    except ValueError:
        raise InputError(f"baseline of shape {base.shape} does not fit an input row of "
                         f"shape {row_shape} (nor is it background rows [B, *row])") from None
    return base


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


def _size_mass(width: int, size: int) -> float:
    """The Shapley kernel's total weight on the C(F, s) coalitions of size s."""
    return (width - 1) / (size * (width - size))


def _subsets_of_size(width: int, size: int) -> np.ndarray:
    combos = np.array(list(itertools.combinations(range(width), size)))
    present = np.zeros((len(combos), width), dtype=bool)
    present[np.arange(len(combos))[:, None], combos] = True
    return present


def _sample_pairs(width: int, sizes: list[int], mass: dict[int, float], remaining: float,
                  budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct coalitions from complementary pairs drawn until `budget` distinct ones (the
    model runs) are there or 4 x budget draws were made (as shap does), weighted by how
    often each was drawn, in total the remaining kernel mass."""
    rng = np.random.default_rng(seed)
    probabilities = np.array([mass[k] for k in sizes]) / remaining
    draws = np.zeros((0, width), dtype=bool)
    while True:
        first = np.sort(np.unique(_row_keys(draws), return_index=True)[1])
        if len(first) >= budget or len(draws) >= 4 * budget:
            break
        pairs = max(1, (budget - len(first) + 1) // 2)
        draws = np.vstack([draws, _draw_pairs(rng, width, sizes, probabilities, pairs)])
    if len(first) > budget:
        cut = first[budget - 1] + 1
        draws = draws[:cut + cut % 2]  # whole pairs: a coalition with its complement
    _, index, counts = np.unique(_row_keys(draws), return_index=True, return_counts=True)
    return draws[index], counts * (remaining / len(draws))


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """One hashable bytes value per bool row: np.unique on them is fast, unlike axis=0."""
    packed = np.ascontiguousarray(np.packbits(rows, axis=1))
    return packed.view(np.dtype((np.void, packed.shape[1]))).ravel()


def _draw_pairs(rng: np.random.Generator, width: int, sizes: list[int],
                probabilities: np.ndarray, pairs: int) -> np.ndarray:
    """[2 pairs, F]: S, ~S, ... with |S| drawn from the sizes and S uniform given |S|."""
    drawn = rng.choice(sizes, size=pairs, p=probabilities)
    chosen = np.zeros((pairs, width), dtype=bool)
    # A uniform subset of size k: the first k of a random order. Chunks bound the memory of
    # the random keys when there are many features.
    step = max(1, 2 ** 22 // width)
    for start in range(0, pairs, step):
        stop = min(start + step, pairs)
        order = rng.random((stop - start, width)).argsort(axis=1)
        first = np.arange(width) < drawn[start:stop, None]
        chosen[np.arange(start, stop)[:, None], order] = first
    return np.stack([chosen, ~chosen], axis=1).reshape(2 * pairs, width)


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
             seed_option("seed of the coalitions"), COALITION_BASELINE, input_option()),
    needs_sources=False,
    work=counted("n_samples"),
))
