"""TCAV against Captum's TCAV on the zoo digits CNN's torch original, given the same CAVs
(Captum's Classifier hook: a classifier whose weights are our CAVs), the p-value against
scipy's ttest_ind, the CAV against a direct ridge solve, the CLI, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnxplain
from onnxplain.concepts import fit_cav, tcav, ttest_pvalue
from onnxplain.errors import AttributionWarning, InputError

from .conftest import require

LAYER = "/features/features.2/Conv_output_0"  # digits_cnn: features[2], a Conv2d
TORCH_LAYER = "features.2"
TARGET = 7


@pytest.fixture(scope="module")
def digits(zoo):
    """Inputs (test images), concept (images of a 7) and three random sets (other digits)."""
    from model_zoo.digits import digits_data

    _, _, images, labels = digits_data()
    rng = np.random.default_rng(0)
    sevens = images[labels == TARGET][:20]
    others = images[labels != TARGET]
    randoms = [others[rng.choice(len(others), 20, replace=False)] for _ in range(3)]
    return {"inputs": images[:40], "sevens": sevens, "randoms": randoms}


@pytest.fixture(scope="module")
def explainer(zoo):
    return onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu", progress=False)


@pytest.fixture(scope="module")
def result(explainer, digits):
    return tcav(explainer, digits["inputs"], {"seven": digits["sevens"]}, digits["randoms"],
                layer=LAYER, target=TARGET)


def _captum_scores(zoo, digits, cavs: np.ndarray, target: int, save_path) -> list[dict]:
    """Captum TCAV.interpret on the torch original, its classifier returning our CAVs."""
    torch = require("torch")
    from captum.concept import TCAV, Classifier, Concept

    class GivenCavs(Classifier):  # Captum's hook for any classifier: weights() is the CAV
        def __init__(self):
            self.index = 0

        def train_and_eval(self, dataloader, **kwargs):
            self.index += 1  # sets are trained in order: the next CAV
            return {"accs": torch.tensor(1.0)}

        def weights(self):
            cav = torch.from_numpy(cavs[self.index - 1]).float()
            return torch.stack([cav, -cav])

        def classes(self):
            return [0, 1 + self.index - 1]

    def concept(index: int, name: str, images: np.ndarray):
        return Concept(index, name, [torch.from_numpy(images)])

    seven = concept(0, "seven", digits["sevens"])
    randoms = [concept(1 + i, f"random{i}", r) for i, r in enumerate(digits["randoms"])]
    module = zoo.load_torch("digits_cnn")
    captum = TCAV(module, [TORCH_LAYER], classifier=GivenCavs(), save_path=str(save_path))
    scores = captum.interpret(torch.from_numpy(digits["inputs"]),
                              [[seven, random] for random in randoms], target=target)
    return [scores[f"0-{r.id}"][TORCH_LAYER] for r in randoms]


@pytest.mark.parametrize("target", [TARGET, 3])  # sevens for class 3: sign counts in (0, 1)
def test_scores_match_captum_given_the_same_cavs(zoo, explainer, digits, target, tmp_path):
    test = tcav(explainer, digits["inputs"], {"seven": digits["sevens"]}, digits["randoms"],
                layer=LAYER, target=target).concepts["seven"]
    want = _captum_scores(zoo, digits, test.cavs, target, tmp_path)
    sign = np.array([[float(v) for v in s["sign_count"]] for s in want])
    magnitude = np.array([[float(v) for v in s["magnitude"]] for s in want])
    np.testing.assert_array_equal(np.round(sign * 40), np.round(
        np.stack([test.sign_count, test.random_sign_count], axis=1) * 40))
    np.testing.assert_allclose(np.stack([test.magnitude, test.random_magnitude], axis=1),
                               magnitude, rtol=1e-4)
    if target == 3:  # counts strictly inside (0, 1): the sign test can fail either way
        assert 0 < sign.min() and sign.max() < 1
    from scipy.stats import ttest_ind

    # As Captum's TCAV tutorial: the concept's sign counts against the random sets' (float32
    # in Captum, hence the tolerance).
    assert test.p_value == pytest.approx(ttest_ind(sign[:, 0], sign[:, 1]).pvalue, rel=1e-6)


def test_the_null_is_cavs_between_random_sets(explainer, digits, result):
    """Kim et al.'s null: the sign counts of CAVs fitted between each pair of random sets,
    computed here from the layer's activations and gradients read directly; the concept's
    null p-value is scipy's t-test of its sign counts against those."""
    from scipy.stats import ttest_ind

    grads = explainer.gradients(digits["inputs"], TARGET, wrt=[LAYER]).grads[LAYER]
    grads = grads.reshape(len(grads), -1).astype(np.float64)
    acts = [explainer.forward(r, taps=[LAYER])[LAYER].reshape(len(r), -1)
            for r in digits["randoms"]]
    null = [np.mean(grads @ fit_cav(acts[i], acts[j])[0] > 0)
            for i in range(len(acts)) for j in range(i + 1, len(acts))]
    np.testing.assert_array_equal(result.null_sign_count, null)
    test = result.concepts["seven"]
    want = ttest_ind(test.sign_count, null).pvalue
    assert np.isfinite(want) and test.null_p_value == pytest.approx(want, rel=1e-9)
    assert result.as_dict()["concepts"]["seven"]["null_p_value"] == test.null_p_value


def test_a_digit_concept_supports_its_own_class(result):
    """Sevens push the class 'seven' up; the CAVs separate their sets."""
    test = result.concepts["seven"]
    assert test.sign_count.mean() > 0.8 and test.accuracy.min() >= 0.9
    assert np.all(result.targets == TARGET) and result.layer == LAYER
    assert np.allclose(np.linalg.norm(test.cavs, axis=1), 1.0)


