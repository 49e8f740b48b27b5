"""Small helpers for writing op cases."""

from __future__ import annotations

import numpy as np

from .gradcheck import Const, OpCase

_rng = np.random.default_rng(1234)


def r(*shape: int) -> np.ndarray:
    """Standard normal float64 values."""
    return _rng.standard_normal(shape)


def pos(*shape: int, low: float = 0.5, high: float = 2.0) -> np.ndarray:
    """Positive values away from zero."""
    return _rng.uniform(low, high, shape)


def apart(*shape: int) -> np.ndarray:
    """Distinct values at least 0.01 apart, so max-like ops have no ties within a step."""
    count = int(np.prod(shape))
    return (_rng.permutation(count) * 0.05 - count * 0.025).reshape(shape) + 0.013


def ints(*values: int) -> Const:
    return Const(np.array(values, dtype=np.int64))


__all__ = ["Const", "OpCase", "apart", "ints", "pos", "r"]
