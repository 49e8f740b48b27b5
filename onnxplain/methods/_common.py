"""Helpers the methods share: the objective fixed on a clean forward run, input sources,
completeness checks."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..graph.sources import Source
from ..inputs import batch_size
from ..objective import Objective, OutputSeed, check_rows
from ..runtime.engine import Engine, GradientRun


def fixed_objective(engine: Engine, feeds: Mapping[str, np.ndarray], target
                    ) -> tuple[Objective, dict[str, np.ndarray]]:
    """The objective resolved on the clean forward run, so that runs on perturbed or
    interpolated inputs all explain the score of the clean input (the predicted class fixed);
    also returns the clean forward outputs (run once: an output seed resolved on them carries
    them)."""
    if isinstance(target, OutputSeed) and target.clean is not None:
        return Objective.resolve(target, target.clean[engine.output]), target.clean
    outputs = engine.forward(feeds)
    check_rows(engine.model, engine.output, outputs[engine.output].shape,
               batch_size(feeds, engine.model.batch.of_inputs))
    return Objective.resolve(target, outputs[engine.output]), outputs


def explicit_target(engine: Engine, outputs: Mapping[str, np.ndarray], target):
    """The target as class indices (None: the predicted class) given the forward outputs."""
    return Objective.resolve(target, outputs[engine.output]).feed()


def input_sources(sources: Sequence[Source], feeds: Mapping[str, np.ndarray], method: str
                  ) -> list[Source]:
    """Sources that are float graph inputs: methods that move the input itself need them."""
    moved = [s for s in sources if s.tensor == s.input and s.tensor in feeds]
    inner = [s.input for s in sources if s not in moved]
    if inner:
        raise InputError(f"{method} moves the input values, but {', '.join(inner)} is "
                         "attributed at an inner tensor (token ids or attribute_at); for "
                         "token ids use layer_integrated_gradients, saliency or "
                         "input_x_gradient")
    return moved


def clean_run(outputs: dict[str, np.ndarray], target, engine: Engine) -> GradientRun:
    """A GradientRun describing the clean input: its outputs and the explained classes
    (`target`: an Objective, or a target explicit per row)."""
    objective = Objective.given(target, outputs[engine.output])
    return GradientRun(outputs=outputs, grads={}, target=objective.classes,
                       objective=objective.name)


def completeness_delta(values: Mapping[str, np.ndarray], clean: np.ndarray, base: np.ndarray,
                       tolerance: float, category: type[Warning], method: str, gap: str,
                       advice: str) -> np.ndarray:
    """sum(attributions) - (S(x) - S(x')) per row, from the explained scores at the input
    (`clean`) and at the reference (`base`). Warns, in plain words, where the gap exceeds
    `tolerance` times |S(x) - S(x')|, and where S(x) = S(x') leaves nothing to compare with
    (a percentage of zero would be meaningless): `gap` names what missed, `advice` the fix."""
    rows = [v.reshape(v.shape[0], -1).astype(np.float64) for v in values.values()]
    total, mass = sum(r.sum(axis=1) for r in rows), sum(np.abs(r).sum(axis=1) for r in rows)
    difference = clean - base
    delta = total - difference
    # Scores equal to float32 rounding: there is no output difference to complete.
    size = np.maximum(np.abs(clean), np.abs(base))
    flat = np.abs(difference) <= 1e-6 * size
    # ... and a sum is left over when it is neither rounding nor a cancelling part of the mass.
    summed = flat & (np.abs(total) > np.maximum(tolerance * mass, 1e-5 * size))
    if np.any(summed):
        rows = np.flatnonzero(summed)
        warnings.warn(f"{method}: the explained score is the same at the input and at the "
                      f"reference in {rows_text(rows)}, so there is no output difference to "
                      f"complete, yet the attributions sum to {total[rows[0]]:.3g}"
                      f"{' (first row)' if len(rows) > 1 else ''}; {advice}", category,
                      stacklevel=5)
    missed = ~flat & (np.abs(delta) > tolerance * np.abs(difference))
    if np.any(missed):
        worst = float(np.max(np.abs(delta[missed]) / np.abs(difference[missed])))
        warnings.warn(f"{method}: {gap} by {worst:.1%} in "
                      f"{rows_text(np.flatnonzero(missed))}; {advice}", category, stacklevel=5)
    return delta


class ConvergenceWarning(UserWarning):
    """Integrated Gradients' completeness error is large: use more steps."""


def convergence_delta(values: Mapping[str, np.ndarray], clean: np.ndarray, base: np.ndarray,
                      tolerance: float, rule: str) -> np.ndarray:
    """sum(IG) - (S(x) - S(x')) per row: 0 for an exact integral (completeness); a
    ConvergenceWarning where it is large (quadrature `rule` with too few steps)."""
    advice = "use more n_steps" + ("" if rule == "gausslegendre" else
                                   " (or rule=gausslegendre)")
    return completeness_delta(values, clean, base, tolerance, ConvergenceWarning,
                              "integrated gradients", "the attributions miss the output "
                              "difference", advice)


def rows_text(rows: Sequence[int]) -> str:
    """'row 3' or 'rows 0, 2, 5' (the first eight, then how many more)."""
    rows = [int(r) for r in rows]
    shown = ", ".join(str(r) for r in rows[:8])
    more = f" and {len(rows) - 8} more" if len(rows) > 8 else ""
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}{more}"


def equal_runs(count: int, limit: int) -> int:
    """Points per run (path steps, noise samples) for `count` of them, at most `limit`: all
    if they fit, else a divisor of count between 2/3 of limit and limit where there is one,
    so that every run has the same shape (the first run of each shape builds a program:
    about a second on ResNet-18; much smaller runs cost more per row), else `limit`."""
    if count <= limit:
        return count
    for size in range(limit, max(1, -(-2 * limit // 3)) - 1, -1):
        if count % size == 0:
            return size
    return limit
