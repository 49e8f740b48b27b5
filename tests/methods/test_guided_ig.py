"""Guided IG against PAIR saliency's GuidedIG driven by the zoo's torch originals (an MLP and
a CNN; PAIR's Guided IG treats the input as a flat array of features, so the CNN's NCHW rows
are passed as they are), max_dist 0 equal to left-Riemann Integrated Gradients,
completeness, the exported program equal to in-process, a batch equal to its rows, and
one-line errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxplain
from onnxplain.errors import InputError
from onnxplain.exporter import export_explainer

from ..export.test_export import _run
from ..export.test_fixed_batch_loop import _model, dense
from ..pair_saliency import use_numpy_shim
from .test_captum_oracles import Case, max_relative_error

STEPS = 24


def pair_guided_ig(case: Case, row: int, baseline: np.ndarray, **options) -> np.ndarray:
    """PAIR's GuidedIG().GetMask on row `row`, gradients from the torch original."""
    saliency = pytest.importorskip("saliency.core")
    torch = case.torch
    use_numpy_shim()
    target = int(case.targets[row])

    def call_model(batch, call_model_args=None, expected_keys=None):
        tensor = torch.tensor(np.asarray(batch, np.float32), requires_grad=True)
        score = case.module(tensor)[:, target].sum()
        return {saliency.INPUT_OUTPUT_GRADIENTS: torch.autograd.grad(score, tensor)[0].numpy()}

    return saliency.GuidedIG().GetMask(case.x[row], call_model, x_baseline=baseline,
                                       x_steps=options["n_steps"],
                                       max_dist=options["max_dist"],
                                       fraction=options["fraction"])


def _explain(case: Case, x=None, target=None, **options) -> onnxplain.Attribution:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few steps: the convergence warning
        return case.explainer.explain(case.x if x is None else x, method="guided_ig",
                                      target=case.targets if target is None else target,
                                      **options)


@pytest.fixture(scope="module")
def cases(zoo):
    cases = {name: Case(zoo, name) for name in ("digits_mlp", "digits_cnn")}
    for case in cases.values():
        case.x, case.targets = case.x[:3], case.targets[:3]
    return cases


OPTIONS = [
    {"n_steps": STEPS, "fraction": 0.25, "max_dist": 0.02},
    {"n_steps": STEPS, "fraction": 0.1, "max_dist": 1.0},
    {"n_steps": 7, "fraction": 0.5, "max_dist": 0.2},
]


@pytest.mark.parametrize("options", OPTIONS, ids=["pair_defaults", "unbounded", "coarse"])
@pytest.mark.parametrize("model", ["digits_mlp", "digits_cnn"])
def test_matches_pair(cases, model, options):
    case = cases[model]
    result = _explain(case, **options)
    got = result[case.input]
    for row in range(len(case.x)):
        want = pair_guided_ig(case, row, np.zeros_like(case.x[row]), **options)
        assert np.abs(want).max() > 0
        assert max_relative_error(got[row], want) < 1e-4, row


def test_matches_pair_from_a_baseline(cases):
    """A baseline that differs from the input in every feature but some (those stay)."""
    case = cases["digits_mlp"]
    baseline = np.random.default_rng(0).uniform(0, 1, case.x.shape[1:]).astype(np.float32)
    baseline[:5] = case.x[0, :5]
    options = {"n_steps": STEPS, "fraction": 0.25, "max_dist": 0.05}
    got = _explain(case, baseline=baseline, **options)[case.input]
    for row in range(len(case.x)):
        want = pair_guided_ig(case, row, baseline, **options)
        assert max_relative_error(got[row], want) < 1e-4, row
    assert np.all(got[0, :5] == 0)


def test_max_dist_zero_is_left_riemann_integrated_gradients(cases):
    """No deviation from the straight line: each step moves every feature by (x - x') /
    n_steps, weighted by the gradient at the step's start."""
    case = cases["digits_mlp"]
    got = _explain(case, n_steps=STEPS, max_dist=0.0)[case.input]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = case.explain("integrated_gradients", n_steps=STEPS, rule="riemann_left")
    assert max_relative_error(got, want[case.input]) < 1e-5


def test_is_complete(cases):
    """sum GIG = S(x) - S(x') up to the Riemann error; the delta is that gap, from the
    torch original's scores."""
    case = cases["digits_mlp"]
    result = _explain(case, n_steps=200)
    total = result[case.input].sum(axis=1)
    rows = np.arange(len(case.x))
    scores = case.module(case.tensor()).detach().numpy()[rows, case.targets]
    zeros = case.module(case.torch.zeros_like(case.tensor())).detach().numpy()[rows,
                                                                                 case.targets]
    change = scores - zeros
    np.testing.assert_allclose(result.extras["convergence_delta"], total - change,
                               atol=1e-4 * np.abs(change).max())
    assert np.abs(total - change).max() < 0.02 * np.abs(change).max()


def test_exported_equals_in_process(cases):
    case = cases["digits_cnn"]
    options = {"n_steps": 12, "fraction": 0.3, "max_dist": 0.1}
    exported = export_explainer(case.explainer.model, "guided_ig", **options)
    got = _run(exported, {case.input: case.x, "target": case.targets})
    expected = _explain(case, **options)
    np.testing.assert_array_equal(got["attribution/" + case.input], expected[case.input])
    np.testing.assert_array_equal(got["target_used"], expected.target)
    # In-process, the delta is taken again in double from the same scores.
    np.testing.assert_allclose(got["convergence_delta"], expected.extras["convergence_delta"],
                               rtol=1e-6, atol=1e-6)


