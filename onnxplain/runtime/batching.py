"""How many rows to run at once: large batches run in chunks sized by a memory budget, so
explaining thousands of images does not hold all their activations at once (ResNet-18 at
224x224 keeps ~70 MB a row for saliency)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

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
                 factor: float = PROGRAM_FACTOR) -> int:
    """Rows whose gradient program (factor 1: forward run) fits the budget; at least one."""
    per_row = factor * forward_bytes_per_row(model, feeds)
    if per_row <= 0:
        return 1 << 30
    return max(1, int(budget_mb * 2**20 // per_row))
