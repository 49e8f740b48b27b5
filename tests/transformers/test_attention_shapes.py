"""Attention maps that are not [tokens, tokens]: keys longer than queries (a KV cache), fewer
or more keys from another input (cross-attention, pooled keys). Methods that chain the maps
of several layers refuse them with one line naming the layers (never an ONNX Runtime error);
square maps whose shapes only the run shows still chain, as the numpy rollout says."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain

CHAINED = ("rollout", "transformer_attribution", "attgrad", "generic_attention")
D, LAYERS = 8, 2


def _model(kind: str) -> onnx.ModelProto:
    """Two single-head attention layers with residuals over float features x [batch, seq, D];
    kind "cache": K, V = concat(past_k_l, past_v_l before the new ones); "cross": K, V from
    the input `memory` [batch, keys, D]; "square": plain self-attention. Same weights."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([1], np.int64), "one")]

    def weight(name: str, shape: tuple[int, int]) -> str:
        value = (rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32)
        inits.append(numpy_helper.from_array(value, name))
        return name

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", D])]
    if kind == "cross":
        inputs.append(helper.make_tensor_value_info("memory", TensorProto.FLOAT,
                                                    ["batch", "keys", D]))
    nodes, h = [], "x"
    for i in range(LAYERS):
        src = "memory" if kind == "cross" else h
        nodes += [helper.make_node("MatMul", [h, weight(f"wq{i}", (D, D))], [f"q{i}"]),
                  helper.make_node("MatMul", [src, weight(f"wk{i}", (D, D))], [f"kn{i}"]),
                  helper.make_node("MatMul", [src, weight(f"wv{i}", (D, D))], [f"vn{i}"])]
        for t in ("k", "v"):
            if kind == "cache":
                inputs.append(helper.make_tensor_value_info(f"past_{t}{i}", TensorProto.FLOAT,
                                                            ["batch", "past", D]))
                nodes.append(helper.make_node("Concat", [f"past_{t}{i}", f"{t}n{i}"],
                                              [f"{t}{i}"], axis=1))
            else:
                nodes.append(helper.make_node("Identity", [f"{t}n{i}"], [f"{t}{i}"]))
        nodes += [helper.make_node("Unsqueeze", [f"{t}{i}", "one"], [f"{t}4{i}"])
                  for t in ("q", "k", "v")]
        nodes += [helper.make_node("Transpose", [f"k4{i}"], [f"kt{i}"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", [f"q4{i}", f"kt{i}"], [f"s{i}"]),
                  helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], axis=-1),
                  helper.make_node("MatMul", [f"p{i}", f"v4{i}"], [f"y4{i}"]),
                  helper.make_node("Squeeze", [f"y4{i}", "one"], [f"y{i}"]),
                  helper.make_node("Add", [h, f"y{i}"], [f"h{i}"])]
        h = f"h{i}"
    nodes += [helper.make_node("ReduceMean", [h, "one"], ["pooled"], keepdims=0),
              helper.make_node("MatMul", ["pooled", weight("wo", (D, 3))], ["logits"])]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph(nodes, kind, inputs, [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _feeds(kind: str, past: int = 3, keys: int = 4, batch: int = 2, sequence: int = 5
           ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(batch, sequence, D)).astype(np.float32)}
    if kind == "cross":
        feeds["memory"] = rng.normal(size=(batch, keys, D)).astype(np.float32)
    if kind == "cache":
        feeds.update({f"past_{t}{i}": rng.normal(size=(batch, past, D)).astype(np.float32)
                      for i in range(LAYERS) for t in ("k", "v")})
    return feeds


@pytest.mark.parametrize("method", CHAINED)
@pytest.mark.parametrize(("kind", "sizes"), [("cache", {"past": 3}), ("cross", {"keys": 4}),
                                             ("cross", {"keys": 7})])
def test_non_square_maps_are_refused_naming_the_layers(kind, sizes, method):
    explainer = onnxplain.Explainer(_model(kind), progress=False)
    with pytest.raises(onnxplain.InputError) as caught:
        explainer.explain(_feeds(kind, **sizes), method, target=0, query=0)
    message = str(caught.value)
    assert "\n" not in message and "ONNXRuntimeError" not in message
    assert "'p0'" in message and "'p1'" in message and "5 queries" in message


@pytest.mark.parametrize(("method", "named"), [("raw_attention", ("'p0'", "'p1'")),
                                               ("partial_lrp", ("'p1'",))])
def test_methods_reading_one_row_refuse_non_square_maps_too(method, named):
    """Their scores are per key: with a cache they would be laid on the wrong tokens."""
    explainer = onnxplain.Explainer(_model("cache"), progress=False)
    with pytest.raises(onnxplain.InputError) as caught:
        explainer.explain(_feeds("cache", past=3), method, target=0, query=0)
    message = str(caught.value)
    assert "\n" not in message and all(name in message for name in named)


def _numpy_rollout(maps: list[np.ndarray], query: int) -> np.ndarray:
    v = None
    for a in reversed(maps):
        m = a.mean(axis=1) + np.eye(a.shape[-1])
        m = m / m.sum(axis=-1, keepdims=True)
        v = m[:, query] if v is None else np.einsum("ns,nst->nt", v, m)
    return v


def test_square_maps_known_only_at_run_time_chain():
    """A cache of length 0: the static shapes say 'past + sequence' keys, the run says square;
    the rollout equals the numpy one on the plain self-attention model's maps."""
    square = onnxplain.Explainer(_model("square"), progress=False)
    feeds = _feeds("square")
    maps = square.explain(feeds, "raw_attention", target=0, query=0).tensors
    expected = _numpy_rollout([maps[f"attention/{i}"].astype(np.float64)
                               for i in range(LAYERS)], 0)
    cache = onnxplain.Explainer(_model("cache"), progress=False)
    ours = cache.explain(_feeds("cache", past=0), "rollout", target=0, query=0)
    tokens = ours.tensors["tokens"]
    np.testing.assert_allclose(tokens[:, 1:], expected[:, 1:], rtol=1e-5, atol=1e-6)
    assert np.abs(tokens[:, 1:]).max() > 0
