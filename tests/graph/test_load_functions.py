"""Loading inlines model-local functions, except onnxplain's own operators (ops/), which have
backward rules of their own and stay whole; the loaded model computes what the file does."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxplain.graph.load import normalize
from onnxplain.graph.op_kinds import ONNXPLAIN_DOMAIN
from onnxplain.ops import epsilon_softmax as es

from ..ops.epsilon_models import run, single_node_model


def _with_local_function():
    """EpsilonSoftmax, then a 'local'-domain function doubling its activations."""
    model = single_node_model("l2")
    twice = helper.make_function("local", "Twice", ["p"], ["q"],
                                 [helper.make_node("Add", ["p", "p"], ["q"])],
                                 [helper.make_opsetid("", 18)])
    model.functions.append(twice)
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node.append(helper.make_node("Twice", ["a"], ["doubled"], domain="local"))
    model.graph.output.append(helper.make_tensor_value_info("doubled", TensorProto.FLOAT,
                                                            ["N", 7]))
    return model


def test_own_operators_stay_functions_and_others_are_inlined():
    loaded = normalize(_with_local_function())
    assert [(f.domain, f.name) for f in loaded.functions] == [(es.DOMAIN, es.OP_TYPE)]
    assert es.DOMAIN == ONNXPLAIN_DOMAIN
    assert [n.op_type for n in loaded.graph.node if n.domain == "local"] == []
    assert sum(es.is_epsilon_softmax(n) for n in loaded.graph.node) == 1


def test_the_loaded_model_computes_the_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    w = rng.normal(size=(7, 5)).astype(np.float32)
    a, e, doubled = run(normalize(_with_local_function()), {"x": x, "w": w})
    want_a, want_e = es.reference(x, w, distance="l2", temperature=0.7, epsilon=-2.0)
    np.testing.assert_allclose(a, want_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e, want_e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(doubled, 2 * want_a, rtol=1e-5, atol=1e-6)
