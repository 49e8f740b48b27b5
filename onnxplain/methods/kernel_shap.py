"""Kernel SHAP (Lundberg and Lee 2017): Shapley values of input features as the solution of a
weighted linear regression over coalitions of features. The coalitions are fixed by the
seed, so the regression is a constant matrix (shapley_map); the program export.coalitions
emits scores them in a Loop and applies it, in process and exported alike. Here: the
coalitions, the matrices, and the input preparation (feature masks, background rows)."""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..engine import Engine, GradientRun
from ..errors import InputError
from ..features import baseline_values, row_masks
from ..objective import OutputSeed
from . import MethodOutput, MethodSpec, register
from ._budget import MAX_RUNS, Work, check_work, counted
from ._perturb import perturbation_run, perturbed_input
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
    segments. Every row uses the same coalitions (seeded by `seed`), so a batch gives what
    its rows give one by one. The coalitions fix the regression, so phi is a constant
    matrix (shapley_map) times the scores: the program export.coalitions emits, which
    `export` saves, scores the coalitions in a Loop and applies it with one MatMul.
    """
    from ..export.coalitions import ADDITIVITY, EXPECTED, SCORE, VALUES  # imports us
    from ..export.methods import ATTRIBUTION

    check_count("kernel_shap", "n_samples", n_samples)
    run, name, masks = coalition_run(
        engine, "kernel_shap", feeds, target, features=features, cell=cell,
        n_segments=n_segments, baseline=baseline, input=input,
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
                  options: Mapping, read: Sequence[str]
                  ) -> tuple[GradientRun, str, list[np.ndarray]]:
    """Kernel SHAP's or LIME's program (export.coalitions) run on the rows: (the run, its
    attribution and `read` outputs in post, in row order; the perturbed
    input; each row's feature mask). The masks and the background rows are the program's
    inputs, computed here (input preparation); rows whose masks have different feature
    counts (superpixels) run one program per count, their extras padded with NaN."""
    from ..export.coalitions import MASK  # imports us
    from ..export.graph import FED
    from ..export.methods import ATTRIBUTION

    check_count(method, "n_segments", n_segments)
    name = perturbed_input(feeds, input, cached_inputs(engine.model))
    x = feeds[name]
    masks = row_masks(x, features, cell=cell, n_segments=n_segments)
    # Background rows are few and shared by all rows: baked in (the program's key holds
    # their digest), where a fed input would be split into chunks of rows.
    background = background_rows(coalition_baseline(baseline, x), x)
    runs, groups = [], feature_groups(masks)
    for group in groups:
        width = int(masks[group[0]].max()) + 1
        chosen = {**options, "features": FED, "n_features": width, "baseline": background,
                  "input": name}
        part = feeds if len(groups) == 1 else select_rows(feeds, group)
        check_matrix(method, width, options["n_samples"], engine.memory_budget_mb)
        count = (len(coalitions(width, options["n_samples"], options["seed"])[0]) + 1
                 if method == "kernel_shap" else options["n_samples"])
        runs.append(perturbation_run(
            engine, method, part, _take_target(target, len(x), group), chosen,
            {MASK: np.stack([masks[i] for i in group])}, count * len(background), method,
            (ATTRIBUTION + name, *read)))
    run = runs[0] if len(runs) == 1 else _stitch(runs, groups)
    return run, name, masks


def check_matrix(method: str, width: int, n_samples: int, budget_mb: float) -> None:
    """The regression's float64 matrices ([F, samples], LIME's gram [F, F]) are built in
    memory: over the memory budget they are one line, not a MemoryError."""
    held = 8 * width * (n_samples + (width if method == "lime" else 0)) * 3
    check_work(method, Work("n_samples", n_samples, 0, held, about=f"with {width:,} features "
                            f"and n_samples={n_samples:,}"), MAX_RUNS, budget_mb)


def background_rows(base: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The baseline as background rows [B, *row] (one row for a scalar or a row)."""
    if base.ndim == x.ndim:
        return np.ascontiguousarray(base)
    return np.ascontiguousarray(np.broadcast_to(base, x.shape[1:])[None])


def _take_target(target, rows: int, group: np.ndarray):
    """The target of the rows in `group`: per-row values taken, one for all kept."""
    if isinstance(target, OutputSeed):
        values = target.values
        return OutputSeed(values[group] if values.ndim and len(values) == rows else values)
    if target is None or np.ndim(target) == 0:
        return target
    values = np.asarray(target)
    return values[group] if len(values) == rows else target


def _stitch(runs: list[GradientRun], groups: list[np.ndarray]) -> GradientRun:
    """One run in row order from runs over groups of rows; per-feature outputs of groups
    with fewer features are padded with NaN."""
    order = np.argsort(np.concatenate(groups), kind="stable")

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        widest = max(part.shape[1] if part.ndim == 2 else 0 for part in parts)
        if all(part.ndim == 2 for part in parts) and any(p.shape[1] < widest for p in parts):
            parts = [np.pad(p.astype(np.float64), ((0, 0), (0, widest - p.shape[1])),
                            constant_values=np.nan) for p in parts]
        return np.concatenate(parts)[order]

    def merged(field: str) -> dict[str, np.ndarray]:
        first = getattr(runs[0], field)
        return {key: joined([getattr(run, field)[key] for run in runs]) for key in first}

    target = None if runs[0].target is None else joined([run.target for run in runs])
    return GradientRun(outputs=merged("outputs"), grads=merged("grads"), target=target,
                       objective=runs[0].objective, post=merged("post"))


@functools.lru_cache(maxsize=8)
def coalitions(width: int, n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """shapley_coalitions, drawn once per (width, n_samples, seed): the program's builder
    and the in-process extras read the same draws (read-only)."""
    present, weights, exact = shapley_coalitions(width, n_samples, seed)
    present.setflags(write=False)
    weights.setflags(write=False)
    return present, weights, exact


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


def shapley_map(present: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[F - 1, M + 2]: the matrix A with phi_{<F} = A [E, v(z_1), ..., v(z_M), f(x)] for the
    coalitions present [M, F] (empty and full ones left out) and their kernel weights.

    The kernel-weighted least squares with sum(phi) = f(x) - E imposed by eliminating the
    last feature (as shap does): phi_F = delta - sum_{i<F} phi_i with delta = f(x) - E, so
    v(z) - E - z_F delta = sum_{i<F} (z_i - z_F) phi_i. Its minimum-norm solution is
    pinv(D) sqrt(W) r (D the weighted design, r the responses, linear in the scores), the
    cutoff of numpy's lstsq (eps max(M, F - 1) of the largest singular value)."""
    width = present.shape[1]
    z = present.astype(np.float64)
    root = np.sqrt(weights)
    design = (z[:, :-1] - z[:, -1:]) * root[:, None]
    if width == 1 or not len(z):
        return np.zeros((width - 1, len(z) + 2))
    inverse = np.linalg.pinv(design, rcond=np.finfo(np.float64).eps * max(design.shape))
    inverse *= root[None, :]
    last = z[:, -1]
    # r_j = v(z_j) - E (1 - z_jF) - f(x) z_jF
    return np.concatenate([-(inverse @ (1 - last))[:, None], inverse,
                           -(inverse @ last)[:, None]], axis=1)


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
