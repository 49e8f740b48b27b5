"""Shapley value sampling as one program (methods.shapley_sampling's definition). The
permutations are fixed by the seed and the number of features, drawn when the program is
built from export.random's stream (the numpy reference of its bits: exact integers), so the
coalitions they visit, each permutation's prefixes, are fixed too. Each distinct coalition
is scored once in export.coalitions' Loop (permutations share most short prefixes, so with
few features far fewer runs than Captum's n_samples x F); each feature's value is then
the mean over permutations of the score change where it joins: the distinct joins of each
feature (a coalition without and with it) are gathered from the scores and weighted by how
often the permutations make them, so neither n_samples x F changes per row nor a
coalitions x features matrix is held.

Inputs and the elements of no feature: as export.coalitions (`feature_mask`,
`background/<input>`, absent features averaged over the background rows).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..runtime.batching import DEFAULT_BUDGET_MB
from ..runtime.budget import Work, check_work
from .coalitions import (
    COMMON,
    coalition_features,
    coalition_scores,
    declare_shapley_outputs,
    feature_column,
)
from .graph import ExplainerGraph
from .methods import register_export
from .random import reference_bits

METHOD = "shapley_sampling"


def permutations(width: int, n_samples: int, seed: int) -> np.ndarray:
    """[n_samples, F] int64: permutation p orders the features by the 32-bit words
    export.random draws for (seed, sample p F + f), ties by feature id. A seed is a word
    (0 .. 2**32 - 1, the option's range).

    One sample per feature, not one element each of sample p: the words of consecutive
    elements of a sample are a quadratic sequence with a second difference that no key
    changes (export.random's final step), so the order of three or more of them is far
    from uniform (one of the 24 orders of 4 never came up in 4,800 draws); a sample's key
    is mixed twice, and the orders it gives pass a chi-square test."""
    words = reference_bits([seed], np.arange(n_samples * width), 1)[0]
    return np.argsort(words.reshape(n_samples, width), axis=1, kind="stable")


@dataclass(frozen=True)
class Plan:
    """What the program bakes in for F features: `order` [n, F], the permutations;
    `present` [U, F] bool, the distinct coalitions scored (the prefixes of size 0 .. F - 1:
    the full one is the row itself); `before`, `after` [K, F] int64 and `weight` [K, F]:
    join k of feature f goes from score column before[k, f] to after[k, f] (columns
    0 .. U - 1 the coalitions', U the row's own score) in weight[k, f] of the permutations
    (K the most distinct joins of a feature; the padding weighs 0); `empty`, the empty
    coalition's column."""

    order: np.ndarray
    present: np.ndarray
    before: np.ndarray
    after: np.ndarray
    weight: np.ndarray
    empty: int


@functools.lru_cache(maxsize=8)
def plan(width: int, n_samples: int, seed: int) -> Plan:
    """The Plan of (width, n_samples, seed), made once: the builder and the in-process
    run (its progress count) read the same arrays (read-only)."""
    order = permutations(width, n_samples, seed)
    prefixes = _prefixes(order)  # [n, F, bytes]
    size = prefixes.shape[2]
    keys = np.ascontiguousarray(prefixes).reshape(-1, size).view(np.dtype((np.void, size)))
    distinct, inverse = np.unique(keys.ravel(), return_inverse=True)
    present = np.unpackbits(distinct.view(np.uint8).reshape(-1, size), axis=1,
                            count=width).astype(bool)
    columns = np.hstack([inverse.reshape(n_samples, width),
                         np.full((n_samples, 1), len(distinct))])  # prefix j: column j
    position = np.argsort(order, axis=1)  # where each feature joins
    joins = _distinct_joins(np.take_along_axis(columns, position, 1),
                            np.take_along_axis(columns, position + 1, 1), len(distinct) + 1)
    made = Plan(order, present, *joins, int(inverse[0]))
    for array in (made.order, made.present, made.before, made.after, made.weight):
        array.setflags(write=False)
    return made


def _distinct_joins(before: np.ndarray, after: np.ndarray, columns: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The joins [n, F] (score columns without and with each feature, per permutation) as
    each feature's distinct ones [K, F] and the share of permutations making each."""
    count, width = before.shape
    keys = np.sort(before * columns + after, axis=0)
    first = np.ones(keys.shape, bool)  # the first of each run of equal joins
    first[1:] = keys[1:] != keys[:-1]
    slot = np.cumsum(first, axis=0) - 1
    feature = np.broadcast_to(np.arange(width), keys.shape)
    weight = np.zeros((int(slot.max()) + 1, width))
    np.add.at(weight, (slot, feature), 1.0)
    weight /= count
    distinct = np.zeros(weight.shape, np.int64)  # padding: column 0 to itself, weight 0
    distinct[slot[first], feature[first]] = keys[first]
    return distinct // columns, distinct % columns, weight


def _prefixes(order: np.ndarray) -> np.ndarray:
    """[n, F, ceil(F / 8)] uint8: prefix j of each permutation (its first j features, j =
    0 .. F - 1) as packed bits (np.packbits' order), 1/8 of a bool table."""
    count, width = order.shape
    packed = np.zeros((count, width, (width + 7) // 8), np.uint8)
    joined = order[:, :-1]  # feature order[p, j] is in prefixes j + 1 ..
    rows, steps = np.indices(joined.shape)
    packed[rows, steps + 1, joined // 8] = np.left_shift(1, 7 - joined % 8).astype(np.uint8)
    return np.bitwise_or.accumulate(packed, axis=1)


def most_coalitions(width: int, n_samples: int) -> int:
    """The distinct coalitions n_samples permutations of F features can visit: prefixes of
    size j (0 .. F - 1) number at most min(n_samples, C(F, j)). Known before the draw."""
    small, count = {}, 1  # C(F, j) below n_samples, from both ends (C(F, j) = C(F, F - j))
    for j in range(width // 2 + 1):
        if count >= n_samples:
            break
        small[j] = small[width - j] = count
        count = count * (width - j) // (j + 1)
    return width * n_samples - sum(n_samples - c for j, c in small.items() if j < width)


def check_plan(width: int, n_samples: int, background: int, max_runs, budget_mb: float,
               rows: int = 1) -> None:
    """Refuse, before drawing, more than `max_runs` forward runs per row (each distinct
    coalition over each background row, at most most_coalitions) or a plan over the memory
    budget (packed prefixes, index tables, the scores of `rows` rows)."""
    runs = most_coalitions(width, n_samples) * background
    # Per (permutation, feature): its packed prefix and about 64 bytes of draws and indices.
    held = n_samples * width * ((width + 7) // 8 + 64) + 16 * rows * runs
    about = f"with {width:,} features and n_samples={n_samples:,}" + (
        f" over {background:,} background rows" if background > 1 else "")
    check_work(METHOD, Work("n_samples", n_samples, runs, held, what="forward runs (at most)",
                            about=about, advice="lower n_samples, use fewer features" +
                            (" or background rows" if background > 1 else "")),
               max_runs, budget_mb)


@register_export(METHOD, COMMON, any_output=True)
def shapley_sampling(eg: ExplainerGraph, options: dict) -> None:
    """phi_f = mean_p [v(P_p(f) + f) - v(P_p(f))], P_p(f) the features before f in
    permutation p, v the explained score with the absent features from the background."""
    b = eg.b
    # max_runs counts this method's runs (check_plan), not Kernel SHAP's coalitions.
    features = coalition_features(eg, {k: v for k, v in options.items() if k != "max_runs"}, METHOD)
    samples, seed = int(options["n_samples"]), int(options["seed"])
    if "max_runs" in options:  # export; in-process runs check it before (no program key)
        check_plan(features.width, samples, features.count, options["max_runs"],
                   DEFAULT_BUDGET_MB)
    drawn = plan(features.width, samples, seed)
    scores, fx = coalition_scores(eg, features, drawn.present, options)
    table = b.concat([scores, b.unsqueeze(fx, [1])], 1)  # [N, U + 1]
    joins = [b.op("Gather", table, b.const(drawn.after, "joined_with"), axis=1),
             b.op("Gather", table, b.const(drawn.before, "joined_without"), axis=1)]
    changes = b.op("Mul", b.op("Sub", *joins), b.const(drawn.weight, "join_shares"))
    values = b.reduce("ReduceSum", changes, [1], False)  # [N, K, F] -> [N, F]
    expected = feature_column(b, scores, drawn.empty)
    declare_shapley_outputs(eg, features, values, expected, fx, "sampled Shapley values")
