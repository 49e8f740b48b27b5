"""What `onnxplain inspect` reports: IO, opsets, ops, gaps in backward rules, candidate layers."""

from __future__ import annotations

import json
from collections import Counter

import onnx

from .autodiff import GRADIENT, RuleSet, differentiated_region, missing_rules
from .errors import ModelError
from .graph.attention import find_attention, token_layout_of
from .graph.builder import GraphBuilder
from .graph.layers import conv_candidates
from .graph.model import Model, TensorSpec
from .graph.shape_fold import unknown_ranks
from .graph.sources import find_sources
from .graph.stem import affine_stem


def describe_model(model: Model, rules: RuleSet = GRADIENT) -> dict:
    """A JSON-ready description of the model for humans and scripts."""
    proto = model.proto
    sources, unattributed = find_sources(model)
    return {
        "path": model.path,
        "ir_version": model.file_ir_version,
        "producer": " ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        "opsets": {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import},
        "inputs": [_spec(spec) for spec in model.inputs],
        "outputs": [_spec(spec) for spec in model.outputs],
        "batch_axis": {"symbolic": model.batch.symbolic, "fixed_size": model.batch.size,
                       "per_input": {spec.name: _first_dim(spec) for spec in model.inputs}},
        "node_count": len(proto.graph.node),
        "op_histogram": dict(Counter(_op_name(node) for node in proto.graph.node)
                             .most_common()),
        "attribution_sources": [source.describe() for source in sources],
        "affine_stems": _stems(model),
        "unattributed_inputs": unattributed,
        "ops_without_backward_rule": _missing(model, rules, sources),
        "rank_unknown_statically": _unknown_ranks(model),
        "candidate_layers": {"conv": conv_candidates(model)},
        **_attention(model),
        "onnxplain": _onnxplain_metadata(proto),
    }


def _stems(model: Model) -> dict:
    """Per float input, the affine ops it meets first and the tensor where they end: where
    Integrated Gradients walks its path (graph.stem)."""
    found = {}
    for spec in model.inputs:
        stem = affine_stem(model, spec.name) if spec.is_float else None
        if stem is not None:
            ops = [node.op_type for node in stem.prefix.proto.graph.node
                   if set(node.output) <= stem.region]
            found[spec.name] = {"ops": ops, "end": stem.frontier}
    return found


def _unknown_ranks(model: Model) -> list[dict]:
    """Nodes whose float results static shape inference could not give a rank (shapes
    computed at run time, as paddle2onnx writes them): gradient programs for them are built
    per feed shape, with those computations folded (graph.shape_fold)."""
    return [{"node": node.name or node.output[0], "op": _op_name(node),
             "note": "rank known only at run time"} for node in unknown_ranks(model)]


def _onnxplain_metadata(proto) -> dict:
    """What onnxplain wrote into the model: an exported explainer's method and added tensors,
    a local head's layer and epsilon (its per-center tables left out)."""
    found = {}
    for prop in proto.metadata_props:
        if not prop.key.startswith("onnxplain."):
            continue
        key = prop.key.removeprefix("onnxplain.")
        try:
            value = json.loads(prop.value)
        except ValueError:
            value = prop.value
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("sources", "labels")}
        found[key] = value
    return found


def _attention(model: Model) -> dict:
    """The attention layers the transformer methods would read, or why there are none."""
    try:
        layers = find_attention(model)
    except ModelError as err:
        return {"attention_layers": [], "attention_tokens": None,
                "attention_problem": str(err)}
    return {"attention_layers": [layer.as_dict() for layer in layers],
            "attention_tokens": token_layout_of(model, layers), "attention_problem": None}


def _spec(spec: TensorSpec) -> dict:
    dims = None if spec.dims is None else ["?" if d is None else d for d in spec.dims]
    dtype = spec.numpy_dtype.name if spec.info.dtype else None
    return {"name": spec.name, "dtype": dtype, "shape": dims}


def _first_dim(spec: TensorSpec):
    if not spec.dims:
        return None
    return "?" if spec.dims[0] is None else spec.dims[0]


def _op_name(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def _missing(model: Model, rules: RuleSet, sources) -> list[dict]:
    """Every node that would block a gradient, marking those on the default explained path."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    b = GraphBuilder(proto, model.infos)
    wrt = [source.tensor for source in sources]
    outputs = [spec.name for spec in model.outputs]
    # Whole graph: every node reading a float tensor that depends on any input.
    floats = [name for name, info in model.infos.items() if info.is_float]
    everywhere, active = differentiated_region(b, wrt + floats, outputs)
    # A node on the path blocks it only if its rule fails for the path's own gradients (an
    # LSTM's rule refuses weight gradients, which the whole-graph pass asks for).
    on_path, path_active = differentiated_region(b, wrt, outputs[:1])
    blocking = {item.node for item in missing_rules(b, on_path, rules, path_active)}
    found = missing_rules(b, everywhere, rules, active)
    return [dict(item.as_dict(), on_default_path=item.node in blocking) for item in found]
