"""AttnLRP's rules one op at a time against the paper's formulas (Achtibat et al. 2024),
written on explicit relevance (never through a gradient), on one-op models; then the method
on the zoo: the rules coincide with the gradient on ReLU networks, ONNX Runtime's optimised,
float16 and opset-23 exports explain as the plain export does, refusals name the node, the
exported explainer equals in-process, a batch equals its rows. The float64 torch oracle on
transformers is tests/transformers/test_attn_lrp_oracle.py."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import AttributionWarning, UnsupportedOpError
from onnxplain.exporter import export_explainer
from onnxplain.rules.attn_lrp import ATTN_LRP
from onnxplain.runtime.engine import OutputSeed

from ..export.test_export import _run

RNG = np.random.default_rng(7)


def one_op_model(nodes, inputs: dict[str, list], output_shape: list, opset: int = 17,
                 initializers=(), dtype=TensorProto.FLOAT):
    graph = helper.make_graph(
        nodes, "one_op", [helper.make_tensor_value_info(n, dtype, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", dtype, output_shape)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 8
    return model


def relevance(model, feeds: dict[str, np.ndarray], seed: np.ndarray) -> dict[str, np.ndarray]:
    """R at each input, x * g with AttnLRP's modified gradient, seeded with `seed` at y (so
    the relevance given is R_y = y * seed)."""
    explainer = onnxplain.Explainer(model, providers="cpu")
    run = explainer.engine.gradients(feeds, OutputSeed(seed), list(feeds), rules=ATTN_LRP)
    return {name: feeds[name] * run.grads[name] for name in feeds}


def test_softmax_rule_is_the_papers():
    """Proposition 3.1: R_x = x * (R_y - s * sum(R_y)) along the softmax axis."""
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    seed = RNG.standard_normal((3, 6)).astype(np.float32)
    model = one_op_model([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
                         {"x": ["n", 6]}, ["n", 6])
    s = np.exp(x - x.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    r_y = s * seed
    expected = x * (r_y - s * r_y.sum(1, keepdims=True))
    np.testing.assert_allclose(relevance(model, {"x": x}, seed)["x"], expected, rtol=1e-4,
                               atol=1e-6)


def _gelu_nodes():
    """GELU as the legacy torch exporter writes it: x * 0.5 * (1 + erf(x / sqrt 2))."""
    c = [numpy_helper.from_array(np.array(v, np.float32), n)
         for n, v in (("sqrt2", np.sqrt(2)), ("one", 1.0), ("half", 0.5))]
    return [helper.make_node("Div", ["x", "sqrt2"], ["u"]),
            helper.make_node("Erf", ["u"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]),
            helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["y"])], c


def _silu_nodes():
    return [helper.make_node("Sigmoid", ["x"], ["s"]),
            helper.make_node("Mul", ["x", "s"], ["y"])], []


def _inverse_nodes():
    """c / x: an elementwise function of x too."""
    return [helper.make_node("Div", ["c", "x"], ["y"])], [
        numpy_helper.from_array(np.array([2.0], np.float32), "c")]


@pytest.mark.parametrize("case", ["Gelu", "Tanh", "Sigmoid", "Softplus", "Erf", "gelu_chain",
                                  "silu_chain", "inverse_chain"])
def test_identity_rule_on_elementwise_functions(case):
    """Equation 9: an elementwise nonlinearity hands its relevance on unchanged, R_x = R_y,
    also when an exporter wrote it out as a gate x * f(x)."""
    if case.endswith("_chain"):
        nodes, initializers = {"gelu_chain": _gelu_nodes, "silu_chain": _silu_nodes,
                               "inverse_chain": _inverse_nodes}[case]()
        opset = 17
    else:
        nodes, initializers = [helper.make_node(case, ["x"], ["y"])], []
        opset = 20
    model = one_op_model(nodes, {"x": ["n", 5]}, ["n", 5], opset, initializers)
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    seed = RNG.standard_normal((4, 5)).astype(np.float32)
    y = onnxplain.Explainer(model, providers="cpu").forward({"x": x})["y"]
    np.testing.assert_allclose(relevance(model, {"x": x}, seed)["x"], y * seed, rtol=1e-5,
                               atol=1e-7)


def test_identity_rule_is_zero_where_the_input_is_zero():
    model = one_op_model([helper.make_node("Sigmoid", ["x"], ["y"])], {"x": ["n", 3]}, ["n", 3])
    x = np.array([[0.0, 1.0, -2.0]], np.float32)
    got = relevance(model, {"x": x}, np.ones_like(x))["x"]
    assert np.all(np.isfinite(got)) and got[0, 0] == 0
    # A row that is 0 everywhere gets an all-zero map: warned of, never shown as a result.
    zeros = np.zeros((2, 3), np.float32)
    with pytest.warns(AttributionWarning, match="every attribution is 0 in rows 0, 1"):
        result = onnxplain.Explainer(model, providers="cpu").explain(
            zeros, "attn_lrp", output_seed=np.ones((2, 3), np.float32))
    assert not np.any(result.attributions["x"])


@pytest.mark.parametrize("op", ["MatMul", "Mul", "Einsum"])
def test_uniform_rule_on_products_of_activations(op):
    """Equation 7 with the epsilon rule: each operand of z = a b gets half of its
    contribution, R_a[i, k] = sum_j a_ik b_kj R_ij / (2 z_ij); for Mul, R_a = R_b = R_z / 2."""
    a = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    b = RNG.standard_normal((2, 4, 5) if op != "Mul" else (2, 3, 4)).astype(np.float32)
    attrs = {"equation": "nik,nkj->nij"} if op == "Einsum" else {}
    shape = ["n", 3, 5] if op != "Mul" else ["n", 3, 4]
    model = one_op_model([helper.make_node(op, ["a", "b"], ["y"], **attrs)],
                         {"a": ["n", 3, 4], "b": ["n", 4, 5] if op != "Mul" else ["n", 3, 4]},
                         shape, opset=17)
    z = a @ b if op != "Mul" else a * b
    seed = RNG.standard_normal(z.shape).astype(np.float32)
    r_z = z * seed
    got = relevance(model, {"a": a, "b": b}, seed)
    if op == "Mul":
        expected_a = expected_b = r_z / 2
    else:
        share = r_z / (2 * z)  # [n, i, j]
        expected_a = np.einsum("nik,nkj,nij->nik", a, b, share)
        expected_b = np.einsum("nik,nkj,nij->nkj", a, b, share)
    np.testing.assert_allclose(got["a"], expected_a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["b"], expected_b, rtol=1e-4, atol=1e-5)


def test_the_rules_do_not_depend_on_where_the_input_is_attributed():
    """z = h * (x W2) with h = x W1: attributed at h, the product still has two activation
    operands (both come from x), so h gets half of R_z, as when attributed at x."""
    w1, w2 = (numpy_helper.from_array(RNG.standard_normal((4, 4)).astype(np.float32), n)
              for n in ("w1", "w2"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("MatMul", ["x", "w2"], ["k"]),
             helper.make_node("Mul", ["h", "k"], ["y"])]
    model = one_op_model(nodes, {"x": ["n", 4]}, ["n", 4], initializers=[w1, w2])
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    seed = RNG.standard_normal((3, 4)).astype(np.float32)
    explainer = onnxplain.Explainer(model, providers="cpu", attribute_at={"x": "h"})
    result = explainer.explain(x, "attn_lrp", output_seed=seed)
    y = explainer.forward(x)["y"]
    np.testing.assert_allclose(result.attributions["x"], y * seed / 2, rtol=1e-4, atol=1e-6)


def test_gemm_bias_is_added_not_multiplied():
    """Gemm(a, b, c) with all three active: a and b share the product's gradient half and
    half; c, only added, keeps its own (R_c = c * g)."""
    # Four rows each: the engine reads axis 0 of every input as the batch.
    a, b, c = (RNG.standard_normal(s).astype(np.float32) for s in ((4, 4), (4, 5), (4, 5)))
    model = one_op_model([helper.make_node("Gemm", ["a", "b", "c"], ["y"])],
                         {"a": [4, 4], "b": [4, 5], "c": [4, 5]}, [4, 5])
    seed = RNG.standard_normal((4, 5)).astype(np.float32)
    got = relevance(model, {"a": a, "b": b, "c": c}, seed)
    np.testing.assert_allclose(got["a"], a * (seed / 2 @ b.T), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["b"], b * (a.T @ seed / 2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["c"], c * seed, rtol=1e-5, atol=1e-7)


def _layer_norm_chain(eps: float):
    """LayerNorm written out as the legacy exporter writes it (no scale, no shift)."""
    c = [numpy_helper.from_array(np.array(v, np.float32), n)
         for n, v in (("two", 2.0), ("eps", eps))]
    return [helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
            helper.make_node("Sub", ["x", "mu"], ["c"]),
            helper.make_node("Pow", ["c", "two"], ["sq"]),
            helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
            helper.make_node("Add", ["var", "eps"], ["v"]),
            helper.make_node("Sqrt", ["v"], ["sd"]),
            helper.make_node("Div", ["c", "sd"], ["y"])], c


@pytest.mark.parametrize("form", ["LayerNormalization", "chain", "RMSNormalization"])
def test_normalisations_are_linear_with_the_scale_held(form):
    """The identity rule on the normalisation: y = M x with M = r gamma (I - 1 1^T / n) for
    LayerNorm (M = r gamma I for RMSNorm), r held; then the epsilon rule on that linear map,
    R_x_j = sum_k x_j M_kj R_k / y_k, conserves relevance without a shift."""
    n, eps = 6, 1e-5
    gamma = RNG.uniform(0.5, 1.5, n).astype(np.float32)
    if form == "chain":
        nodes, inits = _layer_norm_chain(eps)
        gamma = np.ones(n, np.float32)
    else:
        inits = [numpy_helper.from_array(gamma, "gamma"),
                 numpy_helper.from_array(np.zeros(n, np.float32), "beta")]
        ins = ["x", "gamma", "beta"] if form == "LayerNormalization" else ["x", "gamma"]
        nodes = [helper.make_node(form, ins, ["y"], axis=-1, epsilon=eps)]
    opset = 23 if form == "RMSNormalization" else 17
    model = one_op_model(nodes, {"x": ["r", n]}, ["r", n], opset, inits)
    x = RNG.standard_normal((3, n)).astype(np.float32)
    seed = RNG.standard_normal((3, n)).astype(np.float32)
    got = relevance(model, {"x": x}, seed)["x"]
    for row in range(3):
        xr = x[row].astype(np.float64)
        if form == "RMSNormalization":
            mix = np.eye(n) / np.sqrt((xr ** 2).mean() + eps)
        else:
            mix = (np.eye(n) - 1 / n) / np.sqrt(xr.var() + eps)
        m = gamma[:, None] * mix  # M_kj
        y = m @ xr
        r_y = y * seed[row]
        expected = (xr[None, :] * m * (r_y / y)[:, None]).sum(0)
        np.testing.assert_allclose(got[row], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got[row].sum(), r_y.sum(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("op, reason", [("Div", "division of two activations"),
                                        ("LogSoftmax", "outputs the logits")])
def test_ops_without_a_rule_are_refused_by_name(op, reason):
    nodes = [helper.make_node("Exp", ["x"], ["e"]),
             helper.make_node("Div", ["x", "e"], ["y"], name="ratio")] if op == "Div" else \
        [helper.make_node("LogSoftmax", ["x"], ["y"], name="ratio", axis=-1)]
    model = one_op_model(nodes, {"x": ["n", 4]}, ["n", 4])
    with pytest.raises(UnsupportedOpError, match=f"'ratio'.*{reason}"):
        onnxplain.Explainer(model, providers="cpu").explain(
            RNG.standard_normal((2, 4)).astype(np.float32), "attn_lrp")


# ---- the method on the zoo --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_equals_input_x_gradient_where_every_rule_is_the_gradient(zoo, name):
    """ReLU networks with max pools: every rule reduces to the gradient."""
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    feeds = zoo.sample(name)
    ours = explainer.explain(feeds, "attn_lrp")
    expected = explainer.explain(feeds, "input_x_gradient")
    for key, value in expected.attributions.items():
        np.testing.assert_allclose(ours.attributions[key], value, rtol=1e-5,
                                   atol=1e-6 * np.abs(value).max())
    np.testing.assert_allclose(ours.extras["input_relevance"],
                               [v.reshape(len(v), -1).sum(1) for v in ours.attributions.values()
                                ][0], rtol=1e-5)


# Each optimised, fused, float16 or newer-opset export against the plain export of the same
# weights: the canonical passes lower fused ops, so the rules see the same computation.
SAME_MODEL = [("bert_small_ort", "bert_small", 1e-4), ("bert_small_ort_mha", "bert_small", 1e-4),
              ("bert_small_attention23", "bert_small", 1e-4),
              ("bert_small_dynamo", "bert_small", 1e-4), ("bert_small_sdpa", "bert_small", 1e-4),
              ("bert_small_opset14", "bert_small", 1e-4), ("vit_small_ort", "vit_small", 1e-4),
              ("gpt2_tiny_ort", "gpt2_tiny", 1e-4),
              ("qwen2_tiny_opset23", "qwen2_tiny_opset18", 1e-4),
              ("bert_small_fp16", "bert_small", 3e-2)]


@pytest.mark.parametrize("variant, plain, tolerance", SAME_MODEL)
def test_optimised_exports_explain_as_the_plain_one(zoo, variant, plain, tolerance):
    feeds = zoo.sample(plain)
    base = onnxplain.Explainer(zoo.model_path(plain), providers="cpu").explain(feeds, "attn_lrp")
    other = onnxplain.Explainer(zoo.model_path(variant), providers="cpu").explain(
        zoo.sample(variant), "attn_lrp", target=base.target)
    for key, expected in base.attributions.items():
        assert np.abs(expected).max() > 0
        got = other.attributions[key].astype(np.float64)
        scale = np.abs(expected).max(axis=tuple(range(1, expected.ndim)), keepdims=True)
        assert np.abs(got - expected).max(initial=0.0, where=scale > 0) <= tolerance * \
            scale.max(), f"{variant} {key}"


def test_recurrent_models_are_refused_by_name(zoo):
    explainer = onnxplain.Explainer(zoo.model_path("lstm_tokens_tiny"), providers="cpu")
    with pytest.raises(UnsupportedOpError, match="LSTM.*recurrent"):
        explainer.explain(zoo.sample("lstm_tokens_tiny"), "attn_lrp")


@pytest.mark.parametrize("name", ["vit_small", "digits_cnn"])
def test_exported_explainer_equals_in_process(zoo, name):
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    feeds = {k: v[:3] for k, v in zoo.sample(name).items()}
    got = _run(export_explainer(explainer.model, "attn_lrp"), feeds)
    expected = explainer.explain(feeds, "attn_lrp")
    for source in explainer.sources:
        np.testing.assert_array_equal(got["attribution/" + source.input],
                                      expected.attributions[source.input])
    np.testing.assert_array_equal(got["output_relevance"], expected.extras["output_relevance"]
                                  .astype(got["output_relevance"].dtype))


@pytest.mark.parametrize("name", ["bert_small", "llama_tiny_opset23"])
def test_batch_equals_rows(zoo, name):
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    feeds = zoo.sample(name)
    batch = explainer.explain(feeds, "attn_lrp")
    for row in range(len(batch.target)):
        single = explainer.explain({k: v[row:row + 1] for k, v in feeds.items()}, "attn_lrp",
                                   target=int(batch.target[row]))
        for key, value in batch.attributions.items():
            np.testing.assert_allclose(single.attributions[key][0], value[row], rtol=1e-4,
                                       atol=1e-5 * np.abs(value[row]).max())
