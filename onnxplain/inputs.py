"""Check user inputs and targets against what the model declares, with messages that say so."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import InputError, InputWarning
from .graph.model import Model, TensorSpec
from .graph.op_kinds import RECURRENT
from .graph.shapes import Dim, TensorInfo
from .graph.walk import produced_from
from .token_ids import check_token_ids

Inputs = np.ndarray | Mapping[str, np.ndarray]
# Input name -> the axis its rows lie on, None where it is not per row (see Model.batch);
# names left out have their rows on axis 0.
RowAxes = Mapping[str, int | None]


def prepare_inputs(model: Model, inputs: Inputs) -> dict[str, np.ndarray]:
    """Validated feeds: every model input present, ranks, static dims and dtypes matching.

    A single array is accepted for single-input models. Floats are cast to the model's float
    type and integers to its integer type; a change of kind (uint8 pixels for a float model,
    floats for token ids) is an error, since it usually means missing preprocessing.
    """
    specs = model.inputs
    if isinstance(inputs, Mapping):
        given = dict(inputs)
    else:
        if len(specs) != 1:
            names = ", ".join(spec.describe() for spec in specs)
            raise InputError(f"the model has {len(specs)} inputs ({names}); pass a dict "
                             "of name -> array")
        given = {specs[0].name: inputs}
    expected = {spec.name for spec in specs}
    unknown = [name for name in given if name not in expected]
    if unknown:
        listing = ", ".join(spec.describe() for spec in specs)
        raise InputError(f"unknown input '{unknown[0]}'; the model's inputs are: {listing}")
    missing = [spec for spec in specs if spec.name not in given]
    if missing:
        raise InputError(f"missing input {missing[0].describe()}")
    axes = model.batch.of_inputs
    feeds = {spec.name: _check_one(spec, given[spec.name], axes.get(spec.name, 0))
             for spec in specs}
    _check_batch(feeds, axes)
    _check_lengths(model, feeds)
    check_token_ids(model, feeds)
    return feeds


def _check_one(spec: TensorSpec, value, batch_axis: int | None) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - anything numpy cannot turn into an array
        raise InputError(f"input '{spec.name}' is not array-like: {err}") from None
    if array.dtype == object:
        raise InputError(f"input '{spec.name}' is not a numeric array")
    want = spec.numpy_dtype
    if array.dtype != want:
        if array.dtype.kind != want.kind and not (
                array.dtype.kind in "iu" and want.kind in "iu"):
            raise InputError(f"input '{spec.name}' expects {want.name}, got {array.dtype.name}"
                             f" (expected {spec.describe()})")
        array = array.astype(want)
    dims = spec.dims
    if dims is not None:
        if array.ndim != len(dims):
            hint = " (add a batch axis: x[None])" if array.ndim == len(dims) - 1 else ""
            raise InputError(f"input '{spec.name}' expects rank {len(dims)} "
                             f"{spec.describe()}, got shape {tuple(array.shape)}{hint}")
        for axis, (want_dim, got) in enumerate(zip(dims, array.shape, strict=True)):
            if axis == batch_axis and isinstance(want_dim, int):
                continue  # fixed batch axes are handled by running in chunks
            if isinstance(want_dim, int) and want_dim != got:
                raise InputError(f"input '{spec.name}' expects size {want_dim} on axis {axis} "
                                 f"{spec.describe()}, got shape {tuple(array.shape)}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        warnings.warn(f"input '{spec.name}' contains {bad} NaN or Inf values; attributions "
                      "will not be meaningful", InputWarning, stacklevel=4)
    return np.ascontiguousarray(array)


def _check_batch(feeds: dict[str, np.ndarray], axes: RowAxes) -> None:
    sizes = {name: (value.shape[axis], axis) for name, value in feeds.items()
             if (axis := rows_axis(axes, name, value)) is not None}
    if len({size for size, _ in sizes.values()}) > 1:
        listing = ", ".join(f"{name}: {size} (axis {axis})"
                            for name, (size, axis) in sizes.items())
        raise InputError(f"inputs disagree on the batch size: {listing}")


def _check_lengths(model: Model, feeds: Mapping[str, np.ndarray]) -> None:
    """A recurrent layer's sequence_lens fed from an input (lengths [batch]) holds values in
    0..T, T the sequence length: checked here in one line, where ONNX Runtime would fail
    the run in its own words."""
    for name, dim in sequence_lengths(model):
        length = dim_value(model, feeds, dim)
        value = feeds[name]
        if length is None or not value.size:
            continue
        bad = np.flatnonzero((value < 0) | (value > length))
        if len(bad):
            raise InputError(f"input '{name}' holds {int(value.flat[bad[0]])} at row "
                             f"{int(bad[0])}, outside 0..{length} (the sequence length is "
                             f"{length}: the recurrent layer's sequence_lens)")


def sequence_lengths(model: Model) -> list[tuple[str, Dim]]:
    """(input, sequence dim) for each LSTM/GRU/RNN whose sequence_lens is a graph input
    (through Casts): the dim of its X's sequence axis (layout 0: axis 0, else 1)."""
    if "sequence_lens" not in model.derived:
        inputs = {spec.name for spec in model.inputs}
        found = []
        for node in model.proto.graph.node:
            if node.op_type not in RECURRENT or node.domain not in ("", "ai.onnx") \
                    or len(node.input) < 5 or not node.input[4]:
                continue
            source = produced_from(model.node_by_output, node.input[4])
            if source not in inputs:
                continue  # checked first: model.infos runs shape inference
            shape = model.infos.get(node.input[0], TensorInfo(None, None)).shape
            if shape:
                layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
                found.append((source, shape[1 if layout else 0]))
        model.derived["sequence_lens"] = found
    return model.derived["sequence_lens"]