def test_a_batch_equals_its_rows(cases):
    """Rows finish their selection loops at different iterations: each alone as in the
    batch."""
    case = cases["digits_cnn"]
    options = {"n_steps": 12, "fraction": 0.2, "max_dist": 0.05}
    batch = _explain(case, **options)
    for row in range(len(case.x)):
        single = _explain(case, case.x[row:row + 1], int(case.targets[row]), **options)
        np.testing.assert_allclose(single[case.input][0], batch[case.input][row], rtol=1e-6,
                                   atol=1e-7 * float(np.abs(batch[case.input][row]).max()))


@pytest.mark.parametrize("options", [{"fraction": 1.5}, {"max_dist": -0.1}, {"n_steps": 0}])
def test_bad_options_are_one_line_errors(cases, options):
    with pytest.raises(InputError) as raised:
        _explain(cases["digits_mlp"], **options)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("model, message", [
    (dense(2, False), "batch axis is fixed"), (dense(None, False, opset=10), "opset 11")])
def test_models_it_cannot_run_are_one_line_errors(model, message):
    explainer = onnxplain.Explainer(model, "cpu", progress=False)
    with pytest.raises(InputError, match=message) as raised:
        explainer.explain(np.ones((2, 6), np.float32), "guided_ig", n_steps=3)
    assert "\n" not in str(raised.value)


def test_warns_when_the_steps_are_too_few(cases):
    case = cases["digits_cnn"]
    with pytest.warns(UserWarning, match="guided integrated gradients: the attributions "
                      "miss the output difference .* use more n_steps"):
        case.explainer.explain(case.x, method="guided_ig", target=case.targets, n_steps=1)


def test_ties_are_selected_together_as_in_pair():
    """tanh(x) @ W with features in equal pairs (equal values, equal weights): equal
    gradients. PAIR selects every feature at or below its quantile, so both of a pair move
    together (with fraction 0.1 its threshold is the one smallest |gradient|)."""
    saliency = pytest.importorskip("saliency.core")
    use_numpy_shim()
    weights = np.repeat(np.array([[0.5, -1.0], [-1.5, 0.3], [2.0, 1.0], [0.25, -2.0]],
                                 np.float32), 2, axis=0)
    model = _model([helper.make_node("Tanh", ["x"], ["t"]),
                    helper.make_node("MatMul", ["t", "w"], ["logits"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
                   {"w": weights})
    x = np.repeat(np.array([[0.9, -0.4, 0.3, 1.2], [-0.7, 0.8, 0.2, -1.1]], np.float32), 2,
                  axis=1)
    options = {"n_steps": 10, "fraction": 0.1, "max_dist": 0.3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few steps: the convergence warning
        got = onnxplain.Explainer(model, "cpu", progress=False).explain(
            x, "guided_ig", target=[0, 1], **options)["x"]

    def call_model(batch, call_model_args=None, expected_keys=None):
        point = np.asarray(batch, np.float32)
        slope = (1 - np.tanh(point) ** 2) * weights[:, call_model_args][None]
        return {saliency.INPUT_OUTPUT_GRADIENTS: slope}

    for row, target in enumerate([0, 1]):
        want = saliency.GuidedIG().GetMask(x[row], call_model, target,
                                           x_baseline=np.zeros(8, np.float32),
                                           x_steps=options["n_steps"],
                                           max_dist=options["max_dist"],
                                           fraction=options["fraction"])
        assert max_relative_error(got[row], want) < 1e-5, row
        np.testing.assert_array_equal(got[row, 0::2], got[row, 1::2])


def test_matches_pair_on_resnet_given_the_same_gradients(zoo):
    """ResNet-18 (64x64, 12,288 features): torch's float32 gradients differ from ONNX
    Runtime's in the last bits, which reorders near-equal |gradient|s at PAIR's quantile and
    sends the adaptive path elsewhere (about 5% apart at 20 steps). Fed ONNX Runtime's
    gradient at each point (the saliency method, itself checked against Captum), PAIR's
    selection and sums agree with the program's to rounding."""
    saliency = pytest.importorskip("saliency.core")
    use_numpy_shim()
    case = Case(zoo, "resnet18_64")
    x, target = case.x[:1], [int(case.targets[0])]
    options = {"n_steps": 6, "fraction": 0.25, "max_dist": 0.02}
    got = _explain(case, x, target, **options)[case.input][0]

    def call_model(batch, call_model_args=None, expected_keys=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the gradient at the baseline is 0
            gradient = case.explainer.explain(np.asarray(batch, np.float32),
                                              method="saliency", target=target,
                                              abs=False)[case.input]
        return {saliency.INPUT_OUTPUT_GRADIENTS: gradient}

    want = saliency.GuidedIG().GetMask(x[0], call_model, x_baseline=np.zeros_like(x[0]),
                                       x_steps=options["n_steps"],
                                       max_dist=options["max_dist"],
                                       fraction=options["fraction"])
    assert np.abs(want).max() > 0
    assert max_relative_error(got, want) < 1e-6
