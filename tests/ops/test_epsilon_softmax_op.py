"""EpsilonSoftmax as an ONNX function: equal to the numpy reference, valid, and with the
properties the seed document asks of the epsilon neuron."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxplain.errors import InputError, ModelError
from onnxplain.ops import epsilon_softmax as es

from .epsilon_models import run, single_node_model


@pytest.mark.parametrize("distance", es.DISTANCES)
@pytest.mark.parametrize("opset,dtype", [(13, np.float32), (17, np.float32), (18, np.float64),
                                         (21, np.float32)])
def test_op_equals_the_numpy_reference(distance, opset, dtype):
    rng = np.random.default_rng(opset)
    model = single_node_model(distance, opset=opset, dtype=dtype, k=11, d=6)
    onnx.checker.check_model(model, full_check=True)
    x = rng.normal(size=(17, 6)).astype(dtype)
    w = np.concatenate([x[:3] + 0.01, rng.normal(size=(8, 6))]).astype(dtype)
    a, e = run(model, {"x": x, "w": w})
    ref_a, ref_e = es.reference(x, w, distance=distance, temperature=0.7, epsilon=-2.0)
    assert a.dtype == dtype and a.shape == (17, 11) and e.shape == (17,)
    np.testing.assert_allclose(a, ref_a, atol=1e-6, rtol=0)
    np.testing.assert_allclose(e, ref_e, atol=1e-6, rtol=0)
    np.testing.assert_allclose(a.sum(1) + e, 1.0, atol=1e-6)


def test_minus_infinity_epsilon_is_the_plain_softmax():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(5, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    a, e = run(single_node_model("l2", epsilon=float("-inf")), {"x": x, "w": w})
    d = np.sqrt(((x[:, None] - w[None]) ** 2).sum(-1))
    z = np.exp(-d / np.float32(0.7))
    np.testing.assert_allclose(a, z / z.sum(1, keepdims=True), atol=1e-6)
    assert np.all(e == 0)


@pytest.mark.parametrize("distance", es.DISTANCES)
def test_epsilon_neuron_wins_exactly_when_every_similarity_is_below_epsilon(distance):
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(200, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    d = es.distances(x.astype(np.float64), w.astype(np.float64), distance)
    epsilon = -float(np.median(d.min(1)))
    a, e = run(single_node_model(distance, epsilon=epsilon), {"x": x, "w": w})
    below = (-d).max(1) < epsilon
    assert 50 < below.sum() < 150
    clear = np.abs((-d).max(1) - epsilon) > 1e-4  # float32 ties are not decided
    np.testing.assert_array_equal((e > a.max(1))[clear], below[clear])


def test_centers_can_be_initializers_and_batches_match_single_rows():
    rng = np.random.default_rng(2)
    model = single_node_model("cosine", centers_as_input=False)
    w = rng.normal(size=(7, 5)).astype(np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    x = rng.normal(size=(6, 5)).astype(np.float32)
    a, e = run(model, {"x": x})
    for i in range(6):
        ai, ei = run(model, {"x": x[i:i + 1]})
        np.testing.assert_allclose(ai[0], a[i], atol=1e-7)
        np.testing.assert_allclose(ei[0], e[i], atol=1e-7)


def test_two_distances_in_one_model_use_their_own_bodies():
    model = single_node_model("l1")
    second = es.make_node("x", "w", "a2", "e2", distance="squared_l2", temperature=2.0,
                          epsilon=-1.0)
    model.graph.node.append(second)
    model.graph.output.extend([onnx.helper.make_tensor_value_info("a2", onnx.TensorProto.FLOAT,
                                                                  ["N", 7])])
    es.add_function(model, "squared_l2")
    es.add_function(model, "squared_l2")  # idempotent
    assert len(model.functions) == 2
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    a, _, a2 = run(model, {"x": x, "w": w})
    np.testing.assert_allclose(a, es.reference(x, w, distance="l1", temperature=0.7,
                                               epsilon=-2.0)[0], atol=1e-6)
    np.testing.assert_allclose(a2, es.reference(x, w, distance="squared_l2", temperature=2.0,
                                                epsilon=-1.0)[0], atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"distance": "l3"}, "unknown distance 'l3'"),
    ({"temperature": 0.0}, "temperature must be a positive number"),
    ({"temperature": float("nan")}, "temperature must be a positive number"),
    ({"epsilon": float("inf")}, "epsilon must be a number or -inf"),
])
def test_bad_attributes_are_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        es.make_node("x", "w", "a", "e", **kwargs)


def test_old_opsets_are_refused_with_the_fix():
    with pytest.raises(ModelError, match="opset 13 or newer.*version_converter"):
        single_node_model("l2", opset=12)
