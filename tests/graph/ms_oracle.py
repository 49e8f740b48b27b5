"""Oracle for the `com.microsoft` decompositions (tests/graph/test_canonical_ms_*.py): a model
holding the fused op runs on ONNX Runtime's own kernel, its canonical form (onnxplain's load)
runs on the same feeds, and every output must agree within 1e-5 of its largest magnitude."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxplain.graph.load import load_model

MS = "com.microsoft"
F32 = TensorProto.FLOAT


def fused_model(op_type: str, inputs: list, outputs: list[str], attrs: dict | None = None,
                domain: str = MS, opset: int = 17, shapes: dict | None = None
                ) -> tuple[onnx.ModelProto, dict]:
    """One-node model. `inputs`: per position, None (absent), ('name', array) for a graph
    input fed with that array, or ('name', array, 'const') for an initializer; `outputs` ''
    for an absent one. Output shapes come from the fused kernel, or from `shapes` (name ->
    (shape, dtype)) for an op without a CPU kernel. Returns the model and its feeds."""
    names, graph_inputs, inits, feeds = [], [], [], {}
    for spec in inputs:
        if spec is None:
            names.append("")
            continue
        name, value = spec[0], np.asarray(spec[1])
        names.append(name)
        if len(spec) > 2:
            inits.append(numpy_helper.from_array(value, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
            feeds[name] = value
    node = helper.make_node(op_type, names, outputs, name=f"fused_{op_type}", domain=domain,
                            **(attrs or {}))
    graph = helper.make_graph([node], "fused", graph_inputs,
                              [onnx.ValueInfoProto(name=o) for o in outputs if o],
                              inits)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8
    # The checker wants output shapes: the fused kernel tells them.
    results = [np.zeros(*shapes[o.name]) for o in model.graph.output] if shapes else \
        run(model, feeds)
    for value, result in zip(model.graph.output, results, strict=True):
        value.CopyFrom(helper.make_tensor_value_info(
            value.name, helper.np_dtype_to_tensor_dtype(result.dtype), list(result.shape)))
    return model, feeds


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    canon, _ = load_model(model)
    left = sorted({f"{n.domain}::{n.op_type}" for n in canon.graph.node if n.domain == MS})
    assert not left, f"com.microsoft ops left after canonicalisation: {left}"
    return canon


def assert_matches(model: onnx.ModelProto, feeds: dict, rel: float = 1e-5) -> onnx.ModelProto:
    """The canonical model's outputs equal the fused kernel's; returns the canonical model."""
    canon = canonical(model)
    expected, got = run(model, feeds), run(canon, feeds)
    names = [o.name for o in model.graph.output]
    for name, want, have in zip(names, expected, got, strict=True):
        assert want.shape == have.shape, f"{name}: shape {have.shape} != {want.shape}"
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        np.testing.assert_allclose(have, want, rtol=rel, atol=rel * max(scale, 1e-30),
                                   err_msg=name)
    return canon
