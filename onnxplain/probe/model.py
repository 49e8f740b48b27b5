"""The written probe: one ONNX model holding the original model, every fitted decoder, the
model's prediction on each reconstruction and, for token models, the nearest token ids.

Outputs added per probed layer k (0, 1, ... in the order the layers were fitted), beside the
original outputs, which are computed exactly as before:
    probe/<k>/reconstruction  [N, *target]   the decoder's reconstruction of the target
    probe/<k>/error           [N, *target]   (reconstruction - target)^2, per element
    probe/<k>/prediction      like the output  the model's explained output computed on the
                                             reconstruction (a second copy of the graph from
                                             the target on, sharing its weights)
    probe/<k>/tokens          [N, T] int64     token models: the id of the embedding row
                                             nearest each reconstructed position
Metadata key `onnxplain.probe` (JSON) records the layers, decoder kinds, the output names,
the fit's info and a fingerprint of the original model (`load_probe` reads it back).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto

from .._version import __version__
from ..errors import InputError, ModelError
from ..graph.builder import GraphBuilder
from ..graph.layer_copy import layer_copy
from ..graph.load import read_model, set_runtime_ir_version
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..graph.sources import embedding_lookup
from ..graph.walk import ancestors, node_inputs
from ..graph.weights import standalone
from ..local.layers import declare_output
from ..runtime.engine import pick_output
from ..viz.report_files import jsonable
from .decoders import Decoder, emit_decoder, per_position

if TYPE_CHECKING:
    from .fit import FittedProbe

METADATA_KEY = "onnxplain.probe"
PREFIX = "probe/"
OUTPUTS = ("reconstruction", "error", "prediction", "tokens")
NO_BETTER = "no better than the mean input"  # a fit of relative error >= 1


@dataclass
class ProbeLayer:
    """One probed layer of a probe file, as its metadata records it."""

    index: int
    layer: str
    target: str
    kind: str
    outputs: dict[str, str]  # "reconstruction", "error", "prediction" (+ "tokens") -> name
    token_input: str | None = None  # token models: the ids input the target looks up
    embedding: str | None = None  # token models: the embedding table (an initializer)
    layer_shape: tuple[int, ...] | None = None  # one row's activations, as fitted
    target_shape: tuple[int, ...] | None = None  # one row's reconstruction, as fitted

    @property
    def fixed_target(self) -> bool:
        """A decoder whose reconstruction has the fitted shape whatever the input: the
        linear one on flattened rows (its weight is [prod(layer), prod(target)]), unlike
        the per-position one (any sequence length) and the conv one (any image size)."""
        return self.kind == "linear" and self.target_shape is not None and \
            self.layer_shape is not None and \
            not per_position(self.layer_shape, self.target_shape)


@dataclass
class Probe:
    """A loaded probe file: the ONNX model, its layers, the explained output of the original
    model and the fingerprint of that model (model_fingerprint)."""

    proto: onnx.ModelProto
    layers: list[ProbeLayer]
    output: str
    fingerprint: str
    info: dict = field(default_factory=dict)
    path: str | None = None


def probe_model(model, fitted: FittedProbe) -> onnx.ModelProto:
    """`model` (a path, bytes, ModelProto or Model) with `fitted`'s decoders attached: one
    model that runs in any ONNX Runtime (see the module docstring for its outputs)."""
    loaded = model if isinstance(model, Model) else Model.load(model)
    if not fitted.decoders:
        raise InputError("the probe has no decoders (no layer was fitted)")
    output = pick_output(loaded, None)
    proto = onnx.ModelProto()
    proto.CopyFrom(standalone(loaded.proto, loaded.weights))
    taken = {o.name for o in proto.graph.output}
    if any(name.startswith(PREFIX) for name in taken):
        raise ModelError("the model already has probe outputs: attach decoders to the "
                         "original model, not to a probe file")
    b = GraphBuilder(proto, loaded.infos, prefix="onnxplain/probe")
    nodes = list(loaded.proto.graph.node)
    layers = [_attach(b, loaded, nodes, output, k, decoder)
              for k, decoder in enumerate(fitted.decoders)]
    meta = {"format": 1, "model_sha256": model_fingerprint(loaded), "output": output,
            "layers": [_layer_json(layer, decoder)
                       for layer, decoder in zip(layers, fitted.decoders, strict=True)],
            "info": jsonable(fitted.info), "onnxplain": __version__}
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        METADATA_KEY: json.dumps(meta)})
    set_runtime_ir_version(proto)
    onnx.checker.check_model(proto)
    return proto


def _attach(b: GraphBuilder, model: Model, nodes: list[onnx.NodeProto], output: str, k: int,
            decoder: Decoder) -> ProbeLayer:
    """Emit layer k's decoder, error, prediction (and nearest tokens); declare them."""
    name = f"{PREFIX}{k}"
    activation = _as_float(b, decoder.layer)
    reconstruction = emit_decoder(b, activation, decoder, f"{name}/decoder")
    target = _as_float(b, decoder.target)
    difference = b.op("Sub", reconstruction, target)
    outputs = {"reconstruction": reconstruction, "error": b.op("Mul", difference, difference)}
    like = b.info(decoder.target).shape or (None, *decoder.target_shape)
    for tensor in outputs.values():  # graph outputs declare a shape
        b.infos[tensor] = TensorInfo(TensorProto.FLOAT, tuple(like))
    # The model's own nodes from the target on, reading the reconstruction instead.
    fed = reconstruction if b.dtype(decoder.target) == TensorProto.FLOAT else \
        b.op("Cast", reconstruction, to=b.dtype(decoder.target))
    between = _between(nodes, decoder.target, output)
    if not any(output in node.output for node in between):
        raise ModelError(f"output '{output}' is not computed from '{decoder.target}'")
    outputs["prediction"] = layer_copy(b, between, model.infos, output, {decoder.target: fed})
    token_input = embedding = None
    if decoder.target not in {spec.name for spec in model.inputs}:
        token_input, embedding = _lookup(model, decoder.target)
        outputs["tokens"] = _nearest_rows(b, reconstruction, embedding)
        b.infos[outputs["tokens"]] = TensorInfo(TensorProto.INT64, tuple(like[:-1]))
    declared = {key: declare_output(b, tensor, f"{name}/{key}")
                for key, tensor in outputs.items()}
    return ProbeLayer(k, decoder.layer, decoder.target, decoder.kind, declared, token_input,
                      embedding)


