"""Opsets 23 to 28: the loader's range, the rewrites of the newest ops against ONNX Runtime's
kernels (onnx's reference evaluator where ONNX Runtime has none), and a tiny Llama exported
at opset 23 against torch autograd."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import onnxplain
from onnxplain.errors import ModelError
from onnxplain.graph.load import load_model, set_runtime_ir_version

from .conftest import require

RNG = np.random.default_rng(7)


def _single_op(op: str, opset: int, inputs: dict[str, np.ndarray], n_outputs: int = 1,
               **attrs) -> onnx.ModelProto:
    values = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            list(v.shape)) for name, v in inputs.items()]
    outputs = [f"y{k}" for k in range(n_outputs)]
    node = helper.make_node(op, list(inputs), outputs, name="newest", **attrs)
    graph = helper.make_graph([node], "g", values, [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    set_runtime_ir_version(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _caches(batch: int, seq: int, half: int, positions: int = 0):
    angles = RNG.uniform(0, 6, (positions or batch * seq, half)).astype(np.float32)
    if not positions:
        angles = angles.reshape(batch, seq, half)
    return np.cos(angles), np.sin(angles)


def _x(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


cos4, sin4 = _caches(2, 5, 4)
cos_p, sin_p = _caches(2, 5, 3, positions=12)
POSITIONS = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]], np.int64)

# (id, op, opset, inputs, attributes): the rewrite against ONNX Runtime's kernel.
AGAINST_RUNTIME = [
    ("swish", "Swish", 24, {"x": _x(3, 7)}, {"alpha": 1.3}),
    ("rotary-4d", "RotaryEmbedding", 23, {"x": _x(2, 3, 5, 8), "c": cos4, "s": sin4}, {}),
    ("rotary-4d-interleaved", "RotaryEmbedding", 23,
     {"x": _x(2, 3, 5, 8), "c": cos4, "s": sin4}, {"interleaved": 1}),
    ("rotary-3d-partial-positions", "RotaryEmbedding", 23,
     {"x": _x(2, 5, 20), "c": cos_p, "s": sin_p, "p": POSITIONS},
     {"num_heads": 2, "rotary_embedding_dim": 6}),
    ("rotary-4d-interleaved-partial-positions", "RotaryEmbedding", 26,
     {"x": _x(2, 2, 5, 10), "c": cos_p, "s": sin_p, "p": POSITIONS},
     {"interleaved": 1, "rotary_embedding_dim": 6}),
    ("tensor-scatter", "TensorScatter", 24, {"past": _x(2, 3, 6, 4), "update": _x(2, 3, 2, 4)},
     {}),
    ("tensor-scatter-indices", "TensorScatter", 24,
     {"past": _x(2, 6, 4), "update": _x(2, 3, 4), "at": np.array([0, 3], np.int64)},
     {"axis": 1}),
    ("tensor-scatter-circular", "TensorScatter", 26,
     {"past": _x(2, 3, 6, 4), "update": _x(2, 3, 4, 4), "at": np.array([1, 4], np.int64)},
     {"mode": "circular"}),
]


@pytest.mark.parametrize("case", AGAINST_RUNTIME, ids=[c[0] for c in AGAINST_RUNTIME])
def test_rewrite_equals_onnxruntime_kernel(case):
    _, op, opset, feeds, attrs = case
    model = _single_op(op, opset, feeds, **attrs)
    rewritten, _ = load_model(model)
    assert op not in {node.op_type for node in rewritten.graph.node}
    want, got = _run(model, feeds)[0], _run(rewritten, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_swiglu_equals_reference_at_opset_28():
    """ONNX Runtime 1.31 has no SwiGLU (nor loads opset 28): onnx's reference instead; the
    rewritten model is restamped to opset 26, which ONNX Runtime runs."""
    feeds = {"a": _x(3, 8), "b": _x(3, 8)}
    model = _single_op("SwiGLU", 28, feeds, alpha=0.7)
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    rewritten, _ = load_model(model)
    assert rewritten.opset_import[0].version == 26
    np.testing.assert_allclose(_run(rewritten, feeds)[0], want, rtol=1e-5, atol=1e-6)
    a = feeds["a"]
    np.testing.assert_allclose(want, a / (1 + np.exp(-0.7 * a)) * feeds["b"], rtol=1e-5)


@pytest.mark.parametrize("opset", [24, 25, 26, 27, 28])
def test_loader_accepts_newest_opsets_and_explains(opset):
    """Relu and Softmax have one version from 14/13 on; opsets 27 and 28, which ONNX Runtime
    refuses to load, are restamped to 26."""
    x = _x(2, 6)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Softmax", ["h"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    explainer = onnxplain.Explainer(model, "cpu")
    assert explainer.model.opset == min(opset, 26)
    result = explainer.explain(x, target=[1, 2], abs=False)
    h = np.maximum(x, 0)
    y = np.exp(h) / np.exp(h).sum(axis=1, keepdims=True)
    want = np.zeros_like(x)
    for row, k in enumerate([1, 2]):
        want[row] = y[row, k] * ((np.arange(6) == k) - y[row]) * (x[row] > 0)
    np.testing.assert_allclose(result["x"], want, rtol=1e-5, atol=1e-7)


def test_opset_29_is_refused():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 29)])
    with pytest.raises(ModelError, match="opset 29; onnxplain supports opsets 9 to 28"):
        load_model(model)


def test_op_newer_than_the_runtime_is_named():
    feeds = {"q": _x(1, 2, 3, 4), "k": _x(1, 2, 3, 4), "v": _x(1, 2, 3, 4)}
    model = _single_op("LinearAttention", 27, feeds, n_outputs=2, q_num_heads=2,
                       kv_num_heads=2)
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, [None] * 4)
                              for o in ("y0", "y1"))
    with pytest.raises(ModelError, match=r"opsets up to 26 .*LinearAttention \(opset 27\)"):
        load_model(model)


def test_cumprod_explained_end_to_end():
    """CumProd (opset 26, ONNX Runtime's kernel in the forward): d(sum(w·y))/dx by hand."""
    x = _x(2, 5)
    model = _single_op("CumProd", 26, {"x": x, "axis": np.array(1, np.int64)})
    model.graph.input.pop()  # the axis becomes a constant initializer
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1, np.int64), "axis"))
    seed = _x(2, 5)
    result = onnxplain.Explainer(model, "cpu").explain(x, output_seed=seed, abs=False)
    want = np.zeros_like(x)
    for j in range(5):
        for i in range(j, 5):
            want[:, j] += seed[:, i] * np.prod(np.delete(x[:, :i + 1], j, axis=1), axis=1)
    np.testing.assert_allclose(result["x"], want, rtol=1e-4, atol=1e-6)


