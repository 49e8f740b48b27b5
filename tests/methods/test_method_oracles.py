"""Methods Captum does not have (Grad-CAM++, CAM, activation maps) against references written
from the papers on torch values; rules against slow numpy references; invariants
(completeness, batch equals singles, linear models)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import InputError
from onnxplain.methods.integrated_gradients import ConvergenceWarning

from ..conftest import require
from .test_captum_oracles import Case, max_relative_error


def torch_layer_values(case: Case, module):
    """Activations of `module` and d(target logits)/d(activations), from torch."""
    torch = case.torch
    captured = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        captured["a"] = output

    handle = module.register_forward_hook(hook)
    logits = case.module(torch.from_numpy(case.x))
    logits[torch.arange(len(case.x)), case.target_tensor()].sum().backward()
    handle.remove()
    return captured["a"].detach().numpy().astype(np.float64), \
        captured["a"].grad.numpy().astype(np.float64)


@pytest.mark.parametrize("name", ["digits_bn_cnn", "resnet18_64"])
def test_grad_cam_plus_plus_matches_the_paper(zoo, name):
    case = Case(zoo, name)
    activations, grads = torch_layer_values(case, case.layer_module())
    # Chattopadhay et al. 2018, eq. 19 with the exponential-score closed form.
    alpha = grads ** 2 / (2 * grads ** 2 + activations.sum(axis=(2, 3), keepdims=True)
                          * grads ** 3 + 1e-30)
    alpha = np.where(grads != 0, alpha, 0)
    weights = (alpha * np.maximum(grads, 0)).sum(axis=(2, 3), keepdims=True)
    want = np.maximum((weights * activations).sum(axis=1, keepdims=True), 0)
    result = case.explain("grad_cam_plus_plus", upsample="none")
    assert max_relative_error(result[case.input], want) < 1e-4


@pytest.mark.parametrize("name", ["digits_cnn", "digits_bn_cnn", "resnet18_64"])
def test_cam_matches_dense_weights(zoo, name):
    case = Case(zoo, name)
    torch = case.torch
    activations, _ = torch_layer_values(case, case.layer_module())
    head = case.module.classifier if name != "resnet18_64" else \
        case.module.model.classifier[-1]
    weights = head.weight.detach().numpy().astype(np.float64)
    want = np.einsum("nk,nkhw->nhw", weights[case.targets], activations)[:, None]
    result = case.explain("cam", upsample="none")
    assert max_relative_error(result[case.input], want) < 1e-4
    # For a global-average-pool head, Grad-CAM without ReLU is CAM / (h * w).
    grad_cam = case.explain("grad_cam", relu=False, upsample="none")[case.input]
    area = want.shape[2] * want.shape[3]
    assert max_relative_error(grad_cam * area, want) < 1e-4
    assert torch is not None


def test_cam_refuses_other_heads():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 64)).astype(np.float32), "d")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "d"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "flat_head", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    explainer = onnxplain.Explainer(model, providers="cpu")
    x = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)
    with pytest.raises(InputError, match="not a global average pool"):
        explainer.explain(x, method="cam")
    assert explainer.explain(x, method="grad_cam")["x"].shape == (2, 1, 4, 4)


def test_activation_maps_are_the_layer_values(zoo):
    case = Case(zoo, "digits_bn_cnn")
    post, _ = torch_layer_values(case, case.module.features[-1])
    pre, _ = torch_layer_values(case, case.module.features[-2])
    result = case.explain("activation_maps", upsample="none")
    extras = result.extras
    assert max_relative_error(result.tensors[extras["pre_activation"]], pre) < 1e-4
    assert max_relative_error(result.tensors[extras["post_activation"]], post) < 1e-4
    negative = result.tensors[extras["pre_activation"] + ":negative"]
    positive = result.tensors[extras["pre_activation"] + ":positive"]
    np.testing.assert_allclose(negative + positive, result.tensors[extras["pre_activation"]])
    assert negative.max() <= 0 <= positive.min() and negative.min() < 0
    np.testing.assert_allclose(result[case.input], pre.sum(axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-4)


def _mlp_numpy(case: Case):
    layers = [m for m in case.module if hasattr(m, "weight")]
    return [(m.weight.detach().numpy().astype(np.float64),
             m.bias.detach().numpy().astype(np.float64)) for m in layers]


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_modified_relu_rules_match_a_numpy_reference(zoo, method):
    """Springenberg et al. 2015 / Zeiler and Fergus 2014 on the MLP, written out in numpy."""
    case = Case(zoo, "digits_mlp")
    weights = _mlp_numpy(case)
    x = case.x.astype(np.float64)
    pre = []
    h = x
    for k, (w, b) in enumerate(weights):
        z = h @ w.T + b
        pre.append(z)
        h = np.maximum(z, 0) if k < len(weights) - 1 else z
    g = np.eye(10)[case.targets]
    for k in range(len(weights) - 1, -1, -1):
        w, _ = weights[k]
        g = g @ w
        if k > 0:
            positive = pre[k - 1] > 0
            g = np.maximum(g, 0) * (positive if method == "guided_backprop" else 1)
    assert max_relative_error(case.explain(method)["features"], g) < 1e-4


def _linear_model(weights: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["logits"], transB=1)], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", weights.shape[1]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", weights.shape[0]])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_linear_model_attributions_are_weights_times_input():
    rng = np.random.default_rng(4)
    weights = rng.standard_normal((3, 5)).astype(np.float32)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    explainer = onnxplain.Explainer(_linear_model(weights), providers="cpu")
    target = np.array([0, 1, 2, 1])
    expected = weights[target] * x
    for method in ("input_x_gradient", "integrated_gradients"):
        got = explainer.explain(x, method=method, target=target)["x"]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    saliency = explainer.explain(x, method="smoothgrad", target=target, n_samples=4)["x"]
    np.testing.assert_allclose(saliency, np.abs(weights[target]), rtol=1e-5)


def test_integrated_gradients_completeness_and_warning(zoo):
    case = Case(zoo, "digits_mlp")
    result = case.explain("integrated_gradients", n_steps=128)
    delta = result.extras["convergence_delta"]
    logits = result.outputs["logits"][np.arange(len(case.x)), case.targets]
    assert np.abs(delta).max() < 2e-3 * np.abs(logits).max()
    with pytest.warns(ConvergenceWarning, match=r"miss the output difference by \d+\.\d%.*"
                      r"use more n_steps \(or rule=gausslegendre\)$"):
        case.explain("integrated_gradients", n_steps=2, rule="riemann_left")
    with pytest.warns(ConvergenceWarning) as caught:  # the default rule is not suggested
        case.explain("integrated_gradients", n_steps=1)
    assert all(str(w.message).endswith("use more n_steps") for w in caught)


@pytest.mark.parametrize("baseline", ["zeros", "constant", "blur", "uniform", 0.25, "array"])
def test_integrated_gradients_baselines_satisfy_completeness(zoo, baseline):
    case = Case(zoo, "digits_cnn")
    value = np.full_like(case.x[:1], 0.5) if baseline == "array" else baseline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = case.explain("integrated_gradients", n_steps=64, baseline=value,
                              baseline_value=0.1, blur_sigma=1.0)
    delta = np.abs(result.extras["convergence_delta"])
    logits = np.abs(result.outputs["logits"]).max()
    # A ReLU network is only piecewise smooth: 64 points leave a small but nonzero error.
    assert np.median(delta) < 0.05 * logits


def test_bad_baselines_are_input_errors(zoo):
    case = Case(zoo, "digits_mlp")
    with pytest.raises(InputError, match="'baseline' of method .* expects .*got 'moon'"):
        case.explain("integrated_gradients", baseline="moon")
    with pytest.raises(InputError, match="needs an image input"):
        case.explain("integrated_gradients", baseline="blur")
    with pytest.raises(InputError, match="does not broadcast"):
        case.explain("integrated_gradients", baseline=np.zeros(3, np.float32))
    with pytest.raises(InputError, match="'rule' of method .* expects one of .*got 'simpson'"):
        case.explain("integrated_gradients", rule="simpson")


@pytest.mark.parametrize("method, options", [
    ("integrated_gradients", {"n_steps": 8, "delta_tolerance": 1e9}),
    ("smoothgrad", {"n_samples": 4}),
    ("vargrad", {"n_samples": 4, "base": "input_x_gradient"}),
    ("grad_cam", {}),
    ("guided_grad_cam", {}),
    ("cam", {}),
])
def test_batch_equals_rows_one_by_one(zoo, method, options):
    case = Case(zoo, "digits_cnn")
    batch = case.explain(method, **options)[case.input]
    for row in (0, 5, 11):
        single = case.explainer.explain(case.x[row:row + 1], method=method,
                                        target=case.targets[row:row + 1], **options)
        np.testing.assert_allclose(single[case.input][0], batch[row], rtol=1e-4, atol=1e-6)


def test_integrated_gradients_runs_in_budget_sized_chunks(zoo, monkeypatch):
    """n_steps does not grow the rows of one run: they are bounded by the memory budget."""
    require("torch")
    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu",
                                    memory_budget_mb=0.2)
    x = zoo.sample("digits_cnn")["image"][:4]
    limit = explainer.engine.rows_per_run({"image": x})
    seen: list[int] = []
    # The path's points run in the program's Loop (export.loop), this many rows per
    # iteration at most (max(1, rows // N) points).
    from onnxplain.methods import integrated_gradients as module

    original = module.graph_run

    def spy(engine, method, feeds, target, sources, options, **kwargs):
        seen.append(options["internal_batch_size"])
        return original(engine, method, feeds, target, sources, options, **kwargs)

    monkeypatch.setattr(module, "graph_run", spy)
    explainer.explain(x, method="integrated_gradients", n_steps=100, target=1,
                      delta_tolerance=1e9)
    assert seen == [limit]


def test_smoothgrad_needs_a_gradient_base(zoo):
    case = Case(zoo, "digits_mlp")
    with pytest.raises(InputError, match="'base' of .* expects one of .*got 'vargrad'"):
        case.explain("smoothgrad", base="vargrad")
    with pytest.raises(InputError, match="'base' of .* expects one of .*got 'grad_cam'"):
        case.explain("smoothgrad", base="grad_cam")


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad", "cam"])
def test_bad_targets_are_input_errors_for_every_method(zoo, method):
    case = Case(zoo, "digits_cnn")
    with pytest.raises(InputError, match="target 10 is out of range"):
        case.explainer.explain(case.x, method=method, target=10)
    with pytest.raises(InputError, match="target has 2 entries for 16 input rows"):
        case.explainer.explain(case.x, method=method, target=[1, 2])


@pytest.mark.parametrize(("n_steps", "limit", "expected"),
                         [(50, 7, 5), (32, 7, 7), (7, 7, 7), (3, 7, 3), (500, 7, 5), (13, 7, 7)])
def test_path_steps_and_noise_samples_prefer_equal_runs(n_steps, limit, expected):
    """Runs of one shape build one program; a divisor is taken only if not much smaller."""
    from onnxplain.methods._common import equal_runs

    assert equal_runs(n_steps, limit) == expected