def _as_float(b: GraphBuilder, tensor: str) -> str:
    """Decoders compute in float32 whatever the model's precision."""
    if b.dtype(tensor) == TensorProto.FLOAT:
        return tensor
    return b.op("Cast", tensor, to=TensorProto.FLOAT)


def _between(nodes: list[onnx.NodeProto], start: str, end: str) -> list[onnx.NodeProto]:
    """The nodes on a path from `start` to `end` (in graph order): the only ones whose
    values change when `start` does; the others' tensors are read as they are."""
    reached, kept = {start}, []
    for node in ancestors(nodes, [end]):
        if any(name in reached for name in node_inputs(node)):
            kept.append(node)
            reached.update(node.output)
    return kept


def _lookup(model: Model, target: str) -> tuple[str, str]:
    """The ids input and the embedding table of a target that is an embedding lookup's
    output (Gather of an initializer, its ids read from a graph input through casts)."""
    found = embedding_lookup(model, target)
    if found is None:
        raise InputError(f"decoder target '{target}' is neither a model input nor an "
                         "embedding lookup's output (a Gather of a weight table by ids read "
                         "from a model input)")
    return found


def _nearest_rows(b: GraphBuilder, rows: str, table: str) -> str:
    """argmin_v |r - E_v|^2 = argmin_v (|E_v|^2 - 2 r.E_v) per position: [N, T] int64."""
    table = _as_float(b, table)
    norms = b.reduce("ReduceSum", b.op("Mul", table, table), [1], keepdims=False)
    dots = b.op("MatMul", rows, b.op("Transpose", table, perm=[1, 0]))
    distances = b.op("Sub", norms, b.op("Mul", dots, b.scalar(2.0, TensorProto.FLOAT)))
    return b.op("ArgMin", distances, axis=-1, keepdims=0)


def _layer_json(layer: ProbeLayer, decoder: Decoder) -> dict:
    return {"index": layer.index, "layer": layer.layer, "target": layer.target,
            "kind": layer.kind, "layer_shape": list(decoder.layer_shape),
            "target_shape": list(decoder.target_shape), "outputs": layer.outputs,
            "token_input": layer.token_input, "embedding": layer.embedding}


def model_fingerprint(model: Model) -> str:
    """sha256 of the normalised graph with its weights: a probe answers for this model only."""
    proto = standalone(model.proto, model.weights)
    digest = hashlib.sha256()
    graph = onnx.GraphProto()
    graph.CopyFrom(proto.graph)
    graph.ClearField("initializer")  # hashed by value below (raw_data or typed fields)
    digest.update(graph.SerializeToString(deterministic=True))
    for init in sorted(proto.graph.initializer, key=lambda t: t.name):
        value = np.ascontiguousarray(onnx.numpy_helper.to_array(init))
        digest.update(f"{init.name}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def load_probe(source) -> Probe:
    """A probe file (path, bytes or ModelProto) with its metadata read back."""
    proto, path = read_model(source)
    found = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if found is None:
        where = path or "the model"
        raise InputError(f"{where} is not a probe file (fit one with 'onnxplain probe fit')")
    try:
        meta = json.loads(found)
        layers = [ProbeLayer(int(e["index"]), e["layer"], e["target"], e["kind"],
                             dict(e["outputs"]), e.get("token_input"), e.get("embedding"),
                             _shape(e.get("layer_shape")), _shape(e.get("target_shape")))
                  for e in meta["layers"]]
        return Probe(proto, layers, meta["output"], meta["model_sha256"], meta.get("info", {}),
                     path)
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"the probe metadata of {path or 'the model'} is damaged: "
                         f"{type(err).__name__}: {err}") from None


def check_probe_of(probe: Probe, model: Model) -> None:
    """InputError unless `probe` was fitted on `model` (same graph and weights)."""
    if probe.fingerprint != model_fingerprint(model):
        named = f"the probe {probe.path}" if probe.path else "the probe"
        raise InputError(f"{named} was fitted on another model (its fingerprint differs): "
                         "fit a probe of this model with 'onnxplain probe fit'")


def _shape(dims) -> tuple[int, ...] | None:
    return None if dims is None else tuple(int(d) for d in dims)


def fit_errors(info: dict, layer: str) -> tuple[dict, str]:
    """The fit's errors of `layer` from a fit's info: on the held-out rows, else (no rows
    held out) on the training rows; and which ("held-out" or "training"). ({}, "") when
    the info has none."""
    entry = info.get("layers", {}).get(layer) or {}
    if entry.get("held_out"):
        return entry["held_out"], "held-out"
    return (entry["train"], "training") if entry.get("train") else ({}, "")


def no_better_than_mean(errors: dict) -> bool:
    """A decoder whose mean squared error is at least the target's variance (relative error
    >= 1) rebuilds no more of the input than its mean does: the layer's number says nothing
    of what it keeps."""
    if "no_better_than_mean" in errors:
        return bool(errors["no_better_than_mean"])
    relative = errors.get("relative_mse")
    return relative is not None and relative >= 1
