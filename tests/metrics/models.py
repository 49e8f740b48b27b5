"""Tiny ONNX models whose perturbation curves can be written down by hand."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def linear(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """x [batch, F] -> x @ weights + bias: logits [batch, C]."""
    f, c = weights.shape
    inits = [numpy_helper.from_array(weights.astype(np.float32), "w"),
             numpy_helper.from_array(bias.astype(np.float32), "b")]
    return _model([helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="dense")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", f])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c])],
                  inits)


def linear_image(weights: np.ndarray, channels: int = 1, layout: str = "NCHW"
                 ) -> onnx.ModelProto:
    """image [batch, channels, H, W] (or [batch, H, W, channels] for "NHWC") -> flatten ->
    @ weights [channels*H*W, C]: logits [batch, C], weights in the layout's element order."""
    elements, c = weights.shape
    side = int(round(np.sqrt(elements // channels)))
    dims = ["batch", channels, side, side] if layout == "NCHW" else ["batch", side, side,
                                                                       channels]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "w")]
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten", axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["logits"], name="dense")]
    return _model(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c])],
                  inits)


def token_sum(vocabulary: int = 8) -> onnx.ModelProto:
    """ids [batch, S] -> embedding e[id] = id (one dim) -> sum over tokens -> logits
    [batch, 2] = (sum, -sum): class 0 scores the sum of the ids."""
    table = np.arange(vocabulary, dtype=np.float32)[:, None]
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(np.array([[1.0, -1.0]], np.float32), "head"),
             numpy_helper.from_array(np.array([1], np.int64), "axis")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
             helper.make_node("ReduceSum", ["embedded", "axis"], ["pooled"], name="pool",
                              keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"], name="head")]
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64,
                                                        ["batch", "tokens"])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                  inits)


def matmul_add_relu() -> onnx.ModelProto:
    """x [batch, 3] -> MatMul w1 + b1 -> Relu -> MatMul w2: a torch Linear exported as
    MatMul + Add, for layer discovery."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 5)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((5, 2)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
             helper.make_node("Relu", ["hb"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w2"], ["logits"], name="second")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                  inits)
