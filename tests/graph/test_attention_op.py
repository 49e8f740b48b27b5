"""The Attention decomposition keeps every output of the op, runs with standard ops only, and
exposes a rank-4 Softmax that autodiff differentiates like the fused op's finite differences.

Oracles: ONNX Runtime's own Attention kernel on the original model, or onnx's reference
implementation where ONNX Runtime does not implement a combination (each such case says why);
central finite differences in float64; torch's scaled_dot_product_attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxplain
from onnxplain.errors import ModelError
from onnxplain.graph.attention_op import decompose_attention_ops
from onnxplain.graph.load import load_model

from ..conftest import require

F32, F16, F64, BOOL = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BOOL
ROLES = ("Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen")
OUTPUTS = ("Y", "present_key", "present_value", "qk_matmul_output")


@dataclass
class Case:
    id: str
    shapes: dict[str, list[int]]     # role -> shape; absent roles are absent inputs
    attrs: dict = field(default_factory=dict)
    dtype: int = F32
    mask_dtype: int = BOOL
    outputs: int = 1
    opset: int = 23
    oracle: str = "ort"              # "reference": onnx's ReferenceEvaluator (reason given)
    tol: float = 1e-5
    symbolic: bool = False           # every input dim unknown: the run-time shape paths


def q4(q=3, kv=5, heads=4, kv_heads=4, d=8, dv=8, batch=2) -> dict[str, list[int]]:
    return {"Q": [batch, heads, q, d], "K": [batch, kv_heads, kv, d],
            "V": [batch, kv_heads, kv, dv]}


def q3(q=3, kv=5, heads=4, kv_heads=4, d=8, dv=6, batch=2) -> dict[str, list[int]]:
    return {"Q": [batch, q, heads * d], "K": [batch, kv, kv_heads * d],
            "V": [batch, kv, kv_heads * dv]}


HEADS_3D = {"q_num_heads": 4, "kv_num_heads": 4}
PAST = {"past_key": [2, 4, 2, 8], "past_value": [2, 4, 2, 8]}

CASES = [
    Case("4d", q4()),
    Case("4d_scale", q4(), {"scale": 0.3}),
    Case("3d", q3(), HEADS_3D),
    Case("3d_scale", q3(), {**HEADS_3D, "scale": 0.7}),
    Case("3d_gqa", q3(kv_heads=2), {"q_num_heads": 4, "kv_num_heads": 2}),
    Case("4d_gqa", q4(kv_heads=2, dv=6)),
    Case("4d_mqa", q4(kv_heads=1)),
    Case("bool_mask", {**q4(), "attn_mask": [3, 5]}),
    Case("float_mask", {**q4(), "attn_mask": [2, 4, 3, 5]}, mask_dtype=F32),
    Case("float16_mask_float32_inputs", {**q4(), "attn_mask": [3, 5]}, mask_dtype=F16),
    Case("float_mask_broadcast", {**q4(), "attn_mask": [1, 4, 3, 5]}, mask_dtype=F32),
    Case("bool_mask_broadcast_3d", {**q3(), "attn_mask": [2, 1, 3, 5]}, HEADS_3D),
    # ONNX Runtime refuses masks that broadcast over the query axis: reference oracle.
    Case("float_mask_broadcast_queries", {**q4(), "attn_mask": [2, 1, 1, 5]}, mask_dtype=F32,
         oracle="reference"),
    Case("bool_mask_broadcast_queries_3d", {**q3(), "attn_mask": [2, 1, 1, 5]}, HEADS_3D,
         oracle="reference"),
    Case("causal_square", q4(q=4, kv=4), {"is_causal": 1}),
    # q_len != kv_len without a cache: offset 0, i.e. the top-left aligned triangle.
    Case("causal_q_shorter", q4(q=3, kv=5), {"is_causal": 1}),
    Case("causal_q_longer", q4(q=5, kv=3), {"is_causal": 1}),
    Case("causal_bool_mask", {**q4(q=4, kv=4), "attn_mask": [2, 1, 4, 4]}, {"is_causal": 1}),
    Case("causal_float_mask", {**q4(), "attn_mask": [3, 5]}, {"is_causal": 1}, mask_dtype=F32),
    Case("softcap", {**q4(), "attn_mask": [3, 5]}, {"softcap": 1.5}, mask_dtype=F32),
    Case("softcap_causal_3d_gqa", q3(kv_heads=2),
         {"q_num_heads": 4, "kv_num_heads": 2, "softcap": 2.0, "is_causal": 1}),
    # With a cache the causal triangle is bottom-right: query i sees keys j <= i + past_len.
    Case("past_causal", {**q4(q=3, kv=3), **PAST}, {"is_causal": 1}, outputs=3),
    Case("past_bool_mask", {**q4(q=3, kv=3), **PAST, "attn_mask": [2, 1, 3, 5]}, outputs=3),
    Case("past_3d_gqa", {**q3(q=2, kv=2, kv_heads=2, dv=8), "past_key": [2, 2, 3, 8],
                         "past_value": [2, 2, 3, 8], "attn_mask": [2, 5]},
         {"q_num_heads": 4, "kv_num_heads": 2, "is_causal": 1}, outputs=3),
    *[Case(f"qk_mode_{mode}", {**q4(), "attn_mask": [3, 5]},
           {"qk_matmul_output_mode": mode, "softcap": 2.0}, mask_dtype=F32, outputs=4)
      for mode in range(4)],
    Case("qk_mode_3_causal_past", {**q4(q=3, kv=3), **PAST},
         {"qk_matmul_output_mode": 3, "is_causal": 1}, outputs=4),
    # A query row whose mask is all False: zero probabilities and a zero output row, not NaN.
    Case("fully_masked_row", {**q4(), "attn_mask": [3, 5]}, {"qk_matmul_output_mode": 3},
         outputs=4),
    Case("fp16_causal_mask", {**q4(), "attn_mask": [3, 5]}, {"is_causal": 1}, dtype=F16,
         tol=2e-3),
    Case("fp16_3d_softcap", q3(), {**HEADS_3D, "softcap": 3.0}, dtype=F16, mask_dtype=F16,
         tol=2e-3),
    Case("fp16_softmax_float", {**q4(), "attn_mask": [3, 5]}, {"softmax_precision": F32},
         dtype=F16, mask_dtype=F16, tol=2e-3),
    Case("double", {**q4(), "attn_mask": [3, 5]}, {"is_causal": 1, "softcap": 2.0}, dtype=F64),
    # ONNX Runtime refuses a mask shorter than the total kv length, which the spec pads with
    # -inf (False): the reference implementation is the oracle.
    Case("short_bool_mask", {**q4(), "attn_mask": [2, 1, 3, 3]}, oracle="reference"),
    Case("short_float_mask_past", {**q4(q=3, kv=3), **PAST, "attn_mask": [3, 4]},
         {"is_causal": 1}, mask_dtype=F32, outputs=3, oracle="reference"),
    # Opset 24's external cache: keys j >= n[b] are padding, and the causal triangle is
    # shifted by n[b] - q_len per batch (negative: the leading rows are fully masked).
    Case("nonpad", {**q4(q=3, kv=6), "nonpad_kv_seqlen": [2]}, opset=24),
    Case("nonpad_causal_mask", {**q4(q=3, kv=6), "nonpad_kv_seqlen": [2],
                                "attn_mask": [3, 6]},
         {"is_causal": 1, "qk_matmul_output_mode": 3}, outputs=4, opset=24),
    # Nothing known before run time: head counts, head size, total length, mask length.
    Case("symbolic_4d_gqa_mask_causal", {**q4(kv_heads=2, dv=6), "attn_mask": [2, 1, 3, 5]},
         {"is_causal": 1, "softcap": 2.0}, symbolic=True),
    Case("symbolic_3d_gqa_past", {**q3(q=2, kv=2, kv_heads=2, dv=8), "past_key": [2, 2, 3, 8],
                                  "past_value": [2, 2, 3, 8], "attn_mask": [2, 5]},
         {"q_num_heads": 4, "kv_num_heads": 2, "is_causal": 1}, outputs=3, symbolic=True),
    Case("symbolic_short_mask_past", {**q4(q=3, kv=3), **PAST, "attn_mask": [3, 4]},
         {"qk_matmul_output_mode": 2}, mask_dtype=F32, outputs=4, symbolic=True,
         oracle="reference"),  # short mask: see above
    # Opset 25's sliding window: ONNX Runtime 1.31 rejects its attributes, so the reference.
    Case("window", q4(q=4, kv=6), {"left_window_size": 1, "right_window_size": 2}, opset=25,
         oracle="reference"),
    Case("window_causal_past", {**q4(q=3, kv=3), **PAST},
         {"left_window_size": 2, "is_causal": 1}, outputs=3, opset=25, oracle="reference"),
]


def attention_model(case: Case, name: str = "attn") -> onnx.ModelProto:
    inputs = [role if role in case.shapes else "" for role in ROLES]
    while not inputs[-1]:
        inputs.pop()
    node = helper.make_node("Attention", inputs, list(OUTPUTS[:case.outputs]), name=name,
                            **case.attrs)
    types = {"attn_mask": case.mask_dtype, "nonpad_kv_seqlen": TensorProto.INT64}
    ranks = [len(case.shapes["Q"]), 4, 4, 4]
    graph = helper.make_graph(
        [node], "attention",
        [helper.make_tensor_value_info(role, types.get(role, case.dtype), [
            f"{role}_{axis}" for axis in range(len(shape))] if case.symbolic else shape)
         for role, shape in case.shapes.items()],
        [helper.make_tensor_value_info(out, case.dtype, [None] * rank)
         for out, rank in zip(node.output, ranks, strict=False)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 10  # ONNX Runtime 1.31 refuses newer IR versions
    return model


def random_feeds(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for role, shape in case.shapes.items():
        if role == "nonpad_kv_seqlen":
            # Batch 1 has 2 valid keys for 3 queries: its causal offset is negative.
            feeds[role] = np.array([6, 2], dtype=np.int64)
        elif role == "attn_mask" and case.mask_dtype == BOOL:
            feeds[role] = rng.random(shape) > 0.3
            feeds[role][..., 0] = True
        else:
            dtype = helper.tensor_dtype_to_np_dtype(
                case.mask_dtype if role == "attn_mask" else case.dtype)
            feeds[role] = rng.standard_normal(shape).astype(dtype)
    if "attn_mask" in feeds and case.mask_dtype != BOOL:
        feeds["attn_mask"].reshape(-1)[::4] = -np.inf  # float masks also disable positions
    if case.id == "fully_masked_row":
        feeds["attn_mask"][1] = False
    return feeds


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def decomposed(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return decompose_attention_ops(copy)


def assert_decomposition_shape(model: onnx.ModelProto, names: list[str]) -> None:
    """Standard ops only, valid, and one rank-4 last-axis Softmax per Attention node that
    feeds a MatMul with V directly (or through the softmax_precision Cast)."""
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    assert not any(node.op_type == "Attention" for node in model.graph.node)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    softmaxes = [node for node in model.graph.node if node.op_type == "Softmax"]
    assert sorted(node.name for node in softmaxes) == sorted(f"{n}/softmax" for n in names)
    users = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for node in softmaxes:
        assert helper.get_attribute_value(node.attribute[0]) == -1
        assert ranks[node.output[0]] == 4
        tensor = node.output[0]
        while not any(u.op_type == "MatMul" and u.input[0] == tensor for u in users[tensor]):
            (cast,) = [u for u in users[tensor] if u.op_type == "Cast"]  # softmax_precision
            tensor = cast.output[0]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_decomposition_keeps_every_output(case):
    model = attention_model(case)
    feeds = random_feeds(case)
    if case.oracle == "ort":
        expected = ort_run(model, feeds)
    else:
        expected = ReferenceEvaluator(model).run(None, feeds)
    rewritten = decomposed(model)
    assert_decomposition_shape(rewritten, ["attn"])
    assert [o.name for o in rewritten.graph.output] == list(OUTPUTS[:case.outputs])
    got = ort_run(rewritten, feeds)
    assert len(got) == len(expected) == case.outputs
    for name, want, have in zip(OUTPUTS, expected, got, strict=False):
        assert have.dtype == want.dtype, name
        assert have.shape == want.shape, name
        assert not np.isnan(have).any(), name
        np.testing.assert_allclose(have.astype(np.float64), want.astype(np.float64),
                                   atol=case.tol, rtol=case.tol, err_msg=name)
    if case.id == "fully_masked_row":
        assert np.all(got[0][:, :, 1] == 0) and np.all(got[3][:, :, 1] == 0)


def test_a_short_mask_equals_its_false_padded_full_mask():
    """The positions past a short mask are masked (padded), not broadcast over."""
    case = next(c for c in CASES if c.id == "short_bool_mask")
    feeds = random_feeds(case)
    full = Case("full", {**case.shapes, "attn_mask": [2, 1, 3, 5]})
    padded = dict(feeds, attn_mask=np.concatenate(
        [feeds["attn_mask"], np.zeros((2, 1, 3, 2), dtype=bool)], axis=-1))
    short = ort_run(decomposed(attention_model(case)), feeds)[0]
    np.testing.assert_allclose(short, ort_run(attention_model(full), padded)[0], atol=1e-6)


def test_two_nodes_unnamed_keep_graph_order():
    """Unnamed nodes get `Attention_<index>` names; the graph stays topologically sorted."""
    case = Case("chain", q4(q=3, kv=3), {"is_causal": 1})
    model = attention_model(case)
    first = model.graph.node[0]
    first.name = ""
    second = helper.make_node("Attention", ["Y", "K", "V"], ["Z"])
    relu = helper.make_node("Relu", ["Z"], ["out"], name="relu")
    model.graph.node.extend([second, relu])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("out", F32, [None] * 4))
    feeds = random_feeds(case)
    expected = ort_run(model, feeds)
    rewritten = decomposed(model)
    assert_decomposition_shape(rewritten, ["Attention_0", "Attention_1"])
    assert rewritten.graph.node[-1].name == "relu"
    np.testing.assert_allclose(ort_run(rewritten, feeds)[0], expected[0], atol=1e-5)


@pytest.mark.parametrize("change, feature", [
    (lambda m: m.graph.node[0].attribute.pop(), "3-D inputs without q_num_heads"),
    (lambda m: m.graph.input[3].type.tensor_type.__setattr__("elem_type", TensorProto.INT64),
     "integer attn_mask"),
    (lambda m: m.graph.input[2].type.tensor_type.__setattr__("elem_type", F16),
     "different element types"),
    (lambda m: m.graph.node[0].attribute.append(helper.make_attribute(
        "qk_matmul_output_mode", 7)), "qk_matmul_output_mode=7"),
])
def test_unsupported_features_raise_one_line_model_errors(change, feature):
    model = attention_model(Case("bad", {**q3(), "attn_mask": [3, 5]}, HEADS_3D))
    change(model)
    before = model.SerializeToString()
    with pytest.raises(ModelError, match=f"^Attention node 'attn': .*{feature}.* is not "
                                         "supported$") as info:
        decompose_attention_ops(model)
    assert "\n" not in str(info.value)
    assert model.SerializeToString() == before  # nothing emitted before the refusal


def test_attention_in_a_subgraph_is_refused():
    inner = attention_model(Case("inner", q4())).graph
    inner.ClearField("input")  # the body reads Q, K, V from the outer scope
    branch = helper.make_node("If", ["cond"], ["Y"], then_branch=inner, else_branch=inner)
    model = attention_model(Case("outer", q4()))
    model.graph.ClearField("node")
    model.graph.node.append(branch)
    model.graph.input.append(helper.make_tensor_value_info("cond", BOOL, []))
    with pytest.raises(ModelError, match="^Attention node 'attn': Attention in a subgraph"):
        decompose_attention_ops(model)


def test_gradients_match_finite_differences_of_the_fused_op():
    """Q, K, V -> Attention (bool mask with a fully masked row, softcap) -> sum over heads and
    queries: onnxplain's gradients of the predicted class vs central differences in float64
    of the fused Attention, run by onnx's reference implementation (ONNX Runtime 1.31's
    float64 kernel returns NaN for a fully masked row, where the spec says zero)."""
    shape = [2, 2, 3, 4]
    mask = np.array([[True, False, True], [False, False, False], [True, True, False]])

    def model(dtype: int) -> onnx.ModelProto:
        nodes = [helper.make_node("Attention", ["Q", "K", "V", "mask"], ["Y"], name="attn",
                                  softcap=1.5),
                 helper.make_node("ReduceSum", ["Y", "axes"], ["logits"], keepdims=0)]
        graph = helper.make_graph(
            nodes, "explained",
            [helper.make_tensor_value_info(n, dtype, ["batch", *shape[1:]]) for n in "QKV"],
            [helper.make_tensor_value_info("logits", dtype, ["batch", 4])],
            [numpy_helper.from_array(mask, "mask"),
             numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
        proto.ir_version = 10
        return proto

    rng = np.random.default_rng(3)
    feeds = {n: rng.standard_normal(shape) for n in "QKV"}
    explainer = onnxplain.Explainer(model(F32), providers=["CPUExecutionProvider"])
    run = explainer.gradients({n: v.astype(np.float32) for n, v in feeds.items()},
                              target=None, wrt=["Q", "K", "V"])
    rows, eps = shape[0], 1e-6
    # Every ±eps perturbation of every element is a copy of the batch, all run at once.
    steps = np.eye(np.prod(shape)).reshape(-1, *shape) * eps
    batches = {n: [] for n in "QKV"}
    for name in "QKV":
        for step in np.concatenate([steps, -steps]):
            for n in "QKV":
                batches[n].append(feeds[n] + step if n == name else feeds[n])
    logits = ReferenceEvaluator(model(F64)).run(
        None, {n: np.concatenate(parts) for n, parts in batches.items()})[0]
    scores = logits.reshape(3, 2, -1, rows, 4)[..., np.arange(rows), run.target].sum(axis=-1)
    numeric = (scores[:, 0] - scores[:, 1]) / (2 * eps)
    for i, name in enumerate("QKV"):
        assert np.isfinite(run.grads[name]).all(), name
        np.testing.assert_allclose(run.grads[name], numeric[i].reshape(shape), atol=2e-5,
                                   rtol=1e-4, err_msg=name)
    assert np.all(run.grads["Q"][:, :, 1] == 0)  # the fully masked query has no influence


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
def test_torch_export_is_decomposed_on_load(tmp_path):
    """torch's dynamo exporter writes scaled_dot_product_attention as the Attention op at
    opset 23; onnxplain loads it decomposed and keeps torch's outputs."""
    torch = require("torch")

    class TwoAttentions(torch.nn.Module):
        def forward(self, q, k, v, mask):
            f = torch.nn.functional.scaled_dot_product_attention
            # GQA: 4 query heads over 2 kv heads (torch's enable_gqa repeats in place too).
            return (f(q, k, v, attn_mask=mask),
                    f(q, k[:, :1], v[:, :1], is_causal=True, enable_gqa=True))

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 3, 8, generator=gen)
    k, v = torch.randn(2, 2, 5, 8, generator=gen), torch.randn(2, 2, 5, 6, generator=gen)
    mask = torch.rand(2, 1, 3, 5, generator=gen) > 0.3
    mask[..., 0] = True
    path = tmp_path / "sdpa.onnx"
    torch.onnx.export(TwoAttentions().eval(), (q, k, v, mask), str(path), dynamo=True,
                      opset_version=23)
    exported = onnx.load(str(path))
    assert sum(node.op_type == "Attention" for node in exported.graph.node) == 2
    model, _ = load_model(path)
    assert not any(node.op_type == "Attention" for node in model.graph.node)
    assert sum(node.op_type == "Softmax" for node in model.graph.node) == 2
    with torch.no_grad():
        expected = TwoAttentions()(q, k, v, mask)
    feeds = {i.name: t.numpy() for i, t in zip(model.graph.input, (q, k, v, mask), strict=True)}
    for have, want in zip(ort_run(model, feeds), expected, strict=True):
        np.testing.assert_allclose(have, want.numpy(), atol=1e-5, rtol=1e-5)
