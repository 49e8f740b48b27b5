"""Check user inputs and targets against what the model declares, with messages that say so."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import InputError, InputWarning
from .graph.model import Model, TensorSpec

Inputs = np.ndarray | Mapping[str, np.ndarray]


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
    feeds = {spec.name: _check_one(spec, given[spec.name]) for spec in specs}
    _check_batch(feeds)
    return feeds


def _check_one(spec: TensorSpec, value) -> np.ndarray:
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
            if axis == 0 and isinstance(want_dim, int):
                continue  # fixed batch axes are handled by running in chunks
            if isinstance(want_dim, int) and want_dim != got:
                raise InputError(f"input '{spec.name}' expects size {want_dim} on axis {axis} "
                                 f"{spec.describe()}, got shape {tuple(array.shape)}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        warnings.warn(f"input '{spec.name}' contains {bad} NaN or Inf values; attributions "
                      "will not be meaningful", InputWarning, stacklevel=4)
    return np.ascontiguousarray(array)


def _check_batch(feeds: dict[str, np.ndarray]) -> None:
    sizes = {name: value.shape[0] for name, value in feeds.items() if value.ndim}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{name}: {size}" for name, size in sizes.items())
        raise InputError(f"inputs disagree on the batch size (axis 0): {listing}")


def batch_size(feeds: Mapping[str, np.ndarray]) -> int:
    for value in feeds.values():
        if value.ndim:
            return int(value.shape[0])
    return 1


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
