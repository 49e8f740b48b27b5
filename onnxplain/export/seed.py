"""An output seed baked into an explainer: weights w on the explained output replace the
class target, the explained score of each row being sum(w * output), as
Explainer.explain(..., output_seed=w) computes it.

The weights become the default of an optional float input `output_seed` (one row, shaped
like a row of the output, broadcast over the rows), so a caller may also feed other
weights, one row for all or one per row; with target_input "required" it is a plain input.
Outputs that are not class scores export this way too; sequence outputs and maps have their
dense objective (objective: the class at every position, one position, a pixel or a box)
computed in the graph by autodiff.seed.dense_weights, with the `target` input naming the
class.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..graph.model import Model

# The input (ExplainerGraph._declare_seed); without a baked default (export.graph.FED),
# in-process runs feed one row of weights per row, on outputs of any shape.
OUTPUT_SEED = "output_seed"


def seed_row(model: Model, output: str, seed) -> np.ndarray:
    """`seed` as one row [1, ...] of weights in the output's type, checked against its
    declared shape: one row for every row of the batch (with or without the batch axis)."""
    spec = model.output(output)
    values = np.asarray(seed)
    if values.dtype.kind not in "fiu" or not spec.is_float:
        raise InputError(f"an output seed weights a float output with numbers; got "
                         f"{values.dtype} for output {spec.describe()}")
    dims = spec.dims
    if dims is None or not all(isinstance(d, int) for d in dims[1:]):
        raise InputError(f"output {spec.describe()} has no static shape after the batch "
                         "axis; an exported output seed needs one")
    row = tuple(dims[1:])
    if values.shape == row:
        values = values[None]
    if values.shape != (1, *row):
        raise InputError(f"an exported output seed is one row of weights shaped {list(row)} "
                         f"(or [1, {', '.join(map(str, row))}]), applied to every row; got "
                         f"shape {list(values.shape)}")
    return np.ascontiguousarray(values, dtype=spec.numpy_dtype)
