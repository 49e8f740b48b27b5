"""The coalitions of Kernel SHAP and LIME and their regressions as matrices, computed in
float64 when the program is built (export.coalitions): the coalitions are fixed by the seed
and the number of features, so each fit is one constant matrix applied to the scores."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from ..errors import InputError
from ..features import baseline_values
from ..runtime.budget import MAX_RUNS, Work, check_work

# Up to this many features every coalition is evaluated: 2^12 runs cost little.
EXACT_MAX_FEATURES = 12


def check_matrix(method: str, width: int, n_samples: int, budget_mb: float) -> None:
    """The regression's float64 matrices ([F, samples], LIME's gram [F, F]) are built in
    memory: over the memory budget they are one line, not a MemoryError. Kernel SHAP's
    samples are its coalitions: 2^F - 1 when it enumerates them, whatever n_samples says
    (a larger count is no larger matrix), else about n_samples (sized before the draw)."""
    samples = n_samples + (width if method == "lime" else 0)
    if method == "kernel_shap" and every_coalition(width, n_samples):
        samples = 2 ** width - 1
    held = 8 * width * samples * 3
    check_work(method, Work("n_samples", n_samples, 0, held, about=f"with {width:,} features "
                            f"and n_samples={n_samples:,}"), MAX_RUNS, budget_mb)


def check_runs(method: str, width: int, n_samples: int, seed: int, background: int,
               max_runs, budget_mb: float, rows: int = 1) -> None:
    """Refuse more than `max_runs` forward runs per input row: each coalition scored runs
    once per background row (coalition_runs), and the scores of `rows` rows are held at
    once. Sampled coalitions are counted once drawn, after the count they take at least
    (n_samples + 1) passed: a refused count draws nothing."""
    about = f"with {width:,} features and n_samples={n_samples:,}" + (
        f" over {background:,} background rows" if background > 1 else "")
    advice = "lower n_samples, use fewer background rows" if background > 1 else ""

    def check(runs: int) -> None:
        check_work(method, Work("n_samples", n_samples, runs * background,
                                16 * rows * runs * background, about=about, advice=advice),
                   max_runs, budget_mb)

    sampled = method == "kernel_shap" and not every_coalition(width, n_samples)
    if sampled:
        check(n_samples + 1)
    check(coalition_runs(method, width, n_samples, seed))


def every_coalition(width: int, n_samples: int) -> bool:
    """Whether Kernel SHAP evaluates every coalition of `width` features (exact values)."""
    return width <= EXACT_MAX_FEATURES or n_samples >= 2 ** width - 2


def coalition_runs(method: str, width: int, n_samples: int, seed: int) -> int:
    """Coalitions a row is scored at, each once per background row: LIME's n_samples;
    Kernel SHAP's every one but the full one (2^F - 1) when it enumerates them, else the
    drawn ones and the empty one (n_samples + 1, or + 2 where a drawn pair is completed)."""
    if method != "kernel_shap":
        return n_samples
    if every_coalition(width, n_samples):
        return 2 ** width - 1
    return len(coalitions(width, n_samples, seed)[0]) + 1


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
    exact = every_coalition(width, n_samples)
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
