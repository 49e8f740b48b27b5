"""Models whose batch axis is fixed to B run Integrated Gradients, layer IG and the noise
tunnels through the same Loop as symbolic models (issue 19, item 2): every model run inside
it sees exactly B rows (the clean blocks in iterations of their own, then one point of the B
rows per iteration). The test models bake B into a Reshape, so any other row count fails.
In process they equal the same model with a symbolic batch; the exported explainer (which
takes exactly B rows) run on B-row chunks equals in process bit for bit."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.export.noise import SEED, row_seeds
from onnxplain.exporter import export_explainer
from onnxplain.inputs import pad_rows
from onnxplain.runtime.session import Session

RNG = np.random.default_rng(3)
W1 = RNG.standard_normal((6, 8)).astype(np.float32)
B1 = RNG.standard_normal(8).astype(np.float32)
W2 = RNG.standard_normal((8, 4)).astype(np.float32)
TABLE = RNG.standard_normal((20, 4)).astype(np.float32)
HEAD = RNG.standard_normal((20, 3)).astype(np.float32)


def _model(nodes, inputs, outputs, weights, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "fixed", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # Declared intermediate shapes, as exporters write them: B rows where the batch is fixed.
    return onnx.shape_inference.infer_shapes(model)


def dense(batch: int | None, stem: bool, opset: int = 17) -> onnx.ModelProto:
    """x [B, 6] -> (Sigmoid) -> Gemm -> Relu -> Reshape [B, 8] -> MatMul -> logits [B, 4]:
    with `stem` the Gemm reads x (an affine stem: IG walks its output); the Reshape holds B
    (None: -1, a symbolic batch)."""
    rows = "batch" if batch is None else batch
    first = [] if stem else [helper.make_node("Sigmoid", ["x"], ["s"])]
    nodes = [*first, helper.make_node("Gemm", ["x" if stem else "s", "w1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 6])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [rows, 4])],
                  {"w1": W1, "b1": B1, "w2": W2,
                   "shape": np.array([batch or -1, 8], np.int64)}, opset)


def tokens(batch: int | None) -> onnx.ModelProto:
    """ids [B, 5] -> Gather -> Tanh -> Reshape [B, 20] -> MatMul -> logits [B, 3]."""
    rows = "batch" if batch is None else batch
    nodes = [helper.make_node("Gather", ["table", "ids"], ["embedded"]),
             helper.make_node("Tanh", ["embedded"], ["t"]),
             helper.make_node("Reshape", ["t", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [rows, 5])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [rows, 3])],
                  {"table": TABLE, "head": HEAD, "shape": np.array([batch or -1, 20], np.int64)})


GRADIENT_METHODS = {
    "integrated_gradients": {"n_steps": 7},
    "smoothgrad": {"n_samples": 5, "seed": 2},
    "smoothgrad_sq": {"n_samples": 5, "seed": 2, "base": "input_x_gradient"},
    "vargrad": {"n_samples": 5, "seed": 2},
}
CASES = [(size, rows) for size in (1, 2) for rows in sorted({1, size, 3})]


def _explain(model, feeds, method, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixed batch's notice, IG's convergence
        return Explainer(model, "cpu", progress=False).explain(
            feeds, method, target=[1] * len(next(iter(feeds.values()))), **options)


def _exported(model, method, options, feeds, fed) -> dict[str, np.ndarray]:
    """The exported explainer run on B-row chunks, padded as the engine pads (the last row
    repeated), the real rows kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = export_explainer(model, method, **options)
    size = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    rows = len(next(iter(feeds.values())))
    session = Session(exported, ["CPUExecutionProvider"])
    names = [o.name for o in exported.graph.output]
    parts: dict[str, list] = {name: [] for name in names}
    for start in range(0, rows, size):
        chunk = {k: pad_rows(v[start:start + size], 0, size) for k, v in {**feeds, **fed}.items()}
        chunk["target"] = np.ones(size, np.int64)
        out = session.run(names, chunk)
        for name in names:
            parts[name].append(out[name][:min(size, rows - start)])
    return {name: np.concatenate(values) for name, values in parts.items()}


def _noise_seeds(method, options, feeds) -> dict[str, np.ndarray]:
    if method == "integrated_gradients":
        return {}
    return {SEED: row_seeds([feeds[name] for name in sorted(feeds)], options["seed"])}


