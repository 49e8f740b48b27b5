"""Small ONNX models written inline, for tests that need no torch."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp(classes: int = 4, features: int = 6, batch="batch", opset: int = 17) -> onnx.ModelProto:
    """x [batch, features] -> Gemm -> Relu -> Gemm -> logits [batch, classes]."""
    rng = np.random.default_rng(7)
    w1 = numpy_helper.from_array(rng.standard_normal((features, 8)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, classes)).astype(np.float32), "w2")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="dense1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w2"], ["logits"], name="dense2")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [w1, b1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mlp_reference(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits and the Jacobian d logits / d x ([batch, classes, features]) in float64."""
    weights = {init.name: numpy_helper.to_array(init).astype(np.float64)
               for init in model.graph.initializer}
    h = x.astype(np.float64) @ weights["w1"] + weights["b1"]
    logits = np.maximum(h, 0) @ weights["w2"]
    active = (h > 0).astype(np.float64)
    jacobian = np.einsum("fh,nh,hc->ncf", weights["w1"], active, weights["w2"])
    return logits, jacobian


def with_unsupported_ops(opset: int = 17) -> onnx.ModelProto:
    """An MLP whose path goes through ops without backward rules (Det twice, Acosh once)."""
    model = mlp(opset=opset)
    graph = model.graph
    for node in graph.node:
        if node.name == "relu":
            node.output[0] = "relu_out"
    shape = numpy_helper.from_array(np.array([-1, 2, 2, 2], dtype=np.int64), "square")
    graph.initializer.append(shape)
    graph.node.extend([
        helper.make_node("Reshape", ["relu_out", "square"], ["m"], name="to_square"),
        helper.make_node("Det", ["m"], ["d"], name="det_a"),
        helper.make_node("Det", ["m"], ["d2"], name="det_b"),
        helper.make_node("Add", ["d", "d2"], ["dd"], name="sum_dets"),
        helper.make_node("Acosh", ["dd"], ["e"], name="acosh"),
        helper.make_node("Concat", ["e", "e", "e", "e"], ["e4"], name="widen", axis=1),
        helper.make_node("Add", ["relu_out", "e4"], ["a"], name="mix"),
    ])
    # Keep the topological order: the dense2 MatMul reads `a`, so move it to the end.
    dense2 = next(n for n in graph.node if n.name == "dense2")
    graph.node.remove(dense2)
    graph.node.append(dense2)
    return model


def saved(folder, model: onnx.ModelProto, name: str) -> str:
    """`model` written to `folder`/`name`.onnx; the path."""
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return str(path)
