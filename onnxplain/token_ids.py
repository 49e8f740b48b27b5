"""Token ids checked against the embedding tables they index: an id past a table's rows
is refused in one line naming the input, where ONNX Runtime would fail the run in its own
words ("indices element out of data bounds")."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import InputError
from .graph.model import Model
from .graph.walk import produced_from


def check_token_ids(model: Model, feeds: Mapping[str, np.ndarray]) -> None:
    """Every integer input that indexes a constant table (Gather on axis 0, through Casts)
    holds ids the table has: -rows .. rows - 1, as ONNX's Gather takes them."""
    for name, table, rows in _lookups(model):
        value = feeds.get(name)
        if value is None or not value.size or value.dtype.kind not in "iu":
            continue
        bad = np.flatnonzero((value < -rows) | (value >= rows))
        if len(bad):
            where = tuple(int(i) for i in np.unravel_index(bad[0], value.shape))
            raise InputError(f"input '{name}' holds {int(value.flat[bad[0]])} at {list(where)}, "
                             f"past the {rows} rows of the table '{table}' it indexes "
                             f"(ids 0 .. {rows - 1})")


def _lookups(model: Model) -> list[tuple[str, str, int]]:
    """(input, table, rows) for each Gather on axis 0 of a constant table of static rows
    whose indices are a graph input (through Casts and Identities); once per model."""
    if "token_lookups" not in model.derived:
        inputs = {spec.name for spec in model.inputs}
        found = []
        for node in model.proto.graph.node:
            if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or \
                    any(a.name == "axis" and a.i != 0 for a in node.attribute):
                continue
            source = produced_from(model.node_by_output, node.input[1])
            if source not in inputs or node.input[0] not in model.constants:
                continue  # checked first: model.infos runs shape inference
            info = model.infos.get(node.input[0])
            rows = None if info is None or not info.shape else info.shape[0]
            if isinstance(rows, int):
                found.append((source, node.input[0], rows))
        model.derived["token_lookups"] = found
    return model.derived["token_lookups"]
