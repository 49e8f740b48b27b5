"""n_steps="auto" (methods.ig_auto): each row's result is Integrated Gradients at the first
Gauss-Legendre order whose convergence delta is within the tolerance, bit for bit, whatever
the other rows of the batch need."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.methods.ig_auto import ORDERS
from onnxplain.methods.integrated_gradients import ConvergenceWarning

from .test_layer_ig_opset9 import _token_model


@pytest.fixture(scope="module")
def digits(zoo):
    sample = zoo.sample("digits_cnn")
    name = next(iter(sample))
    return (Explainer(zoo.model_path("digits_cnn"), "cpu", progress=False), name,
            sample[name][:6], zoo.model_path("digits_cnn"))


def ig(explainer, x, n_steps, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return explainer.explain(x, method="integrated_gradients", n_steps=n_steps, **options)


def score_gap(path, name, x, targets) -> np.ndarray:
    """S(x) - S(0) per row, by ONNX Runtime alone (the zero baseline)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = np.arange(len(x))
    logits = session.run(None, {name: x})[0]
    zero = session.run(None, {name: np.zeros_like(x)})[0]
    return (logits[rows, targets] - zero[rows, targets]).astype(np.float64)


def test_each_row_is_ig_at_the_first_order_within_tolerance(digits):
    explainer, name, x, path = digits
    result = explainer.explain(x, method="integrated_gradients", n_steps="auto")
    steps, delta = result.extras["n_steps"], result.extras["convergence_delta"]
    assert len(set(steps.tolist())) > 1, steps  # the rows need different orders
    gap = score_gap(path, name, x, result.target)
    assert np.all(np.abs(delta) <= 0.01 * np.abs(gap)), (delta, gap)
    for row, order in enumerate(steps.tolist()):
        alone = ig(explainer, x[row:row + 1], order)
        assert np.array_equal(result[name][row], alone[name][0])
        assert alone.extras["convergence_delta"][0] == delta[row]
        if order > ORDERS[0]:  # and the order below it was not enough
            lower = ig(explainer, x[row:row + 1], order // 2).extras["convergence_delta"][0]
            assert abs(lower) > 0.01 * abs(gap[row])


def test_rows_converge_independently(digits, session_rows):
    explainer, name, x, _ = digits
    alone = [explainer.explain(x[i:i + 1], method="integrated_gradients", n_steps="auto")
             for i in range(len(x))]
    orders = np.array([a.extras["n_steps"][0] for a in alone])
    easy, hard = int(np.argmin(orders)), int(np.argmax(orders))
    pair = x[[easy, hard]]
    session_rows.clear()
    both = explainer.explain(pair, method="integrated_gradients", n_steps="auto")
    assert both.extras["n_steps"].tolist() == [orders[easy], orders[hard]]
    for row, single in enumerate((alone[easy], alone[hard])):
        assert np.array_equal(both[name][row], single[name][0])
    # After the first order only the hard row runs again.
    assert session_rows.count(2) >= 1 and 2 not in session_rows[session_rows.index(1):]


def test_default_tolerance_is_a_target_and_can_be_set(digits):
    explainer, name, x, path = digits
    loose = explainer.explain(x, method="integrated_gradients", n_steps="auto",
                              delta_tolerance=0.2)
    default = explainer.explain(x, method="integrated_gradients", n_steps="auto")
    assert np.all(loose.extras["n_steps"] <= default.extras["n_steps"])
    assert loose.extras["n_steps"].sum() < default.extras["n_steps"].sum()
    gap = score_gap(path, name, x, loose.target)
    assert np.all(np.abs(loose.extras["convergence_delta"]) <= 0.2 * np.abs(gap))


def test_rows_past_the_cap_are_warned(digits):
    explainer, name, x, _ = digits
    with pytest.warns(ConvergenceWarning, match=r"n_steps=auto reached its cap of 128 steps "
                                                r"in row 0 with the convergence delta at"):
        result = explainer.explain(x[1:2], method="integrated_gradients", n_steps="auto",
                                   delta_tolerance=1e-9)
    assert result.extras["n_steps"].tolist() == [ORDERS[-1]]
    assert np.array_equal(result[name], ig(explainer, x[1:2], ORDERS[-1])[name])


@pytest.mark.parametrize(("options", "message"), [
    ({"n_steps": "many"}, "option 'n_steps' of method 'integrated_gradients' expects an int "
                          ">= 1 or one of auto, got 'many'"),
    ({"n_steps": "auto", "rule": "riemann_left"}, "n_steps=auto raises the Gauss-Legendre "
                                                  "order; use rule=gausslegendre"),
    ({"n_steps": "auto", "delta_tolerance": -1}, "option 'delta_tolerance' of method "
                                                 "'integrated_gradients' must be"),
])
def test_bad_values_are_one_line(digits, options, message):
    explainer, _, x, _ = digits
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as err:
        explainer.explain(x[:1], method="integrated_gradients", **options)
    assert "\n" not in str(err.value)


def test_export_refuses_auto(digits):
    from onnxplain.exporter import export_explainer

    with pytest.raises(InputError, match="n_steps=auto runs in process; export a fixed "
                                         "n_steps") as err:
        export_explainer(digits[3], "integrated_gradients", n_steps="auto")
    assert "\n" not in str(err.value)


def test_layer_ig_rows_are_layer_ig_at_their_order(zoo):
    sample = zoo.sample("sentiment_bert")
    explainer = Explainer(zoo.model_path("sentiment_bert"), "cpu", progress=False)
    feeds = {key: value[:3] for key, value in sample.items()}
    result = explainer.explain(feeds, method="layer_integrated_gradients", n_steps="auto")
    steps = result.extras["n_steps"]
    for row, order in enumerate(steps.tolist()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            alone = explainer.explain({k: v[row:row + 1] for k, v in feeds.items()},
                                      method="layer_integrated_gradients", n_steps=order)
        assert np.array_equal(result["input_ids"][row], alone["input_ids"][0])
        assert alone.extras["convergence_delta"][0] == result.extras["convergence_delta"][row]


def test_folded_path_runs_auto_too():
    """An opset-9 model runs IG folded on the model cut at its embedding: auto there too.
    (Folded, a row's sums depend on how many rows share a run: alone, bit for bit.)"""
    ids = np.random.default_rng(1).integers(0, 20, (3, 5)).astype(np.int64)
    explainer = Explainer(_token_model(9), "cpu", progress=False)
    both = explainer.explain(ids, method="layer_integrated_gradients", target=1,
                             n_steps="auto", delta_tolerance=1e-4)
    for row, order in enumerate(both.extras["n_steps"].tolist()):
        one = ids[row:row + 1]
        auto = explainer.explain(one, method="layer_integrated_gradients", target=1,
                                 n_steps="auto", delta_tolerance=1e-4)
        fixed = explainer.explain(one, method="layer_integrated_gradients", target=1,
                                  n_steps=order, delta_tolerance=1e-4)
        assert auto.extras["n_steps"].tolist() == [order]
        assert np.array_equal(auto["input_ids"], fixed["input_ids"])
        np.testing.assert_allclose(both["input_ids"][row], fixed["input_ids"][0], rtol=1e-4,
                                   atol=1e-6)
        gap = fixed["input_ids"].sum(dtype=np.float64) - fixed.extras["convergence_delta"][0]
        assert abs(fixed.extras["convergence_delta"][0]) <= 1e-4 * abs(gap)
