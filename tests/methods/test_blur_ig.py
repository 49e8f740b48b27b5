"""Blur IG against PAIR's saliency.core.BlurIG (scipy's gaussian_filter) driven by the zoo's
torch originals, and on a linear NHWC model of a non-square image whose gradient is its
weights. Also: the exported program equals in-process, a batch equals its rows, a fixed
batch axis equals a symbolic one, and inputs it cannot blur are refused in one line.

Tolerance: the graph blurs as scipy does (kernel truncated at int(4 sigma + 0.5), zeros
past the border, each pass summed in double and rounded to float32), so the path's points
are PAIR's up to a float32 ulp where the two summation orders round differently; the
finite difference (B(sigma + 0.01) - B(sigma)) / 0.01 magnifies such an ulp 100 times, and
the torch and ONNX Runtime gradients differ by float32 rounding. Measured: 6e-7 of the
largest value; asserted: 1e-4."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxplain
from onnxplain.errors import InputError
from onnxplain.export import LOOP_ROWS
from onnxplain.exporter import export_explainer
from onnxplain.methods.integrated_gradients import ConvergenceWarning

from ..conftest import require
from ..export.test_export import _run
from ..tiny_models import mlp
from .test_captum_oracles import Case, max_relative_error

# The tests' few steps leave a large completeness gap; the delta's own tests read it.
pytestmark = pytest.mark.filterwarnings(
    "ignore::onnxplain.methods.integrated_gradients.ConvergenceWarning")


def pair_blur_ig(x_chw: np.ndarray, gradient, **options) -> np.ndarray:
    """PAIR's BlurIG of one row [C, H, W]: PAIR takes images channels-last, `gradient` maps
    a batch [B, H, W, C] to d score / d image in that layout. One step per call (PAIR's
    default batch_size=1): a larger batch weighs all its steps by the last one's
    sigma_{i+1} - sigma_i, wrong where the spacing is uneven (sqrt=True)."""
    saliency = require("saliency.core")

    def call(batch, call_model_args=None, expected_keys=None):
        return {saliency.INPUT_OUTPUT_GRADIENTS: gradient(batch)}

    mask = saliency.BlurIG().GetMask(np.transpose(x_chw, (1, 2, 0)), call, **options)
    return np.transpose(mask, (2, 0, 1))


def torch_gradient(case: Case, target: int, module=None):
    """d logit[target] / d image of the torch original (or `module`, a double copy),
    channels-last in and out."""
    torch, module = case.torch, module or case.module

    def gradient(batch: np.ndarray) -> np.ndarray:
        image = torch.from_numpy(np.ascontiguousarray(np.transpose(batch, (0, 3, 1, 2))))
        image.requires_grad_(True)
        module(image)[:, target].sum().backward()
        return np.transpose(image.grad.numpy(), (0, 2, 3, 1))

    return gradient


@pytest.mark.parametrize("name, rows, options", [
    ("digits_cnn", 3, {"max_sigma": 50.0, "steps": 20}),
    ("digits_cnn", 2, {"max_sigma": 6.0, "steps": 9, "sqrt": True, "grad_step": 0.05}),
    ("resnet18_64", 1, {"max_sigma": 12.0, "steps": 6}),
])
def test_pair_blur_ig_on_the_torch_original(zoo, name, rows, options):
    case = Case(zoo, name)
    x, targets = case.x[:rows], case.targets[:rows]
    got = case.explainer.explain(x, method="blur_ig", target=targets, **options)[case.input]
    for row in range(rows):
        want = pair_blur_ig(x[row], torch_gradient(case, int(targets[row])), **options)
        assert np.abs(want).max() > 0
        assert max_relative_error(got[row], want) < 1e-4


@pytest.mark.parametrize("name, rows, options", [
    ("digits_cnn", 3, {"max_sigma": 50.0, "steps": 20}),
    ("digits_cnn", 2, {"max_sigma": 6.0, "steps": 9, "sqrt": True, "grad_step": 0.05}),
    ("resnet18_64", 1, {"max_sigma": 12.0, "steps": 6}),
])
def test_convergence_delta_in_float64(zoo, name, rows, options):
    """extras["convergence_delta"] = sum(BlurIG) - (S(x) - S(B(x, sigma_steps))), the path
    starting at PAIR's last sigma (sqrt: sqrt(max_sigma)): against the torch original in
    double, scipy's blur and PAIR's BlurIG in float64. The two parts are checked apart:
    sum - delta is the score change (the most blurred image scored in the graph) and delta
    the sum's gap. Tolerance: float32 against float64 (measured below 1e-4 of the change)."""
    ndimage = require("scipy.ndimage")
    case = Case(zoo, name)
    double = copy.deepcopy(case.module).double()
    x, targets = case.x[:rows], case.targets[:rows]
    got = case.explainer.explain(x, method="blur_ig", target=targets, **options)
    steps, most = options["steps"], options["max_sigma"]
    start = math.sqrt(most) if options.get("sqrt") else most  # PAIR's sigmas[steps]
    for row in range(rows):
        target, image = int(targets[row]), x[row].astype(np.float64)
        blurred = ndimage.gaussian_filter(image, sigma=[0, start, start], mode="constant")
        with case.torch.no_grad():
            scores = double(case.torch.from_numpy(np.stack([image, blurred])))[:, target]
        change = float(scores[0] - scores[1])
        total = float(pair_blur_ig(image, torch_gradient(case, target, double),
                                   **options).sum())
        summed = float(got[case.input][row].astype(np.float64).sum())
        delta = float(got.extras["convergence_delta"][row])
        assert abs(change) > 0.1 and abs(total - change) > 1e-3 * abs(change), steps
        assert abs((summed - delta) - change) < 1e-4 * abs(change)
        assert abs(delta - (total - change)) < 1e-4 * abs(change)


