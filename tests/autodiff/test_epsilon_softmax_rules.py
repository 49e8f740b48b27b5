"""The backward rule of onnxplain's EpsilonSoftmax against central finite differences in
float64 (ONNX Runtime), and against autodiff through the function's own inlined body."""

from __future__ import annotations

import numpy as np
import onnx.inliner
import pytest

from onnxplain.autodiff import differentiate
from onnxplain.ops import epsilon_softmax as es
from tests.ops.epsilon_models import run, single_node_model

OP = "EpsilonSoftmax"  # the coverage test looks for every registered op name in these files


def _gradients(model, feeds, seeds, wrt=("x", "w")):
    diff = differentiate(model, list(wrt), outputs=list(seeds))
    onnx.checker.check_model(diff.model, full_check=True)
    assert any(n.op_type == OP for n in diff.model.graph.node)
    run_feeds = dict(feeds) | {diff.seeds[o]: s for o, s in seeds.items()}
    return dict(zip(wrt, run(diff.model, run_feeds, [diff.grads[w] for w in wrt]), strict=True))


def _case(distance, seeded, epsilon, seed=0):
    rng = np.random.default_rng(seed)
    model = single_node_model(distance, dtype=np.float64, epsilon=epsilon, temperature=0.6)
    x = rng.normal(size=(4, 5))
    w = np.concatenate([x[:2] + 0.3 * rng.normal(size=(2, 5)), rng.normal(size=(5, 5))])
    feeds = {"x": x, "w": w}
    outputs = run(model, feeds)
    seeds = {name: rng.normal(size=outputs[i].shape)
             for i, name in enumerate(("a", "e")) if name in seeded}
    return model, feeds, seeds


# With eps = -inf the epsilon output is constant 0, so it is not seeded alone.
@pytest.mark.parametrize("distance", es.DISTANCES)
@pytest.mark.parametrize("seeded,epsilon", [(("a", "e"), -1.5), (("a",), -1.5), (("e",), -1.5),
                                            (("a", "e"), float("-inf")),
                                            (("a",), float("-inf"))])
def test_rule_matches_finite_differences(distance, seeded, epsilon):
    model, feeds, seeds = _case(distance, seeded, epsilon)
    grads = _gradients(model, feeds, seeds)

    def objective(values):
        outputs = dict(zip(("a", "e"), run(model, values), strict=True))
        return sum(float(np.sum(seeds[k] * outputs[k])) for k in seeds)

    rng = np.random.default_rng(1)
    step = 1e-6
    for name in ("x", "w"):
        assert grads[name].shape == feeds[name].shape
        for _ in range(3):
            direction = rng.normal(size=feeds[name].shape)
            plus = dict(feeds) | {name: feeds[name] + step * direction}
            minus = dict(feeds) | {name: feeds[name] - step * direction}
            numeric = (objective(plus) - objective(minus)) / (2 * step)
            analytic = float(np.sum(grads[name] * direction))
            assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (name, numeric,
                                                                             analytic)


@pytest.mark.parametrize("distance", es.DISTANCES)
def test_rule_equals_autodiff_through_the_inlined_body(distance):
    model, feeds, seeds = _case(distance, ("a", "e"), -1.0, seed=4)
    by_rule = _gradients(model, feeds, seeds)
    inlined = onnx.inliner.inline_local_functions(model)
    diff = differentiate(inlined, ["x", "w"], outputs=list(seeds))
    assert not any(n.domain == es.DOMAIN for n in diff.model.graph.node)
    got = run(diff.model, dict(feeds) | {diff.seeds[o]: s for o, s in seeds.items()},
              [diff.grads["x"], diff.grads["w"]])
    np.testing.assert_allclose(got[0], by_rule["x"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[1], by_rule["w"], rtol=1e-6, atol=1e-9)


def test_l2_gradient_is_finite_at_a_center():
    model, feeds, seeds = _case("l2", ("a", "e"), -1.0)
    feeds["w"][0] = feeds["x"][0]
    grads = _gradients(model, feeds, seeds)
    assert np.isfinite(grads["x"]).all() and np.isfinite(grads["w"]).all()


def test_float32_gradients_in_onnxruntime_agree_with_float64():
    model64, feeds, seeds = _case("l1", ("a", "e"), -1.0, seed=7)
    expected = _gradients(model64, feeds, seeds)
    model32 = single_node_model("l1", epsilon=-1.0, temperature=0.6)
    got = _gradients(model32, {k: v.astype(np.float32) for k, v in feeds.items()},
                     {k: v.astype(np.float32) for k, v in seeds.items()})
    for name in ("x", "w"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5)
