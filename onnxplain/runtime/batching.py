"""How many rows to run at once: large batches run in chunks sized by a memory budget, so
explaining thousands of images does not hold all their activations at once (ResNet-18 at
224x224 keeps ~70 MB a row for saliency). RunPolicy is the one value that decides it."""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..graph.model import Model

# A gradient program keeps the forward activations for the backward pass and adds as many
# gradients again, plus indices and masks: about three times the forward's activations.
PROGRAM_FACTOR = 3
DEFAULT_BUDGET_MB = 512


def forward_bytes_per_row(model: Model, feeds: Mapping[str, np.ndarray]) -> int:
    """Bytes of float activations one row produces in the forward pass.

    Symbolic dims are read off the feeds (a `sequence` axis, say); tensors whose size stays
    unknown are left out, so this is a lower bound.
    """
    sizes: dict[str, int] = {}
    for spec in model.inputs:
        value = feeds.get(spec.name)
        for axis, dim in enumerate(spec.dims or ()):
            if isinstance(dim, str) and value is not None and axis < value.ndim:
                sizes[dim] = int(value.shape[axis])
    known = _ACTIVATION_BYTES.setdefault(model, {})
    key = tuple(sorted(sizes.items()))
    if key not in known:  # every explain call asks; the walk is over every activation
        known[key] = _activation_bytes(model, sizes)
    return known[key]


# model -> {symbolic sizes: bytes per row}
_ACTIVATION_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _activation_bytes(model: Model, sizes: Mapping[str, int]) -> int:
    total = 0
    for dims, itemsize in model.float_activations:
        count = itemsize
        for d in dims:
            size = d if isinstance(d, int) else sizes.get(d)
            if size is None:
                break
            count *= size
        else:
            total += count
    return total


def rows_per_run(model: Model, feeds: Mapping[str, np.ndarray], budget_mb: float,
                 factor: float = PROGRAM_FACTOR, extra: int = 0) -> int:
    """Rows whose gradient program (factor 1: forward run) fits the budget, each holding
    `extra` bytes besides (a perturbed copy and its mask); at least one."""
    per_row = factor * forward_bytes_per_row(model, feeds) + extra
    if per_row <= 0:
        return 1 << 30
    return max(1, int(budget_mb * 2**20 // per_row))


@dataclass(frozen=True)
class RunPolicy:
    """How many rows one run takes, decided in one place and passed explicitly (Explainer
    holds one; explain(batch_size=...) derives one for the call).

    `memory_budget_mb` sizes what is left unset; `batch_size`: rows per run (model runs and
    gradient runs, None: what the budget allows); `rows_per_iteration`: rows one iteration
    of a method's Loop runs (its points over all rows, None: rows_per_run). A Loop program
    reads it as an input (export.loop.ROWS_PER_ITERATION), so another value is another feed,
    not another program.
    """

    memory_budget_mb: float = DEFAULT_BUDGET_MB
    batch_size: int | None = None
    rows_per_iteration: int | None = None

    def __post_init__(self):
        budget = _positive_megabytes(self.memory_budget_mb)
        if budget is None:
            raise InputError(f"memory_budget_mb must be positive: a finite number of "
                             f"megabytes, got {_shown(self.memory_budget_mb)}")
        # A float from here on: numpy integers overflow in rows_per_run's arithmetic.
        object.__setattr__(self, "memory_budget_mb", budget)
        for name in ("batch_size", "rows_per_iteration"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, int | np.integer) or value < 1):
                raise InputError(f"{name} must be a whole number of rows, at least 1 "
                                 f"(or None: as the memory budget allows), got {_shown(value)}")

    def derive(self, batch_size: int | None = None, rows_per_iteration: int | None = None
               ) -> RunPolicy:
        """This policy with the values given set (None, and 0 for rows_per_iteration, the
        internal_batch_size options' "as the budget allows", leave a field as it is)."""
        changes = {name: value for name, value in (("batch_size", batch_size),
                                                   ("rows_per_iteration", rows_per_iteration))
                   if value is not None and not (name == "rows_per_iteration"
                                                 and _is_zero(value))}
        return dataclasses.replace(self, **changes) if changes else self

    def rows_per_run(self, model: Model, feeds: Mapping[str, np.ndarray],
                     factor: float = PROGRAM_FACTOR, extra: int = 0) -> int:
        """Rows one run takes: batch_size, else what fits the budget (factor, extra: see
        rows_per_run)."""
        if self.batch_size is not None:
            return int(self.batch_size)
        return rows_per_run(model, feeds, self.memory_budget_mb, factor, extra)

    def loop_rows(self, model: Model, feeds: Mapping[str, np.ndarray],
                  factor: float = PROGRAM_FACTOR, extra: int = 0) -> int:
        """Rows per Loop iteration: rows_per_iteration, else rows_per_run (an iteration is
        one run over its points: factor 1 for a forward-only Loop)."""
        if self.rows_per_iteration is not None:
            return int(self.rows_per_iteration)
        return self.rows_per_run(model, feeds, factor, extra)


def _positive_megabytes(value) -> float | None:
    """`value` as a finite positive float, else None (an int beyond float's range too)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    try:
        megabytes = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return megabytes if math.isfinite(megabytes) and megabytes > 0 else None


def _shown(value) -> str:
    """A value as a user wrote it: numpy scalars as plain Python numbers, not np.uint8(0)."""
    if isinstance(value, np.integer):
        return str(int(value))
    if isinstance(value, np.floating):
        return str(float(value))
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def _is_zero(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer) and value == 0