def test_the_delta_warns_as_integrated_gradients(zoo):
    """Few steps miss the change by more than delta_tolerance (5%): a ConvergenceWarning
    that names the method; a tolerance above the gap is silent."""
    explainer = onnxplain.Explainer(str(zoo.model_path("digits_cnn")), "cpu", progress=False)
    x = zoo.sample("digits_cnn")["image"][:2]
    options = {"max_sigma": 50.0, "steps": 3}
    with pytest.warns(ConvergenceWarning, match=r"^blur integrated gradients: the "
                                                r"attributions miss the output difference"):
        result = explainer.explain(x, "blur_ig", **options)
    delta = np.abs(result.extras["convergence_delta"])
    assert delta.shape == (2,) and delta.max() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        explainer.explain(x, "blur_ig", delta_tolerance=1e6, **options)


def linear_nhwc(batch="N", shape=(10, 12, 3), classes=4) -> tuple[onnx.ModelProto, np.ndarray]:
    """x [batch, H, W, C] -> Flatten -> MatMul -> logits: the gradient of class c is the
    weights' column c, shaped like a row."""
    size = int(np.prod(shape))
    weights = np.random.default_rng(2).standard_normal((size, classes)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "linear_nhwc", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [batch, *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [onnx.numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, weights


def test_nhwc_non_square_image_against_pair():
    """Kernels wider than the image (max_sigma 5: radius 20 > 12) and height and width kept
    apart; the linear model's gradient is exact on both sides."""
    model, weights = linear_nhwc()
    x = np.random.default_rng(3).uniform(0, 1, (2, 10, 12, 3)).astype(np.float32)
    options = {"max_sigma": 5.0, "steps": 12}
    got = onnxplain.Explainer(model, "cpu", progress=False).explain(
        x, "blur_ig", target=[1, 3], **options)["x"]
    for row, target in enumerate((1, 3)):
        column = weights[:, target].reshape(10, 12, 3)

        def gradient(batch, column=column):
            return np.broadcast_to(column, batch.shape).copy()

        want = pair_blur_ig(np.transpose(x[row], (2, 0, 1)), gradient, **options)
        assert max_relative_error(got[row], np.transpose(want, (1, 2, 0))) < 1e-4


@pytest.mark.filterwarnings("ignore::onnxplain.runtime.engine.BatchNotice")
def test_a_fixed_batch_equals_a_symbolic_one():
    x = np.random.default_rng(4).uniform(0, 1, (3, 10, 12, 3)).astype(np.float32)
    options = {"max_sigma": 3.0, "steps": 5}
    results = [onnxplain.Explainer(linear_nhwc(batch)[0], "cpu", progress=False).explain(
        x, "blur_ig", target=[0, 1, 2], **options)["x"] for batch in ("N", 2)]
    assert np.abs(results[0]).max() > 0
    np.testing.assert_allclose(results[1], results[0], rtol=1e-5, atol=1e-7)


def test_exported_equals_in_process(zoo):
    explainer = onnxplain.Explainer(str(zoo.model_path("digits_cnn")), "cpu", progress=False)
    x = zoo.sample("digits_cnn")["image"][:3]
    options = {"max_sigma": 20.0, "steps": 11, "internal_batch_size": LOOP_ROWS}
    exported = export_explainer(explainer.model, "blur_ig", **options)
    got = _run(exported, {"image": x})
    expected = explainer.explain(x, method="blur_ig", **options)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])
    np.testing.assert_array_equal(got["target_used"], expected.target)
    # The export's delta sums in float32, in-process in double.
    change = got["score"] - got["baseline_score"]
    assert np.abs(got["convergence_delta"]).min() > 1e-3 * np.abs(change).max()
    np.testing.assert_allclose(got["convergence_delta"], expected.extras["convergence_delta"],
                               rtol=0, atol=1e-5 * np.abs(change).max())


def test_a_batch_equals_its_rows(zoo):
    explainer = onnxplain.Explainer(str(zoo.model_path("rgb_cnn")), "cpu", progress=False)
    x = zoo.sample("rgb_cnn")["image"][:3]
    options = {"max_sigma": 8.0, "steps": 5}
    batch = explainer.explain(x, method="blur_ig", **options)
    for row in range(len(x)):
        single = explainer.explain(x[row:row + 1], method="blur_ig",
                                   target=int(batch.target[row]), **options)
        value = batch["image"][row]
        assert np.abs(value).max() > 0
        np.testing.assert_allclose(single["image"][0], value, rtol=1e-5,
                                   atol=1e-6 * float(np.abs(value).max()))


def test_inputs_it_cannot_blur_are_refused():
    explainer = onnxplain.Explainer(mlp(), "cpu", progress=False)
    x = np.ones((2, 6), np.float32)
    with pytest.raises(InputError, match=r"^blur_ig blurs image inputs .*; 'x' has shape"):
        explainer.explain(x, "blur_ig", steps=3)
    model = linear_nhwc()[0]
    image = np.ones((1, 10, 12, 3), np.float32)
    with pytest.raises(InputError, match=r"^option 'max_sigma' of method 'blur_ig' must be "
                                         r"a finite number > 0, got 0.0$"):
        onnxplain.Explainer(model, "cpu", progress=False).explain(image, "blur_ig",
                                                                  max_sigma=0.0)
