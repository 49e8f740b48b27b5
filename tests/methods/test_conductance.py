"""Layer and neuron conductance against Captum's LayerConductance and NeuronConductance on the
zoo's torch originals (conv layers of the digits CNN, after its affine stem and at the stem's
end, the hidden layers of the digits MLP),
completeness of layer conductance (its delta as Captum computes it, and small with enough
steps), the exported program equal to in-process, a batch equal to its rows, a fixed batch
axis equal to a symbolic one, and one-line errors for a bad unit or layer."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import InputError
from onnxplain.export import LOOP_ROWS
from onnxplain.export.conductance import LAYER_ATTRIBUTION
from onnxplain.exporter import export_explainer

from ..export.test_export import _run
from ..export.test_fixed_batch_loop import _explain, _exported, dense
from .test_captum_oracles import Case, max_relative_error

STEPS = 16
CONV = "/features/features.2/Conv_output_0"  # digits_cnn: features[2], a Conv2d
# The end of digits_cnn's affine stem (graph.stem): the path cannot run after it there.
STEM = "/features/features.0/Conv_output_0"
LAYERS = {  # (zoo model, onnx tensor) -> the torch module whose output it is
    ("digits_cnn", CONV): lambda module: module.features[2],
    ("digits_cnn", STEM): lambda module: module.features[0],
    ("digits_mlp", "/1/Relu_output_0"): lambda module: module[1],
    ("digits_mlp", "/2/Gemm_output_0"): lambda module: module[2],
}
UNITS = [("digits_cnn", CONV, (3, 2, 4), (32, 8, 8)),
         ("digits_cnn", STEM, (7, 5, 1), (16, 8, 8)),
         ("digits_mlp", "/2/Gemm_output_0", (5,), (32,))]


@pytest.fixture(scope="module")
def cases(zoo):
    return {name: Case(zoo, name) for name in ("digits_cnn", "digits_mlp")}


def _quiet_explain(case: Case, method: str, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few steps: the convergence warning
        return case.explain(method, **options)


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
@pytest.mark.parametrize("model, layer", list(LAYERS))
def test_layer_conductance_matches_captum(cases, model, layer, rule):
    from captum.attr import LayerConductance

    case = cases[model]
    captum = LayerConductance(case.module, LAYERS[model, layer](case.module))
    want, delta = captum.attribute(case.tensor(), target=case.target_tensor(), n_steps=STEPS,
                                   method=rule, return_convergence_delta=True)
    result = _quiet_explain(case, "layer_conductance", layer=layer, n_steps=STEPS, rule=rule)
    got = result.tensors[layer]
    assert got.shape == tuple(want.shape) and np.abs(got).max() > 0
    assert max_relative_error(got, want.detach()) < 1e-4
    # Completeness's gap as Captum's convergence delta computes it (torch's scores).
    np.testing.assert_allclose(result.extras["convergence_delta"], delta.detach().numpy(),
                               atol=1e-4 * float(np.abs(got).sum(axis=(1,)).max()))


def test_layer_conductance_is_complete(cases):
    """sum_j Cond_j -> S(x) - S(x'): the delta is that gap, small with enough steps."""
    case = cases["digits_mlp"]
    result = case.explain("layer_conductance", layer="/1/Relu_output_0", n_steps=64)
    total = result.tensors["/1/Relu_output_0"].sum(axis=1)
    logits = case.module(case.tensor()).detach().numpy()
    zeros = case.module(case.torch.zeros_like(case.tensor())).detach().numpy()
    rows = np.arange(len(case.x))
    change = logits[rows, case.targets] - zeros[rows, case.targets]
    np.testing.assert_allclose(result.extras["convergence_delta"], total - change, atol=1e-4)
    assert np.abs(total - change).max() < 0.01 * np.abs(change).max()


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid"])
@pytest.mark.parametrize("model, layer, unit, dims", UNITS)
def test_neuron_conductance_matches_captum(cases, model, layer, unit, dims, rule):
    from captum.attr import NeuronConductance

    case = cases[model]
    want = NeuronConductance(case.module, LAYERS[model, layer](case.module)).attribute(
        case.tensor(), unit, target=case.target_tensor(), n_steps=STEPS, method=rule).detach()
    if rule == "riemann_trapezoid":  # Captum's trapezoid weights sum to (n-1)/n, ours to 1
        want = want * STEPS / (STEPS - 1)
    got = case.explain("neuron_conductance", layer=layer, n_steps=STEPS, rule=rule,
                       neuron=int(np.ravel_multi_index(unit, dims)))[case.input]
    assert np.abs(got).max() > 0
    assert max_relative_error(got, want) < 1e-4


@pytest.mark.parametrize("method, options, attribution", [
    ("layer_conductance", {"layer": CONV}, LAYER_ATTRIBUTION),
    ("neuron_conductance", {"layer": CONV, "neuron": 300}, "attribution/image"),
])
def test_exported_equals_in_process(cases, method, options, attribution):
    case = cases["digits_cnn"]
    x = case.x[:3]
    options = {**options, "n_steps": 6, "internal_batch_size": LOOP_ROWS}
    exported = export_explainer(case.explainer.model, method, **options)
    got = _run(exported, {"image": x})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = case.explainer.explain(x, method=method, **options)
    want = expected.tensors[CONV] if method == "layer_conductance" else expected["image"]
    np.testing.assert_array_equal(got[attribution], want)
    np.testing.assert_array_equal(got["target_used"], expected.target)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])
    if method == "layer_conductance":
        np.testing.assert_allclose(got["convergence_delta"],
                                   expected.extras["convergence_delta"], atol=1e-5)