def dim_value(model: Model, feeds: Mapping[str, np.ndarray], dim: Dim) -> int | None:
    """A dim's size in these feeds: an int as it is, a symbol where an input declares it."""
    if dim is None or isinstance(dim, int):
        return dim
    for spec in model.inputs:
        if spec.dims and dim in spec.dims:
            return int(feeds[spec.name].shape[spec.dims.index(dim)])
    return None


# Methods that take every input's rows where Model.batch places them (a recurrent state
# [2, batch, H], a scalar given once); the others still repeat and slice inputs on axis 0.
# Checked by tests/test_batch_axis.py (batch equals singles, finite differences).
ROWS_ANYWHERE = frozenset({"saliency", "input_x_gradient", "guided_backprop", "deconvnet",
                           "occlusion", "rise"})


def check_rows_layout(model: Model, what: str, allowed: frozenset[str] = ROWS_ANYWHERE
                      ) -> None:
    """Refuse `what` (a method) unless it is `allowed` or every input has its rows on axis 0:
    it would slice another input's rows on the wrong axis."""
    moved = model.batch.axes
    if not moved or what in allowed:
        return
    listing = ", ".join(f"'{name}' " + ("is one value for every row" if axis is None
                                        else f"has its rows on axis {axis}")
                        for name, axis in moved)
    fix = (f"methods that handle this model: {', '.join(sorted(allowed))}" if allowed
           else "explain it in process")
    raise InputError(f"{what} takes every input's rows on axis 0, but {listing}; {fix}")


def rows_axis(axes: RowAxes, name: str, value: np.ndarray) -> int | None:
    """The axis of `value` (input `name`) its rows lie on; None where it is not per row."""
    return None if not value.ndim else axes.get(name, 0)


def batch_size(feeds: Mapping[str, np.ndarray], axes: RowAxes | None = None) -> int:
    for name, value in feeds.items():
        axis = rows_axis(axes or {}, name, value)
        if axis is not None:
            return int(value.shape[axis])
    return 1


def take_rows(feeds: Mapping[str, np.ndarray], axes: RowAxes, rows: slice
              ) -> dict[str, np.ndarray]:
    """Rows `rows` of every input (inputs that are not per row as they are)."""
    out = {}
    for name, value in feeds.items():
        axis = rows_axis(axes, name, value)
        out[name] = value if axis is None else value[(slice(None),) * axis + (rows,)]
    return out


def repeat_row(value: np.ndarray, axis: int | None, row: int, count: int) -> np.ndarray:
    """Row `row` of `value` repeated `count` times along its rows axis."""
    if axis is None:
        return value
    return np.repeat(value[(slice(None),) * axis + (slice(row, row + 1),)], count, axis=axis)


def pad_rows(value: np.ndarray, axis: int | None, size: int) -> np.ndarray:
    """`value` with its last row repeated up to `size` rows."""
    if axis is None or value.shape[axis] >= size:
        return value
    filler = repeat_row(value, axis, value.shape[axis] - 1, size - value.shape[axis])
    return np.concatenate([value, filler], axis=axis)


def join_rows(parts: list[np.ndarray], axis: int | None) -> np.ndarray:
    """Chunks of one tensor joined along its rows axis (not-per-row values: the first)."""
    if len(parts) == 1 or axis is None or parts[0].ndim == 0:
        return parts[0]
    return np.concatenate(parts, axis=axis)


def prepare_target(target, rows: int, classes: int | None) -> np.ndarray:
    """Target class per row as int64; -1 means the predicted class.

    Accepts None, one int for every row, or one int per row.
    """
    if target is None:
        return np.full(rows, -1, dtype=np.int64)
    values = np.asarray(target)
    if values.dtype.kind not in "iu" or values.ndim > 1:
        raise InputError(f"target must be a class index or one index per row, got {target!r}")
    if values.ndim == 0:
        values = np.full(rows, int(values), dtype=np.int64)
    if values.shape[0] != rows:
        raise InputError(f"target has {values.shape[0]} entries for {rows} input rows")
    check_target_range(values, classes)
    return values.astype(np.int64)


def check_target_range(values: Sequence[int] | np.ndarray, classes: int | None) -> None:
    values = np.asarray(values)
    low = int(values.min()) if values.size else 0
    if low < 0:
        raise InputError(f"target {low} is out of range: class indices start at 0")
    if classes is not None and values.size and int(values.max()) >= classes:
        raise InputError(f"target {int(values.max())} is out of range: the output has "
                         f"{classes} classes (0 to {classes - 1})")
