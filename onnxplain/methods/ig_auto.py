"""n_steps="auto" for the path methods (integrated_gradients, layer_integrated_gradients):
the Gauss-Legendre order rises through ORDERS until each row's convergence delta is within
`delta_tolerance` of |S(x) - S(x')|; rows that converged stop, only the others run again.

Why successive Gauss-Legendre orders rather than a nested rule: each order is exactly the
fixed-n_steps program (built once per order, the same numbers bit for bit), and Gauss-Legendre
needs far fewer points for a given delta than the nested rules that could reuse them
(trapezoid doubling converges as 1/n^2; Clenshaw-Curtis and Gauss-Kronrod need about twice
the points of Gauss-Legendre for the same accuracy). Doubling the order costs at most the
final order again (8 + 16 + ... + n < 2n), and only for the rows still running.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping

import numpy as np

from ..export.methods import BASELINE_SCORE, SCORE
from ..inputs import RowAxes, take_rows
from . import MethodOutput
from ._common import ConvergenceWarning, rows_text

AUTO = "auto"
ORDERS = (8, 16, 32, 64, 128)
AUTO_TOLERANCE = 0.01  # the target delta of n_steps=auto ...
FIXED_TOLERANCE = 0.05  # ... and where a fixed n_steps warns


def tolerance_for(n_steps, delta_tolerance: float | None) -> float:
    """delta_tolerance, or its default: 1% as auto's target, 5% for a fixed n_steps."""
    if delta_tolerance is not None:
        return float(delta_tolerance)
    return AUTO_TOLERANCE if n_steps == AUTO else FIXED_TOLERANCE


def most_steps(n_steps) -> int:
    """Gradient runs per row that `n_steps` may take (auto: every order, at worst)."""
    return sum(ORDERS) if n_steps == AUTO else int(n_steps)


# run(rows, target, n_steps): the fixed-order method on those rows (None: all) for that
# target, with the default warnings; its MethodOutput holds extras["convergence_delta"].
RunAtOrder = Callable[[np.ndarray | None, object, int], MethodOutput]


def auto_steps(run: RunAtOrder, target, rows: int, axes: RowAxes, tolerance: float,
               method: str) -> MethodOutput:
    """The first order at which each row's |delta| <= tolerance |S(x) - S(x')| (see the
    module), its values as run at that order; extras["n_steps"] holds the order per row. A
    ConvergenceWarning names the rows still above the tolerance at the last order."""
    first = _quiet(run, None, target, ORDERS[0])
    merged = _Merged(first, axes)
    steps = np.full(rows, ORDERS[0], np.int64)
    pending = np.flatnonzero(~_converged(first, tolerance))
    # A class per row (the predicted one fixed on the first run) lets pending rows run
    # alone; other objectives (output seeds) run the whole batch again.
    alone = first.run.objective == "class" and isinstance(first.run.target, np.ndarray)
    for order in ORDERS[1:]:
        if not pending.size:
            break
        chosen = first.run.target[pending] if alone else target
        out = _quiet(run, pending if alone else None, chosen, order)
        local = np.arange(pending.size) if alone else pending
        merged.put(out, pending, local)
        steps[pending] = order
        pending = pending[~_converged(out, tolerance)[local]]
    result = merged.output()
    result.extras["n_steps"] = steps
    if pending.size:
        _warn_cap(method, result, pending, tolerance)
    return result


def take(feeds: Mapping[str, np.ndarray], axes: RowAxes, rows: np.ndarray | None
         ) -> dict[str, np.ndarray]:
    """Rows `rows` (indices; None: all) of every per-row array."""
    return dict(feeds) if rows is None else take_rows(feeds, axes, rows)


def _quiet(run: RunAtOrder, rows, target, order: int) -> MethodOutput:
    # An order short of the tolerance is expected: only the last one's rows are warned of.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return run(rows, target, order)


def _scores(out: MethodOutput) -> tuple[np.ndarray, np.ndarray]:
    """(S(x) - S(x'), the larger of |S(x)|, |S(x')|) per row: read from the program, or for
    the folded path (which reads no scores) from the delta, sum(IG) - (S(x) - S(x'))."""
    post = out.run.post
    if SCORE in post and BASELINE_SCORE in post:
        clean, base = (post[name].astype(np.float64) for name in (SCORE, BASELINE_SCORE))
        return clean - base, np.maximum(np.abs(clean), np.abs(base))
    total = sum(v.reshape(v.shape[0], -1).astype(np.float64).sum(axis=1)
                for v in out.at_sources.values())
    difference = total - out.extras["convergence_delta"]
    return difference, np.abs(difference)


def _converged(out: MethodOutput, tolerance: float) -> np.ndarray:
    """Rows whose delta is within tolerance; also rows with S(x) = S(x') to float32 rounding
    (no relative delta to reach: more steps cannot help)."""
    difference, size = _scores(out)
    delta = np.abs(out.extras["convergence_delta"])
    return (delta <= tolerance * np.abs(difference)) | (np.abs(difference) <= 1e-6 * size)


def _warn_cap(method: str, result: MethodOutput, rows: np.ndarray, tolerance: float) -> None:
    difference, _ = _scores(result)
    worst = float(np.max(np.abs(result.extras["convergence_delta"][rows])
                         / np.abs(difference[rows])))
    warnings.warn(f"{method}: n_steps=auto reached its cap of {ORDERS[-1]} steps in "
                  f"{rows_text(rows)} with the convergence delta at {worst:.1%} of the output "
                  f"difference (delta_tolerance {tolerance:g}); raise delta_tolerance, or "
                  "choose another baseline", ConvergenceWarning, stacklevel=4)


class _Merged:
    """The first order's output over every row, with later orders' rows written over it."""

    def __init__(self, first: MethodOutput, axes: RowAxes):
        self.first, self.axes = first, axes
        self.parts = {"at_sources": _copies(first.at_sources), "at_inputs":
                      _copies(first.at_inputs), "grads": _copies(first.run.grads),
                      "post": _copies(first.run.post)}
        self.delta = np.array(first.extras["convergence_delta"], copy=True)

    def put(self, out: MethodOutput, rows: np.ndarray, local: np.ndarray) -> None:
        """Rows `local` of `out` become rows `rows` of the result."""
        sources = {"at_sources": out.at_sources, "at_inputs": out.at_inputs,
                   "grads": out.run.grads, "post": out.run.post}
        for part, values in self.parts.items():
            for name, value in values.items():
                axis = self.axes.get(name, 0) if part != "post" else 0
                index = (slice(None),) * axis
                value[(*index, rows)] = sources[part][name][(*index, local)]
        self.delta[rows] = out.extras["convergence_delta"][local]

    def output(self) -> MethodOutput:
        first, parts = self.first, self.parts
        merged = dataclasses.replace(first.run, grads=parts["grads"], post=parts["post"])
        return MethodOutput(merged, parts["at_sources"], parts["at_inputs"], first.tensors,
                            {**first.extras, "convergence_delta": self.delta},
                            list(first.notes), first.signed)


def _copies(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.array(value, copy=True) for name, value in values.items()}