# ---- a tiny Llama by the dynamo exporter at opset 23 -------------------------------------
LLAMA = "llama_tiny_opset23"


def _torch_embedding_gradient(zoo, ids: np.ndarray, targets: np.ndarray, scale: float = 1.0):
    """d(sum_rows logit[row, target]) / d(embedding output), embeddings scaled by `scale`."""
    torch = require("torch")
    module = zoo.load_torch(LLAMA).double()
    captured = {}

    def hook(_module, _inputs, output):
        output = output * scale
        output.retain_grad()
        captured["embedding"] = output
        return output

    handle = module.model.model.embed_tokens.register_forward_hook(hook)
    logits = module(torch.from_numpy(ids))
    logits[torch.arange(len(ids)), torch.from_numpy(targets)].sum().backward()
    handle.remove()
    return captured["embedding"].grad.numpy(), captured["embedding"].detach().numpy()


def test_llama_export_holds_the_newest_ops(zoo):
    ops = {node.op_type for node in onnx.load(str(zoo.model_path(LLAMA))).graph.node}
    assert {"RMSNormalization", "RotaryEmbedding", "Attention"} <= ops


def test_llama_saliency_equals_torch_autograd_at_batch_2(zoo):
    """ONNX Runtime's own RotaryEmbedding kernel refuses this export at batch > 1; the
    rewrite runs it, and the embedding gradient is torch's (float64) to 1e-4."""
    ids = zoo.sample(LLAMA)["input_ids"]
    targets = np.array([1, 2])
    result = onnxplain.Explainer(zoo.model_path(LLAMA), "cpu").explain(
        ids, target=targets, abs=False)
    got = result.tensors[result.sources["input_ids"]]
    want, _ = _torch_embedding_gradient(zoo, ids, targets)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


# Few steps, and RMS norms are steep near the zero baseline: completeness is off, as in torch.
@pytest.mark.filterwarnings("ignore::onnxplain.methods.integrated_gradients.ConvergenceWarning")
def test_llama_layer_integrated_gradients_equals_torch(zoo):
    """IG over the embeddings from a zero baseline with Gauss-Legendre nodes, as torch
    computes it: per-token sums of (embedding · mean weighted gradient)."""
    ids = zoo.sample(LLAMA)["input_ids"]
    targets = np.array([0, 2])
    steps = 16
    result = onnxplain.Explainer(zoo.model_path(LLAMA), "cpu").explain(
        ids, method="layer_integrated_gradients", target=targets, n_steps=steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total, embedding = 0.0, None
    for node, weight in zip((nodes + 1) / 2, weights / 2, strict=True):
        grad, scaled = _torch_embedding_gradient(zoo, ids, targets, scale=float(node))
        total = total + weight * grad
        embedding = scaled / node
    want = (embedding * total).sum(axis=-1)
    np.testing.assert_allclose(result["input_ids"], want, rtol=1e-3,
                               atol=1e-4 * np.abs(want).max())