def test_maps_are_the_channel_sums_and_loop_chunks_do_not_matter(cases):
    """A conv layer's map at the image is its conductance summed over channels (resized);
    one point per Loop iteration (each pairing its point with the previous one's layer
    and gradient, carried by the Loop) gives the same conductance as all points at once."""
    case = cases["digits_cnn"]
    whole = _quiet_explain(case, "layer_conductance", layer=CONV, n_steps=6, upsample="none")
    single = _quiet_explain(case, "layer_conductance", layer=CONV, n_steps=6,
                            internal_batch_size=1)
    conductance = whole.tensors[CONV]
    np.testing.assert_allclose(whole["image"], conductance.sum(axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6 * np.abs(conductance).max())
    np.testing.assert_allclose(single.tensors[CONV], conductance, rtol=1e-5,
                               atol=1e-6 * np.abs(conductance).max())
    assert single["image"].shape == case.x.shape


@pytest.mark.parametrize("method, options", [
    ("layer_conductance", {"layer": "/2/Gemm_output_0"}),
    ("neuron_conductance", {"layer": "/1/Relu_output_0", "neuron": 7}),
])
def test_a_batch_equals_its_rows(cases, method, options):
    case = cases["digits_mlp"]
    x, targets = case.x[:4], case.targets[:4]
    explainer = case.explainer

    def values(rows, target):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = explainer.explain(rows, method=method, target=target, n_steps=8,
                                       baseline="constant", baseline_value=0.25, **options)
        return result.tensors[options["layer"]] if method == "layer_conductance" else \
            result[case.input]

    batch = values(x, targets)
    singles = np.concatenate([values(x[i:i + 1], targets[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(batch, singles, rtol=1e-5, atol=1e-6 * np.abs(batch).max())


@pytest.mark.parametrize("method, options", [
    ("layer_conductance", {}),  # clean blocks x and x', the layer carried between points
    ("neuron_conductance", {"neuron": 5}),  # one clean block, x
])
def test_fixed_batch_equals_symbolic(method, options):
    """A model whose batch axis is fixed runs the path one block per Loop iteration."""
    feeds = {"x": np.random.default_rng(3).standard_normal((3, 6)).astype(np.float32)}
    options = {**options, "layer": "a", "n_steps": 5}
    symbolic = _explain(dense(None, False), feeds, method, options)
    fixed = _exported(dense(2, False), method, options, feeds, {})
    if method == "layer_conductance":
        got, want = fixed[LAYER_ATTRIBUTION], symbolic.tensors["a"]
    else:
        got, want = fixed["attribution/x"], symbolic["x"]
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fixed["logits"], symbolic.outputs["logits"], rtol=1e-6)


def _squares(width) -> onnx.ModelProto:
    """x [B, width] -> a = Tanh(x) -> sum of a^2 per row -> times [1, -2, 0.5]: logits [B, 3];
    `width` a number or a name (then the layer a's unit dims are not fixed)."""
    nodes = [helper.make_node("Tanh", ["x"], ["a"]),
             helper.make_node("Mul", ["a", "a"], ["squared"]),
             helper.make_node("ReduceSum", ["squared", "axis"], ["total"]),
             helper.make_node("Mul", ["total", "scale"], ["logits"])]
    weights = {"axis": np.array([1], np.int64), "scale": np.array([[1, -2, 0.5]], np.float32)}
    graph = helper.make_graph(
        nodes, "squares", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def test_layer_with_symbolic_dims_equals_fixed():
    """A layer whose unit dims are symbolic: the Loop's zeros come from the layer computed
    at x rather than from its dims; the same conductance and delta."""
    feeds = {"x": np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)}
    options = {"layer": "a", "n_steps": 7, "internal_batch_size": 6}  # points in 4 chunks
    symbolic, fixed = (_explain(_squares(width), feeds, "layer_conductance", options)
                       for width in ("width", 6))
    assert np.abs(fixed.tensors["a"]).max() > 0
    np.testing.assert_allclose(symbolic.tensors["a"], fixed.tensors["a"], rtol=1e-6)
    np.testing.assert_allclose(symbolic.extras["convergence_delta"],
                               fixed.extras["convergence_delta"], rtol=1e-6, atol=1e-7)


def test_bad_unit_and_layer_are_one_line_errors(cases):
    case = cases["digits_mlp"]
    with pytest.raises(InputError, match="unit index from 0 to 31") as error:
        case.explain("neuron_conductance", layer="/2/Gemm_output_0", neuron=32, n_steps=2)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="no tensor or node named"):
        case.explain("layer_conductance", layer="nowhere", n_steps=2)
    assert onnxplain.methods.get_method("neuron_conductance").defaults["neuron"] == 0
