"""Standard ops of opsets 23 to 28 as the older standard ops they stand for.

- `Swish` (24) and `SwiGLU` (28): their onnx function bodies, expanded in place
  (ONNX Runtime 1.31 has no Swish kernel past opset 24 and no SwiGLU at all):
  Swish(x) = x · Sigmoid(alpha · x), SwiGLU(a, b) = Swish(a) · b.
- `RotaryEmbedding` (23): ONNX Runtime's kernel wants cos/sin caches shaped exactly
  [batch, seq, rotary_dim / 2], which the torch exporter writes with batch 1; the rotation
  in Mul/Add (ms_rotary.rotate, shared with com.microsoft::RotaryEmbedding) broadcasts.
- `TensorScatter` (24): a ScatterElements writing `update` at write_indices[b] + s (modulo
  the cache length in circular mode) along the sequence axis.

Each follows the op's doc string and onnx's reference implementation
(onnx/reference/ops/op_rotary_embedding.py, op_tensor_scatter.py); tests compare the rewritten
graph with ONNX Runtime's kernel (tests/test_newest_opsets.py).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...errors import ModelError
from . import Rewrite, decomposes
from .ms_common import rank_of
from .ms_rotary import cos_sin, rotate


# ---- ops defined by a function body -----------------------------------------------------
@decomposes("", "Swish")
@decomposes("", "SwiGLU")
def expand_function_body(r: Rewrite) -> list[onnx.NodeProto]:
    """The node replaced by its schema's function body: formal inputs and outputs renamed to
    the node's, attribute references resolved to the node's values or the defaults."""
    node = r.node
    schema = onnx.defs.get_schema(node.op_type, r.opset, node.domain)
    if not schema.has_function:
        raise r.refuse(f"opset {r.opset} defines no function body for it")
    body = schema.function_body
    names = dict(zip(body.input, node.input, strict=False))
    names.update(zip(body.output, node.output, strict=False))
    values = {name: a.default_value for name, a in schema.attributes.items()
              if a.default_value.name}
    values.update({a.name: a for a in node.attribute})
    for inner in body.node:
        expanded = onnx.NodeProto()
        expanded.CopyFrom(inner)
        expanded.name = r.fresh(inner.op_type)
        _rename(expanded.input, names, r)
        _rename(expanded.output, names, r)
        attributes = [_resolve(a, values) for a in inner.attribute]
        del expanded.attribute[:]
        expanded.attribute.extend(a for a in attributes if a is not None)
        r.nodes.append(expanded)
    return r.nodes


def _rename(values, names: dict[str, str], r: Rewrite) -> None:
    for k, name in enumerate(values):
        if name:
            values[k] = names.setdefault(name, r.fresh(name))


def _resolve(attribute: onnx.AttributeProto,
             values: dict[str, onnx.AttributeProto]) -> onnx.AttributeProto | None:
    if not attribute.ref_attr_name:
        return attribute
    given = values.get(attribute.ref_attr_name)
    if given is None:
        return None  # an optional attribute the node leaves unset
    resolved = onnx.AttributeProto()
    resolved.CopyFrom(given)
    resolved.name = attribute.name
    return resolved


# ---- RotaryEmbedding --------------------------------------------------------------------
@decomposes("", "RotaryEmbedding")
def rotary_embedding(r: Rewrite) -> list[onnx.NodeProto]:
    """X is [batch, heads, seq, head_size], or [batch, seq, heads · head_size] with the
    num_heads attribute; cos/sin caches [batch, seq, rotary_dim / 2], or [max_pos,
    rotary_dim / 2] indexed by position_ids [batch, seq]. The first rotary_dim channels of
    each head (all when rotary_embedding_dim is 0) are rotated pairwise, the rest pass."""
    x, cos, sin = r.node.input[:3]
    positions = r.node.input[3] if len(r.node.input) > 3 else ""
    rank, heads = rank_of(r, x), int(r.attr("num_heads", 0))
    if rank not in (3, 4):
        raise r.refuse(f"input '{x}' has rank {rank}; the op takes 3-D or 4-D inputs")
    if rank == 3 and not heads:
        raise r.refuse("a 3-D input needs the num_heads attribute")
    if positions:
        cos, sin = cos_sin(r, cos, sin, positions)
    # [batch, seq, half] against [batch, heads, seq, ...] or [batch, seq, heads, ...].
    head_axis = r.const(np.array([1 if rank == 4 else 2], np.int64), "head_axis")
    cos, sin = r.op("Unsqueeze", cos, head_axis), r.op("Unsqueeze", sin, head_axis)
    x4 = x if rank == 4 else r.op("Reshape", x, r.const(np.array([0, 0, heads, -1], np.int64)))
    # rotate() takes the rotary dim from the caches' last axis (rotary_dim / 2, as the
    # spec requires of them).
    interleaved = bool(r.attr("interleaved", 0))
    if rank == 4:
        rotate(r, x4, cos, sin, interleaved, out=r.node.output[0])
    else:
        y = rotate(r, x4, cos, sin, interleaved)
        r.op("Reshape", y, r.op("Shape", x), out=r.node.output[0])
    return r.nodes


# ---- TensorScatter ----------------------------------------------------------------------
@decomposes("", "TensorScatter")
def tensor_scatter(r: Rewrite) -> list[onnx.NodeProto]:
    """present = past with update[.., s, ..] written at index write_indices[b] + s of the
    sequence axis (modulo its length when mode is 'circular'); write_indices default 0."""
    past, update = r.node.input[:2]
    written = r.node.input[2] if len(r.node.input) > 2 else ""
    rank = rank_of(r, past)
    if rank is None:
        raise r.refuse(f"the rank of past_cache '{past}' is unknown")
    axis = int(r.attr("axis", -2)) % rank
    if axis == 0:
        raise r.refuse("axis 0 is the batch axis, not a sequence axis")
    along = [1] * rank
    along[axis] = -1
    length = r.op("Squeeze", r.op("Shape", update, start=axis, end=axis + 1))
    steps = r.op("Range", r.const(np.array(0, np.int64)), length, r.const(np.array(1, np.int64)))
    index = r.op("Reshape", steps, r.const(np.array(along, np.int64), "along"))
    if written:
        per_batch = r.op("Reshape", r.op("Cast", written, to=onnx.TensorProto.INT64),
                         r.const(np.array([-1] + [1] * (rank - 1), np.int64), "per_batch"))
        index = r.op("Add", index, per_batch)
    mode = r.attr("mode", b"linear")
    if (mode.decode() if isinstance(mode, bytes) else mode) == "circular":
        index = r.op("Mod", index, r.op("Shape", past, start=axis, end=axis + 1))
    index = r.op("Expand", index, r.op("Shape", update))
    r.op("ScatterElements", past, index, update, axis=axis, out=r.node.output[0])
    return r.nodes


__all__ = ["expand_function_body", "lower_to_runtime_opset"]


# ---- opsets past ONNX Runtime's ---------------------------------------------------------
# ONNX Runtime 1.31 loads ai.onnx opsets up to 26 ("opset 27 is under development").
NEWEST_RUNTIME_OPSET = 26


def lower_to_runtime_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model stamped with a newer ai.onnx opset than ONNX Runtime loads, whose every op has
    the same version at NEWEST_RUNTIME_OPSET (no semantic change in between), restamped with
    that opset (in place); raises ModelError naming the ops that changed since."""
    entry = next(e for e in model.opset_import if e.domain in ("", "ai.onnx"))
    if entry.version <= NEWEST_RUNTIME_OPSET:
        return model
    newer = sorted({f"{node.op_type} (opset {since})" for node in _all_nodes(model.graph)
                    if node.domain in ("", "ai.onnx")
                    and (since := _since(node.op_type, entry.version)) > NEWEST_RUNTIME_OPSET})
    if newer:
        raise ModelError(f"the model uses ai.onnx opset {entry.version}; ONNX Runtime runs "
                         f"opsets up to {NEWEST_RUNTIME_OPSET} and these ops changed or appeared "
                         f"since: {', '.join(newer)}")
    entry.version = NEWEST_RUNTIME_OPSET
    return model


def _since(op_type: str, opset: int) -> int:
    try:
        return onnx.defs.get_schema(op_type, opset).since_version
    except onnx.defs.SchemaError:
        return 0  # unknown ops are the checker's and ONNX Runtime's to report


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _all_nodes(sub)