@pytest.mark.parametrize("size, rows", CASES)
@pytest.mark.parametrize("stem", [True, False])
@pytest.mark.parametrize("method", list(GRADIENT_METHODS))
def test_a_fixed_batch_explains_as_a_symbolic_one_and_as_its_export(method, stem, size, rows):
    x = RNG.standard_normal((rows, 6)).astype(np.float32)
    options = GRADIENT_METHODS[method]
    fixed = _explain(dense(size, stem), {"x": x}, method, options)
    symbolic = _explain(dense(None, stem), {"x": x}, method, options)
    assert np.abs(fixed["x"]).max() > 0
    np.testing.assert_allclose(fixed["x"], symbolic["x"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fixed.outputs["logits"], symbolic.outputs["logits"], rtol=1e-6)
    if method == "integrated_gradients":
        np.testing.assert_allclose(fixed.extras["convergence_delta"],
                                   symbolic.extras["convergence_delta"], rtol=1e-4, atol=1e-6)
    got = _exported(dense(size, stem), method, options, {"x": x},
                    _noise_seeds(method, options, {"x": x}))
    np.testing.assert_array_equal(got["attribution/x"], fixed["x"])
    np.testing.assert_array_equal(got["logits"], fixed.outputs["logits"])
    if method == "integrated_gradients":  # in process recomputed in float64
        np.testing.assert_allclose(got["convergence_delta"],
                                   fixed.extras["convergence_delta"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, rows", CASES)
def test_layer_integrated_gradients_on_a_fixed_batch(size, rows):
    ids = RNG.integers(0, 20, (rows, 5))
    options = {"n_steps": 6, "baseline_token": 3}
    fixed = _explain(tokens(size), {"ids": ids}, "layer_integrated_gradients", options)
    symbolic = _explain(tokens(None), {"ids": ids}, "layer_integrated_gradients", options)
    assert np.abs(fixed["ids"]).max() > 0
    np.testing.assert_allclose(fixed["ids"], symbolic["ids"], rtol=1e-5, atol=1e-7)
    got = _exported(tokens(size), "layer_integrated_gradients", options, {"ids": ids}, {})
    np.testing.assert_array_equal(got["attribution/ids"], fixed["ids"])
    np.testing.assert_allclose(got["convergence_delta"], fixed.extras["convergence_delta"],
                               rtol=1e-5, atol=1e-5)  # in process recomputed in float64


def test_the_export_of_a_fixed_batch_says_how_many_rows_it_takes():
    exported = export_explainer(dense(2, True), "integrated_gradients", n_steps=4)
    props = {p.key: p.value for p in exported.metadata_props}
    assert "exactly 2 rows" in props["onnxplain.batch"]
    assert "rows_per_iteration" not in {i.name for i in exported.graph.input}
    with pytest.raises(InputError, match="deeplift runs each row with its reference"):
        export_explainer(dense(2, True), "deeplift")


def test_below_opset_12_the_path_loops_as_at_17():
    """int64 Min/Max written as Where(Less) below opset 12: several points per iteration, as
    at opset 17 (the rows_per_iteration input is read)."""
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    model, old = dense(None, False), dense(None, False, opset=11)
    options = {"n_steps": 9, "internal_batch_size": 6}
    new_result = _explain(model, {"x": x}, "integrated_gradients", options)
    old_result = _explain(old, {"x": x}, "integrated_gradients", options)
    np.testing.assert_allclose(old_result["x"], new_result["x"], rtol=1e-6, atol=1e-7)
    program = export_explainer(old, "integrated_gradients", **options)
    assert "rows_per_iteration" in {i.name for i in program.graph.input}
    fixed = _explain(dense(2, False, opset=11), {"x": x}, "integrated_gradients", options)
    np.testing.assert_allclose(fixed["x"], new_result["x"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method, options", [("occlusion", {"window": 1, "baseline": 0.25}),
                                             ("rise", {"n_masks": 12, "seed": 1})])
def test_an_exported_perturbation_loop_runs_one_copy_of_the_b_rows_per_iteration(method,
                                                                                   options):
    """Its rows_per_iteration defaults to 1 (in process fed so): the Reshape holding B would
    fail on two copies at once; the numbers are in process's."""
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    expected = _explain(dense(2, True), {"x": x}, method, options)
    got = _exported(dense(2, True), method, options, {"x": x}, {})
    assert np.abs(expected["x"]).max() > 0
    np.testing.assert_array_equal(got["attribution/x"], expected["x"])
