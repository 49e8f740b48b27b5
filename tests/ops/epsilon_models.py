"""Tiny models around one EpsilonSoftmax node, for the op and rule tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from onnxplain.ops import epsilon_softmax as es


def single_node_model(distance: str, *, opset: int = 18, dtype=np.float32, temperature=0.7,
                      epsilon=-2.0, centers_as_input: bool = True, k: int = 7, d: int = 5
                      ) -> onnx.ModelProto:
    """x [N, d] (and centers [k, d] when an input) -> activations [N, k], eps [N]."""
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info("x", tt, ["N", d])]
    if centers_as_input:
        inputs.append(helper.make_tensor_value_info("w", tt, [k, d]))
    node = es.make_node("x", "w", "a", "e", distance=distance, temperature=temperature,
                        epsilon=epsilon)
    graph = helper.make_graph([node], "epsilon_softmax", inputs, [
        helper.make_tensor_value_info("a", tt, ["N", k]),
        helper.make_tensor_value_info("e", tt, ["N"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    es.add_function(model, distance)
    return model


def run(model: onnx.ModelProto, feeds: dict, outputs=None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(outputs, feeds)
