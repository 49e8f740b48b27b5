"""Layers for layer methods: the default Grad-CAM layer and name lookup."""

from __future__ import annotations

import onnx

from ..errors import InputError
from .model import Model
from .op_kinds import ACTIVATIONS, ARITHMETIC, BATCH_NORMS, CONV

# Ops after which a tensor still belongs to the conv block that produced it: arithmetic for a
# residual Add and a gate's Mul (SiLU is x * sigmoid(x)).
_CONV_BLOCK = CONV | BATCH_NORMS | ACTIVATIONS | ARITHMETIC


def resolve_layer(model: Model, layer: str | None) -> str:
    """The tensor a layer method reads: a tensor name, a node name (its first output), or by
    default the last spatial conv-block output."""
    if layer is None:
        found = conv_candidates(model, limit=1)
        if not found:
            raise InputError("no spatial conv layer found for a default layer; name one with "
                             "layer=TENSOR (see `onnxplain inspect`)")
        return found[0]["tensor"]
    return tensor_of(model, layer)


def spatial_layer(model: Model, layer: str | None) -> str:
    """The layer tensor, checked to be [batch, channels, height, width]."""
    tensor = resolve_layer(model, layer)
    info = model.infos.get(tensor)
    if info is None or info.rank != 4:
        rank = None if info is None else info.rank
        raise InputError(f"layer '{tensor}' has rank {rank} and is not a [batch, channels, "
                         "height, width] tensor, which this method needs")
    return tensor


def pre_and_post(model: Model, tensor: str) -> tuple[str, str | None]:
    """(pre-activation, post-activation) around `tensor`: it is either the output of an
    activation (then its input is the pre-activation) or the input of one."""
    producer = model.node_by_output.get(tensor)
    if producer is not None and producer.op_type in ACTIVATIONS:
        return producer.input[0], tensor
    users = [n for n in model.consumers.get(tensor, []) if n.op_type in ACTIVATIONS]
    return tensor, (users[0].output[0] if len(users) == 1 else None)


def tensor_of(model: Model, name: str) -> str:
    """A computed tensor by its name, or the first output of the node of that name."""
    if name in model.node_by_output:
        return name
    for node in model.proto.graph.node:
        if node.name == name and node.output:
            return node.output[0]
    raise InputError(f"no tensor or node named '{name}' in the model")


def conv_candidates(model: Model, limit: int = 3) -> list[dict]:
    """The last spatial conv-block outputs, newest first: the default Grad-CAM layer leads."""
    found = []
    for node in reversed(model.proto.graph.node):
        if node.op_type not in _CONV_BLOCK or not node.output:
            continue
        info = model.infos.get(node.output[0])
        if info is None or info.rank != 4 or not _has_conv_upstream(model, node):
            continue
        height, width = info.shape[2], info.shape[3]
        if isinstance(height, int) and isinstance(width, int) and height * width <= 1:
            continue
        found.append({"tensor": node.output[0], "node": node.name, "op_type": node.op_type,
                      "shape": ["?" if d is None else d for d in info.shape]})
        if len(found) == limit:
            break
    return found


def _has_conv_upstream(model: Model, node: onnx.NodeProto, depth: int = 8) -> bool:
    frontier = [node]
    for _ in range(depth):
        if any(n.op_type == "Conv" for n in frontier):
            return True
        frontier = [model.node_by_output[i] for n in frontier for i in n.input
                    if i in model.node_by_output]
        if not frontier:
            return False
    return False
