"""LRP end to end: conservation layer by layer, composites on the right nodes, invariants.

Conservation (Montavon et al. 2019): every rule here redistributes all of a layer's output
relevance to its inputs except what biases (and the epsilon/stabiliser terms) absorb, so on
models without biases the relevance summed over any cut of the graph (a set of tensors every
path from input to output crosses) equals the output relevance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.autodiff import GRADIENT
from onnxplain.autodiff.ops.conv import conv as conv_gradient_rule
from onnxplain.errors import InputError, UnsupportedOpError
from onnxplain.methods.lrp import initial_relevance
from onnxplain.rules.lrp import COMPOSITES, LrpParams, lrp_rules
from onnxplain.runtime.engine import OutputSeed

from .test_lrp_rules import conv2d, lowered, reference, relative_error

# ---- a small bias-free network with every op family -------------------------------------
CUTS = ["x", "c1", "bn", "r1", "p1", "s", "r3", "a", "g", "f", "h", "r4", "logits"]


def bias_free_net(seed: int = 0) -> onnx.ModelProto:
    """Conv, BatchNormalization (no shift), ReLU, MaxPool, a residual block, AveragePool,
    GlobalAveragePool, Flatten, Gemm, ReLU, MatMul: every op without a bias."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, low=None):
        value = rng.uniform(low, 2.0, shape) if low is not None else rng.standard_normal(shape)
        return numpy_helper.from_array(value.astype(np.float32), name)

    inits = [init("w1", 4, 2, 3, 3), init("scale", 4, low=0.5),
             numpy_helper.from_array(np.zeros(4, np.float32), "zero"),
             init("var", 4, low=0.5), init("w2", 4, 4, 3, 3), init("w3", 16, 4),
             init("w4", 16, 3)]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="first_conv", pads=[1] * 4),
        helper.make_node("BatchNormalization", ["c1", "scale", "zero", "zero", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Add", ["p1", "r2"], ["s"]),
        helper.make_node("Relu", ["s"], ["r3"]),
        helper.make_node("AveragePool", ["r3"], ["a"], kernel_shape=[2, 2]),
        helper.make_node("GlobalAveragePool", ["a"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r4"]),
        helper.make_node("MatMul", ["r4", "w4"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "bias_free", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["n", 2, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def net():
    explainer = onnxplain.Explainer(bias_free_net(), providers="cpu")
    x = np.random.default_rng(1).uniform(-2, 2, (4, 2, 6, 6)).astype(np.float32)
    return explainer, x


def relevance_at(explainer, x: np.ndarray, tensors: list[str], composite: str,
                 merge: bool = True, **params) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Relevance at each tensor (the sources are the inputs) and the output relevance."""
    logits = explainer.forward(x)[explainer.output]
    seed = initial_relevance(logits, logits.argmax(axis=1))
    source = explainer.model.inputs[0].name
    rules = lrp_rules(explainer.model, [source], composite, LrpParams(**params), merge)
    run = explainer.engine.gradients({source: x}, OutputSeed(seed), tensors, rules=rules)
    return run.grads, seed


def row_sums(values: np.ndarray) -> np.ndarray:
    return values.reshape(len(values), -1).sum(axis=1, dtype=np.float64)


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_relevance_is_conserved_layer_by_layer(net, composite, merge):
    explainer, x = net
    grads, seed = relevance_at(explainer, x, CUTS, composite, merge, epsilon=1e-9,
                               stabilizer=1e-9, low=np.asarray(-2.0), high=np.asarray(2.0))
    total = row_sums(seed)
    for tensor in CUTS:
        np.testing.assert_allclose(row_sums(grads[tensor]), total, rtol=1e-4,
                                   err_msg=f"{composite} at {tensor}")


def test_conservation_fails_where_the_paper_says_it_does(net):
    """The test above can fail: a large epsilon absorbs relevance at every dense layer."""
    explainer, x = net
    grads, seed = relevance_at(explainer, x, ["x"], "epsilon", epsilon=5.0)
    assert np.all(np.abs(row_sums(grads["x"])) < 0.9 * np.abs(row_sums(seed)))


def test_the_method_reports_conservation(net):
    explainer, x = net
    result = explainer.explain(x, "lrp", composite="epsilon-alpha2-beta1", stabilizer=1e-9)
    logits = explainer.forward(x)["logits"]
    np.testing.assert_allclose(result.extras["output_relevance"], logits.max(axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(result.extras["input_relevance"], row_sums(result["x"]))
    np.testing.assert_allclose(result.extras["conservation"], 1.0, rtol=1e-4)


# ---- composites ------------------------------------------------------------------------------
def test_composites_put_each_rule_on_its_layers(zoo):
    """On ResNet-18 the first layer is the stem conv, the only one reading the pixels."""
    model = onnxplain.Explainer(zoo.model_path("resnet18_64"), providers="cpu").model
    params = LrpParams(low=np.asarray(-3.0), high=np.asarray(3.0))
    convs = [n.name for n in model.proto.graph.node if n.op_type == "Conv"]
    stem = next(n.name for n in model.proto.graph.node
                if n.op_type == "Conv" and n.input[0] == "pixel_values")
    expected = {
        "epsilon-plus": ("z-plus", "z-plus"),
        "epsilon-plus-flat": ("flat", "z-plus"),
        "epsilon-gamma-box": ("box(-3, 3)", "gamma(0.25)"),
        "epsilon-alpha2-beta1": ("alpha-beta(2, 1)", "alpha-beta(2, 1)"),
    }
    for composite, (first, other) in expected.items():
        rules = lrp_rules(model, ["pixel_values"], composite, params).labels
        assert set(rules) == set(convs) | {"/model/classifier/classifier.1/Gemm"}
        assert rules.pop(stem) == first
        assert rules.pop("/model/classifier/classifier.1/Gemm") == "epsilon(1e-06)"
        assert set(rules.values()) == {other}, composite


def test_box_and_gamma_act_on_the_nodes_the_composite_names(zoo):
    """epsilon-gamma-box on the digits CNN (batch norm kept apart): the relevance at the first
    conv's input is the box rule of that conv applied to the relevance at its output, and the
    second conv follows the gamma rule (numpy references of test_lrp_rules)."""
    explainer = onnxplain.Explainer(zoo.model_path("digits_bn_cnn"), providers="cpu")
    graph = explainer.model.proto.graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    weights = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in graph.initializer}
    x = zoo.sample("digits_bn_cnn")["image"][:2]
    tensors = ["image", convs[0].output[0], convs[1].input[0], convs[1].output[0]]
    grads, _ = relevance_at(explainer, x, tensors, "epsilon-gamma-box", merge=False,
                            gamma=0.3, low=np.asarray(-1.0), high=np.asarray(17.0))
    assert -1 <= x.min() and x.max() <= 17
    for conv, rule, (inp, out) in [(convs[0], "box", tensors[:2]),
                                   (convs[1], "gamma", tensors[2:])]:
        w, bias = weights[conv.input[1]], weights[conv.input[2]]
        x_in = x if inp == "image" else explainer.forward(x, [inp])[inp]
        shape = x_in.shape[1:]
        dense = lowered(lambda e, w=w: conv2d(e, w, 1, 1), shape)
        mask = lowered(lambda e, w=w: conv2d(e, np.ones_like(w), 1, 1), shape)
        biases = np.repeat(bias, int(np.prod(shape[1:])))
        want = np.stack([reference(
            rule, x_in[n].reshape(-1).astype(np.float64), dense, biases,
            grads[out][n].reshape(-1).astype(np.float64), mask,
            np.full(dense.shape[0], -1.0), np.full(dense.shape[0], 17.0)) for n in range(2)])
        assert relative_error(grads[inp].reshape(2, -1), want) < 1e-4, rule


def test_batch_norm_merges_into_the_layer_before(zoo):
    explainer = onnxplain.Explainer(zoo.model_path("digits_bn_cnn"), providers="cpu")
    x = zoo.sample("digits_bn_cnn")["image"][:2]
    merged = explainer.explain(x, "lrp").extras["rules"]
    assert all(" + " in node for node in merged if "Conv" in node)
    kept = explainer.explain(x, "lrp", merge_batch_norm=False).extras["rules"]
    assert not any(" + " in node for node in kept)


# ---- invariants --------------------------------------------------------------------------
def test_gradient_rules_are_untouched(zoo):
    path = zoo.model_path("digits_bn_cnn")
    x = zoo.sample("digits_bn_cnn")["image"][:4]
    explainer = onnxplain.Explainer(path, providers="cpu")
    before = explainer.explain(x, "saliency", abs=False)["image"]
    for composite in ("epsilon-plus", "epsilon-alpha2-beta1"):
        explainer.explain(x, "lrp", composite=composite)
    after = explainer.explain(x, "saliency", abs=False)["image"]
    fresh = onnxplain.Explainer(path, providers="cpu").explain(x, "saliency", abs=False)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(after, fresh["image"])
    assert GRADIENT.lookup("", "Conv", 17).rule is conv_gradient_rule


@pytest.mark.parametrize("name", ["digits_bn_cnn", "digits_mlp"])
def test_a_batch_equals_its_rows(zoo, name):
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    sample = zoo.sample(name)
    key = next(iter(sample))
    x = sample[key][:5]
    targets = np.arange(5) % 3
    batch = explainer.explain(x, "lrp", target=targets, composite="epsilon-alpha2-beta1")
    for n in range(5):
        row = explainer.explain(x[n:n + 1], "lrp", target=targets[n:n + 1],
                                composite="epsilon-alpha2-beta1")
        np.testing.assert_allclose(batch[key][n:n + 1], row[key], rtol=1e-5,
                                   atol=1e-6 * np.abs(row[key]).max())


def test_an_output_seed_weights_the_output_relevance(net):
    explainer, x = net
    seed = np.zeros((len(x), 3), np.float32)
    seed[:, 1] = 1
    by_seed = explainer.explain(x, "lrp", output_seed=seed)
    by_class = explainer.explain(x, "lrp", target=[1] * len(x))
    np.testing.assert_allclose(by_seed["x"], by_class["x"], rtol=1e-6)
    assert by_seed.objective == "output_seed"


def test_options_from_the_command_line_are_parsed(net):
    explainer, x = net
    as_text = explainer.explain(x, "lrp", composite="epsilon-gamma-box", low="-2", high="2",
                                gamma="0.5", merge_batch_norm="false")
    as_numbers = explainer.explain(x, "lrp", composite="epsilon-gamma-box", low=-2.0,
                                   high=2.0, gamma=0.5, merge_batch_norm=False)
    np.testing.assert_array_equal(as_text["x"], as_numbers["x"])
    as_arrays = explainer.explain(x, "lrp", composite="epsilon-gamma-box", gamma=0.5,
                                  low=np.full((1, 1, 1, 1), -2.0), high=np.array([2.0]),
                                  merge_batch_norm=False)
    np.testing.assert_array_equal(as_arrays["x"], as_numbers["x"])
    assert as_arrays.extras["rules"]["first_conv"] == "box(-2, 2)"


@pytest.mark.parametrize("options, message", [
    ({"composite": "plus"}, "'composite' of method 'lrp' expects one of epsilon-plus, .*'plus'"),
    ({"epsilon": 0.0}, "'epsilon' of method 'lrp' must be a finite number > 0"),
    ({"stabilizer": -1.0}, "'stabilizer' of method 'lrp' must be a finite number > 0"),
    ({"gamma": -0.1}, "'gamma' of method 'lrp' must be a finite number >= 0"),
    ({"alpha": 2.0, "beta": 2.0}, "alpha - beta = 1"),
    ({"composite": "epsilon-gamma-box"}, "give low and high"),
    ({"composite": "epsilon-gamma-box", "low": 1.0, "high": -1.0}, "low <= high"),
    ({"composite": "epsilon-gamma-box", "low": "zero", "high": 1.0}, "expects a float, an array"),
    ({"composite": "epsilon-gamma-box", "low": np.zeros(3), "high": np.ones(2)},
     "do not broadcast"),
    ({"gamm": 0.1}, "has no option 'gamm'"),
    ({"epsilon": None}, "expects a float > 0, got None"),
])
def test_bad_options_are_input_errors(net, options, message):
    explainer, x = net
    with pytest.raises(InputError, match=message):
        explainer.explain(x, "lrp", **options)


def test_ops_without_an_lrp_rule_are_listed_together():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], name="dense"),
             helper.make_node("Exp", ["h"], ["e"], name="exp"),
             helper.make_node("Mul", ["h", "e"], ["logits"], name="gate")]
    graph = helper.make_graph(
        nodes, "gated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    explainer = onnxplain.Explainer(model, providers="cpu")
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with pytest.raises(UnsupportedOpError) as error:
        explainer.explain(x, "lrp")
    text = str(error.value)
    assert "at node 'exp' (LRP has no relevance rule for Exp" in text
    assert "at node 'gate' (LRP has no rule for a product of two activations)" in text
    assert explainer.explain(x, "saliency")["x"].shape == (2, 3)