def test_given_cavs_are_tested_as_given(explainer, digits, result):
    flipped = -result.concepts["seven"].cavs
    again = tcav(explainer, digits["inputs"], {"seven": digits["sevens"]}, digits["randoms"],
                 layer=LAYER, target=TARGET, cavs={"seven": flipped}).concepts["seven"]
    np.testing.assert_array_equal(again.sign_count, result.concepts["seven"].random_sign_count)


def test_cav_is_the_ridge_direction():
    """Against the primal ridge solve (X^T X + lambda n I) w = X^T y on centred features."""
    rng = np.random.default_rng(1)
    concept, random = rng.normal(1.0, 1.0, (6, 9)), rng.normal(0.0, 1.0, (7, 9))
    cav, accuracy = fit_cav(concept, random, ridge=0.1)
    x = np.concatenate([concept, random])
    y = np.r_[np.ones(6), -np.ones(7)]
    centred = x - x.mean(axis=0)
    penalty = 0.1 * np.trace(centred @ centred.T) / len(x)
    primal = np.linalg.solve(centred.T @ centred + penalty * np.eye(9), centred.T @ (y - y.mean()))
    np.testing.assert_allclose(cav, primal / np.linalg.norm(primal), atol=1e-10)
    assert cav @ (concept.mean(axis=0) - random.mean(axis=0)) > 0 and accuracy > 0.5


def test_cav_accuracy_is_leave_one_out():
    """Against refitting without each example (centred and labelled anew, the same penalty):
    noise against noise with more features than examples scores near chance, where the
    training accuracy would be 1; separated sets score 1."""
    rng = np.random.default_rng(3)
    concept, random = rng.standard_normal((20, 500)), rng.standard_normal((20, 500))
    _, accuracy = fit_cav(concept, random, ridge=0.1)
    x = np.concatenate([concept, random])
    y = np.r_[np.ones(20), -np.ones(20)]
    centred = x - x.mean(axis=0)
    penalty = 0.1 * np.trace(centred @ centred.T) / len(x)
    right = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        mean, label = x[keep].mean(axis=0), y[keep].mean()
        kept = x[keep] - mean
        dual = np.linalg.solve(kept @ kept.T + penalty * np.eye(len(kept)), y[keep] - label)
        right += np.sign((x[i] - mean) @ (kept.T @ dual) + label) == y[i]
    assert accuracy == right / len(x) and accuracy < 0.7
    assert fit_cav(concept + 3.0, random, ridge=0.1)[1] == 1.0
    for ridge in (0, -1.0, float("nan"), True):
        with pytest.raises(InputError, match="ridge must be a finite number above 0"):
            fit_cav(concept, random, ridge=ridge)


def test_pvalue_matches_scipy():
    from scipy.stats import ttest_ind

    rng = np.random.default_rng(2)
    for sizes, shift in (((2, 2), 0.0), ((3, 5), 0.7), ((10, 10), 3.0), ((30, 7), 0.2)):
        first, second = rng.normal(size=sizes[0]), rng.normal(shift, 1.0, size=sizes[1])
        assert ttest_pvalue(first, second) == pytest.approx(
            ttest_ind(first, second).pvalue, rel=1e-9)
    assert ttest_pvalue([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]) == 0.0  # scipy: t = inf, p = 0
    assert ttest_pvalue([0.5], [0.4, 0.6]) is None
    assert ttest_pvalue([0.5, 0.5], [0.5, 0.5]) is None


def test_cli_json(digits, zoo, tmp_path):
    from click.testing import CliRunner

    from cli.main import main

    np.savez(tmp_path / "x.npz", image=digits["inputs"])
    np.savez(tmp_path / "seven.npz", image=digits["sevens"])
    args = ["tcav", str(zoo.model_path("digits_cnn")), "-i", str(tmp_path / "x.npz"),
            "--concept", f"seven={tmp_path / 'seven.npz'}", "--layer", LAYER,
            "--target", str(TARGET), "--json"]
    for i, random in enumerate(digits["randoms"]):
        np.savez(tmp_path / f"r{i}.npz", image=random)
        args += ["--random", str(tmp_path / f"r{i}.npz")]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 0, out.output
    scores = json.loads(out.output)["concepts"]["seven"]
    assert scores["mean_sign_count"] > 0.8 and len(scores["sign_count"]) == 3


def test_bad_input_is_one_line(explainer, digits):
    with pytest.raises(InputError, match="no tensor or node named"):
        tcav(explainer, digits["inputs"], {"seven": digits["sevens"]}, digits["randoms"],
             layer="nope", target=TARGET)
    with pytest.raises(InputError, match="expected \\[3 random sets"):
        tcav(explainer, digits["inputs"], {"seven": digits["sevens"]}, digits["randoms"],
             layer=LAYER, target=TARGET, cavs={"seven": np.zeros((2, 5))})
    with pytest.raises(InputError, match="at least one random set"):
        tcav(explainer, digits["inputs"], {"seven": digits["sevens"]}, [], layer=LAYER)


def test_a_layer_the_score_does_not_depend_on_warns():
    """h = x W feeds the output only through a product with 0: the gradient at h is 0 for
    every input, so every sign count is 0; that is said, never presented as a result."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    zeros = numpy_helper.from_array(np.zeros((3, 2), np.float32), "z")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("MatMul", ["h", "z"], ["y"])], "dead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [weights, zeros])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    explainer = onnxplain.Explainer(model, "cpu", progress=False)
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((6, 4)).astype(np.float32) for _ in range(4)]
    with pytest.warns(AttributionWarning, match="gradient at 'h' is 0 for 6 inputs"):
        result = tcav(explainer, data[0], {"c": data[1] + 2}, data[2:], layer="h", target=0)
    assert not result.concepts["c"].sign_count.any()
