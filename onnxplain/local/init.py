"""Local layers initialised from data: centers are training rows, values their targets.

No training is needed for a working model (the seed's "initialization with data points"):
a classifier's centers are labelled examples, a residual layer's values move each center to
its target, an MLP's values are the targets themselves.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ops import epsilon_softmax as es
from .layers import LocalLayer, stack_values

CENTER_METHODS = ("random", "kmeans++", "stratified")
# Auto temperature: this fraction of the median distance from a row to its nearest other
# center. Small enough that the nearest centers dominate, large enough that gradients flow.
TEMPERATURE_FRACTION = 0.1
# Default center count of a head (center_budget): every fitting row, up to these caps.
MAX_CENTER_VALUES = 2**24  # centers x features: 64 MiB of float32 weights
MAX_CENTERS = 20_000


def pick_centers(x: np.ndarray, count: int, method: str = "random", labels=None,
                 seed: int = 0) -> np.ndarray:
    """Indices of `count` distinct rows of x: uniformly at random, by k-means++ seeding
    (Arthur and Vassilvitskii 2007: each next row drawn with probability proportional to its
    squared distance to the nearest chosen one), or stratified (as equal a share per class
    as the classes allow)."""
    x = _rows(x)
    if method not in CENTER_METHODS:
        raise InputError(f"unknown center method '{method}'; choose one of "
                         f"{', '.join(CENTER_METHODS)}")
    if not 0 < count <= len(x):
        raise InputError(f"cannot pick {count} centers from {len(x)} rows")
    rng = np.random.default_rng(seed)
    if method == "random":
        return np.sort(rng.choice(len(x), count, replace=False))
    if method == "kmeans++":
        return _kmeans_plus_plus(x, count, rng)
    if labels is None:
        raise InputError("stratified centers need labels")
    return _stratified(np.asarray(labels), count, rng)


def _kmeans_plus_plus(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    x = x.astype(np.float64)
    chosen = [int(rng.integers(len(x)))]
    nearest = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(count - 1):
        total = nearest.sum()
        if total <= 0:  # every row coincides with a center: fill with unused rows
            rest = np.setdiff1d(np.arange(len(x)), chosen)
            chosen.extend(rng.choice(rest, count - len(chosen), replace=False).tolist())
            break
        pick = int(rng.choice(len(x), p=nearest / total))
        chosen.append(pick)
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    return np.array(chosen, dtype=np.int64)


def _stratified(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(labels)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    chosen: list[int] = []
    while len(chosen) < count:  # round robin over classes that still have rows
        for c in classes:
            if pools[c] and len(chosen) < count:
                chosen.append(int(pools[c].pop()))
    return np.array(chosen, dtype=np.int64)


def auto_temperature(x: np.ndarray, centers: np.ndarray, distance: str,
                     sample: int = 2000, seed: int = 0,
                     sources: np.ndarray | None = None) -> float:
    """TEMPERATURE_FRACTION times the median distance from a row to its nearest center that
    is not itself. `sources`: the row of x each center was taken from, so that a row's own
    center is skipped by index (l2's expansion leaves ~1e-6 between a row and its own copy,
    not 0, and a temperature from those would saturate the epsilon neuron); exact
    duplicates of other rows are skipped too."""
    x = _rows(x)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(x), min(sample, len(x)), replace=False)
    d = es.distances(x[picked].astype(np.float64), np.asarray(centers, np.float64), distance)
    if sources is not None:
        d[picked[:, None] == np.asarray(sources)[None, :]] = np.inf
    d[d <= 1e-9] = np.inf
    nearest = d.min(1)
    nearest = nearest[np.isfinite(nearest)]
    median = float(np.median(nearest)) if nearest.size else 1.0
    return max(TEMPERATURE_FRACTION * median, 1e-6)


def center_budget(features: int) -> int:
    """How many centers a head on `features` features gets by default: every fitting row up
    to this many. A center costs `features` float32 weights in the model and as many
    multiply-adds per input row (twice: the op and the nearest-distance output), and one
    float64 distance per input row in the [rows, centers] matrix; MAX_CENTER_VALUES keeps
    the weights at 64 MiB and MAX_CENTERS a batch of 1000 rows' distances at 160 MB."""
    return max(1, min(MAX_CENTERS, MAX_CENTER_VALUES // max(1, features)))


def calibrate_epsilon(layer: LocalLayer, held_out: np.ndarray, reject_rate: float = 0.05
                      ) -> float:
    """The epsilon that rejects `reject_rate` of new rows like the held-out ones: the epsilon
    neuron wins when the nearest center is farther than -epsilon, so -epsilon is the
    rejection_threshold of the held-out rows' nearest-center distances."""
    return -rejection_threshold(layer.distances(held_out).min(axis=1), reject_rate)


def calibration_check(layer: LocalLayer, held_out: np.ndarray, reject_rate: float = 0.05,
                      folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated calibration error: epsilon calibrated on all folds of the held-out
    rows but one, the rejected share of the one left out, over every fold. `rejected` is the
    mean share, `spread` its standard deviation over folds, `error` = rejected - asked. This
    measures the error of estimating the quantile from these rows only: rows of the model's
    own training set sit closer to the centers than new data, which it cannot see."""
    nearest = layer.distances(held_out).min(axis=1)
    if len(nearest) < 2 * folds:
        return {"asked": reject_rate, "rows": len(nearest), "rejected": None, "spread": None,
                "error": None}
    parts = np.array_split(np.random.default_rng(seed).permutation(len(nearest)), folds)
    rates = [float(np.mean(nearest[part] > rejection_threshold(np.delete(nearest, part),
                                                               reject_rate)))
             for part in parts]
    mean = float(np.mean(rates))
    return {"asked": reject_rate, "rows": len(nearest), "rejected": mean,
            "spread": float(np.std(rates)), "error": mean - reject_rate}


def rejection_threshold(scores: np.ndarray, reject_rate: float) -> float:
    """The score above which a new row is rejected so that, for rows exchangeable with
    these n, at most `reject_rate` are rejected in expectation and at least
    reject_rate - 1/(n + 1): the ceil((n + 1)(1 - reject_rate))-th smallest score (the
    split-conformal quantile, Vovk et al. 2005; Angelopoulos and Bates 2021; with fewer than
    1/reject_rate - 1 rows it is the largest score, which rejects 1/(n + 1)). The plain
    0.95 quantile of 148 test digits rejects 5.4% of the other 149 on the zoo's digits CNN
    (mean of 1000 splits), this 4.6%."""
    if not 0 <= reject_rate < 1:
        raise InputError(f"the rejection rate must be in [0, 1), got {reject_rate}")
    scores = np.sort(np.asarray(scores, np.float64).reshape(-1))
    if not scores.size:
        raise InputError("no rows to calibrate the rejection threshold on")
    rank = int(np.ceil((len(scores) + 1) * (1.0 - reject_rate)))
    return float(scores[min(rank, len(scores)) - 1])


def _layer_from_rows(kind: str, x: np.ndarray, values: np.ndarray, chosen: np.ndarray, *,
                     distance: str, temperature, epsilon: float, noise: float, seed: int,
                     labels=None) -> LocalLayer:
    x = _rows(x)
    centers = x[chosen].astype(np.float32)
    if noise:
        # Noise relative to each feature's spread: the seed found noisy picks generalise better.
        spread = x.std(axis=0, keepdims=True)
        rng = np.random.default_rng(seed + 1)
        centers = centers + noise * spread * rng.standard_normal(centers.shape)
    if temperature == "auto":
        temperature = auto_temperature(x, centers, distance, seed=seed, sources=chosen)
    return LocalLayer(kind, centers, values, distance=distance, temperature=float(temperature),
                      epsilon=epsilon, sources=chosen,
                      labels=None if labels is None else np.asarray(labels)[chosen])


def classifier_from_data(x: np.ndarray, labels: np.ndarray, count: int, *,
                         method: str = "stratified", classes: int | None = None,
                         distance: str = "l2", temperature="auto",
                         epsilon: float = float("-inf"), noise: float = 0.0, seed: int = 0
                         ) -> LocalLayer:
    """Centers are `count` labelled rows, values their one-hot labels."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(x) or labels.dtype.kind not in "iu":
        raise InputError(f"labels must be [N] integers matching {len(x)} rows")
    if labels.min() < 0:
        raise InputError("labels must be non-negative class indices")
    classes = classes or int(labels.max()) + 1
    if labels.max() >= classes:
        raise InputError(f"labels must be below classes ({classes}), got {labels.max()}")
    chosen = pick_centers(x, count, method, labels, seed)
    one_hot = np.eye(classes, dtype=np.float32)[labels[chosen]]
    return _layer_from_rows("classifier", x, stack_values(one_hot), chosen, distance=distance,
                            temperature=temperature, epsilon=epsilon, noise=noise, seed=seed,
                            labels=labels)


def mlp_from_data(x: np.ndarray, targets: np.ndarray, count: int, *, residual: bool = False,
                  method: str = "kmeans++", labels=None, distance: str = "l2",
                  temperature="auto", epsilon: float = float("-inf"), noise: float = 0.0,
                  seed: int = 0) -> LocalLayer:
    """Centers are `count` rows; values are their targets (MLP) or the shifts that carry each
    center to its target (residual: target - center). The epsilon neuron's value is zero."""
    x, targets = _rows(x), np.asarray(targets, np.float32)
    if targets.ndim != 2 or len(targets) != len(x):
        raise InputError(f"targets must be [N, M] with N = {len(x)}, got {targets.shape}")
    chosen = pick_centers(x, count, method, labels, seed)
    # Shifts from the data rows, so each source row (not its noisy center) reaches its target.
    rows = targets[chosen] - (x[chosen] if residual else 0)
    return _layer_from_rows("residual" if residual else "mlp", x, stack_values(rows), chosen,
                            distance=distance, temperature=temperature, epsilon=epsilon,
                            noise=noise, seed=seed, labels=labels)


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind != "f":
        raise InputError(f"data must be a float [N, D] array, got {x.dtype} {x.shape}")
    return x
