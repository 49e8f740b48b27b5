"""The linear decoder's closed form, and the memory it needs, checked before any work.

    J(W, b) = mean((A W + b - X)^2) + ridge ||W||^2   over rows A [M, D], X [M, P].

With A and X centred, the minimiser is W = (A^T A / s + ridge I)^-1 A^T X / s, s = M P (the
primal form, a D x D system), or equivalently W = A^T (A A^T + ridge s I)^-1 X (the dual
form, an M x M system), which `ridge_solution` takes when there are fewer rows than
features: a [64, 32, 32] layer (D = 65536) fitted on 400 rows solves a 400 x 400 system
instead of a 34 GB one. b = mean X - mean A W.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

# Budgets: the decoder's float32 weight ships inside an ONNX file (protobuf caps a model at
# 2 GB), and the closed form's float64 work (centred rows, the system, the solution).
WEIGHT_BUDGET = 512 * 2**20
SOLVE_BUDGET = 2 * 2**30


def ridge_solution(a: np.ndarray, x: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """argmin_{W, b} mean((a W + b - x)^2) + ridge ||W||^2 over rows a [M, D], x [M, P],
    in float64: primal or dual form, whichever system is smaller."""
    # Copies centred in place, the penalty added on the diagonal in place: the memory
    # solve_bytes counts, not twice it.
    ac, xc = np.array(a, np.float64), np.array(x, np.float64)
    scale = len(ac) * xc.shape[1]
    a_mean, x_mean = ac.mean(axis=0), xc.mean(axis=0)
    ac -= a_mean
    xc -= x_mean
    if ridge == 0:  # least squares (minimum norm); the normal equations may be singular
        weight = np.linalg.lstsq(ac, xc, rcond=None)[0]
    elif len(ac) < ac.shape[1]:
        kernel = ac @ ac.T
        kernel.flat[::len(ac) + 1] += ridge * scale
        weight = ac.T @ np.linalg.solve(kernel, xc)
    else:
        gram = ac.T @ ac
        gram /= scale
        gram.flat[::ac.shape[1] + 1] += ridge
        weight = np.linalg.solve(gram, ac.T @ xc / scale)
    return weight, x_mean - a_mean @ weight


def ridge_objective(a: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                    ridge: float) -> float:
    """J(W, b) = mean((a W + b - x)^2) + ridge ||W||^2, in float64."""
    error = a.astype(np.float64) @ weight + bias - x.astype(np.float64)
    return float((error ** 2).mean() + ridge * (weight.astype(np.float64) ** 2).sum())


def weight_bytes(features: int, outputs: int) -> int:
    """The float32 weight [D, P] of a linear decoder."""
    return 4 * features * outputs


def solve_bytes(rows: int, features: int, outputs: int) -> int:
    """About the float64 memory ridge_solution takes: centred rows, the smaller system and
    the right-hand side, the solution."""
    side = min(rows, features)
    return 8 * (rows * features + side * side + rows * outputs + 2 * features * outputs)


def check_budget(layer: str, rows: int, features: int, outputs: int, closed_form: bool
                 ) -> None:
    """One-line InputError when a linear decoder from `layer` would be too large to ship or,
    when fitted in `closed_form`, to solve."""
    weight = weight_bytes(features, outputs)
    if weight > WEIGHT_BUDGET:
        raise InputError(f"a linear decoder from layer '{layer}' ({features} features to "
                         f"{outputs} values) would weigh {weight / 2**20:.0f} MB, over "
                         f"{WEIGHT_BUDGET // 2**20} MB; probe a layer with fewer values, or "
                         "use the conv decoder")
    work = solve_bytes(rows, features, outputs)
    if closed_form and work > SOLVE_BUDGET:
        raise InputError(f"the linear decoder's closed form from layer '{layer}' needs about "
                         f"{work / 2**30:.1f} GB, over {SOLVE_BUDGET // 2**30} GB; probe a "
                         "smaller layer, fit on fewer rows, or use the conv decoder")


def fits_budget(rows: int, features: int, outputs: int) -> bool:
    return (weight_bytes(features, outputs) <= WEIGHT_BUDGET
            and solve_bytes(rows, features, outputs) <= SOLVE_BUDGET)
