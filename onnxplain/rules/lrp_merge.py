"""Canonizer for LRP: a BatchNormalization right after a Conv or Gemm joins that layer.

At inference BatchNormalization is y = a * z + c per channel, with a = scale / sqrt(var + eps)
and c = B - mean * a. LRP rules read a layer's contributions x_j w_jk; with the normalisation
kept apart, the proportional rule at BatchNormalization divides by y while the layer's rule
divides by z, and where the shift c is large against a * z the relevance explodes. Zennit
therefore merges the normalisation into the layer first (its SequentialMergeBatchNorm
canonizer): the layer gets w'_jk = a_k w_jk and b'_k = a_k b_k + c_k, its output is y, and the
BatchNormalization passes relevance unchanged. Here the merge is done by the rules (the model
is not rewritten): the layer's rule multiplies the model's weight tensor by the per-channel
factor in the graph (ONNX Runtime folds it; no merged copy of the weights is stored), the
normalisation's rule is a pass-through.

A pair is merged when the layer's output feeds only the BatchNormalization (in inference
mode), and the weights, bias and statistics are constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..graph.model import Model
from ..graph.shapes import constant_node_value
from ..graph.weights import tensor_value


@dataclass(frozen=True, eq=False)
class Merged:
    """A layer with the BatchNormalization after it folded in: the effective weights are
    tensor `weight` times `factor` (float64, shaped to broadcast against it; Gemm's alpha
    included), `bias` the effective bias (beta included), `output` the normalisation's
    output."""

    bn_node: str
    output: str
    weight: str
    factor: np.ndarray
    bias: np.ndarray

    def key(self) -> str:
        return self.output + self.factor.tobytes().hex()[:32] + self.bias.tobytes().hex()[:32]


class Constants:
    """Values of initializers and Constant outputs of a model, also through Identity nodes."""

    def __init__(self, model: Model):
        self.model = model
        self._initializers = {init.name: init for init in model.proto.graph.initializer}

    def value(self, name: str) -> np.ndarray | None:
        for _ in range(8):
            if name in self._initializers:
                return tensor_value(self._initializers[name])
            node = self.model.node_by_output.get(name)
            if node is None or node.domain not in ("", "ai.onnx"):
                return None
            if node.op_type == "Constant":
                return constant_node_value(node)
            if node.op_type != "Identity":
                return None
            name = node.input[0]
        return None


def merge_batch_norm(model: Model, node: onnx.NodeProto, constants: Constants
                     ) -> Merged | None:
    """The Conv or Gemm `node` merged with the BatchNormalization reading it, or None."""
    bn = _single_batch_norm(model, node.output[0])
    if bn is None or node.domain not in ("", "ai.onnx"):
        return None
    affine = _affine(bn, constants)
    weight = constants.value(node.input[1]) if len(node.input) > 1 else None
    if affine is None or weight is None:
        return None
    a, c = affine
    bias_name = node.input[2] if len(node.input) > 2 else ""
    bias = constants.value(bias_name) if bias_name else np.zeros((), weight.dtype)
    if bias is None:
        return None
    if node.op_type == "Conv":
        factor, base = a.reshape((-1,) + (1,) * (weight.ndim - 1)), bias
    elif node.op_type == "Gemm" and not _attr(node, "transA", 0):
        # Output channels run along B's axis 1, or axis 0 when transB.
        axis = 0 if _attr(node, "transB", 0) else 1
        shape = (-1, 1) if axis == 0 else (1, -1)
        factor = a.reshape(shape) * float(_attr(node, "alpha", 1.0))
        base = bias * float(_attr(node, "beta", 1.0))
    else:
        return None
    merged_bias = a * np.broadcast_to(base, a.shape) + c
    return Merged(bn.name or bn.output[0], bn.output[0], node.input[1], factor,
                  merged_bias.astype(weight.dtype))


def _single_batch_norm(model: Model, tensor: str) -> onnx.NodeProto | None:
    users = model.consumers.get(tensor, [])
    outputs = {o.name for o in model.proto.graph.output}
    if len(users) != 1 or tensor in outputs:
        return None
    bn = users[0]
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
        return None
    if bn.input[0] != tensor or any(bn.output[1:]) or _attr(bn, "training_mode", 0):
        return None
    return bn if _attr(bn, "spatial", 1) else None


def _affine(bn: onnx.NodeProto, constants: Constants
            ) -> tuple[np.ndarray, np.ndarray] | None:
    values = [constants.value(name) for name in bn.input[1:5]]
    if len(values) != 4 or any(v is None for v in values):
        return None
    scale, shift, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in values)
    a = scale / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
    return a, shift - mean * a


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default
