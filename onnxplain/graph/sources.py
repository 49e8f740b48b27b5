"""Where each model input is attributed: float inputs themselves, token ids at their embedding."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from ..errors import InputError
from .model import Model
from .op_kinds import CASTS, IDENTITY, RESHAPES
from .walk import produced_from

# Ops that carry token ids unchanged (up to shape) from the graph input to the embedding lookup.
_ID_PASSTHROUGH = CASTS | IDENTITY | RESHAPES


@dataclass(frozen=True)
class Source:
    """Attributions for `input` are taken at `tensor`; `per_token` sums the trailing axes."""

    input: str
    tensor: str
    per_token: bool = False

    def describe(self) -> str:
        if self.per_token:
            return f"{self.input}: at its embedding '{self.tensor}', summed per token"
        return f"{self.input}: at the input itself"


def find_sources(model: Model, overrides: Mapping[str, str] | None = None
                 ) -> tuple[list[Source], dict[str, str]]:
    """Attribution sources for every input, and the reason for each input that has none.

    `overrides` maps an input name to the float tensor where its attribution is taken
    instead (for token ids: any tensor shaped [ids..., features]).
    """
    overrides = dict(overrides or {})
    names = {spec.name for spec in model.inputs}
    for name, tensor in overrides.items():
        if name not in names:
            raise InputError(f"cannot attribute unknown input '{name}' (inputs: "
                             f"{', '.join(sorted(names))})")
        info = model.infos.get(tensor)
        if info is None or not any(tensor in node.output for node in model.proto.graph.node):
            raise InputError(f"no tensor named '{tensor}' is computed in the model")
        if not info.is_float:
            raise InputError(f"tensor '{tensor}' is not a float tensor; attributions need one")
    sources, skipped = [], {}
    for spec in model.inputs:
        if spec.name in overrides:
            sources.append(Source(spec.name, overrides[spec.name], per_token=not spec.is_float))
            continue
        if spec.is_float:
            sources.append(Source(spec.name, spec.name))
            continue
        embedding = _embedding_of(model, spec.name)
        if embedding is None:
            skipped[spec.name] = ("integer input without an embedding lookup (Gather) "
                                  "reading it; not attributed")
        else:
            sources.append(Source(spec.name, embedding, per_token=True))
    return sources, skipped


def _embedding_of(model: Model, ids: str) -> str | None:
    """The output of the first Gather that looks up float rows with these ids."""
    found = _lookup_of(model, ids)
    return None if found is None else found[1]


def embedding_rows(model: Model, ids: str) -> int | None:
    """How many rows the embedding table these ids look up has (the vocabulary), if static."""
    found = _lookup_of(model, ids)
    info = None if found is None else model.infos.get(found[0].input[0])
    rows = None if info is None or not info.shape else info.shape[0]
    return rows if isinstance(rows, int) else None


def embedding_lookup(model: Model, rows: str) -> tuple[str, str] | None:
    """(ids input, table) when `rows` is a Gather of a weight table by ids read from a model
    input (through the ops that carry ids unchanged, as _lookup_of follows them forward:
    casts, aliases, reshapes): rows that map back to tokens, by the nearest table row;
    else None."""
    node = model.node_by_output.get(rows)
    tables = {init.name for init in model.proto.graph.initializer}
    if node is None or node.op_type != "Gather" or node.input[0] not in tables:
        return None
    ids = produced_from(model.node_by_output, node.input[1], _ID_PASSTHROUGH)
    return (ids, node.input[0]) if ids in {spec.name for spec in model.inputs} else None


def _lookup_of(model: Model, ids: str) -> tuple[onnx.NodeProto, str] | None:
    """The first Gather that looks up float rows (or int8 rows then dequantized) with these
    ids, and the float rows it gives."""
    frontier, seen = [ids], {ids}
    while frontier:
        name = frontier.pop(0)
        for node in model.consumers.get(name, []):
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
                data = model.infos.get(node.input[0])
                if data is not None and data.is_float:
                    return node, node.output[0]
                rows = _dequantized(model, node.output[0])
                if rows is not None:
                    return node, rows
            if node.op_type in _ID_PASSTHROUGH and node.input[0] == name:
                out = node.output[0]
                if out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return None


def _dequantized(model: Model, rows: str) -> str | None:
    """The float rows a quantized embedding table's lookup is dequantized into, if any
    (ONNX Runtime's dynamic quantization stores the table as int8 and looks it up first)."""
    readers = model.consumers.get(rows, [])
    if len(readers) == 1 and readers[0].op_type == "DequantizeLinear":
        return readers[0].output[0]
    return None
