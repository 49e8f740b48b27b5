"""The batch axis found from the dim name the inputs share (Model.batch): a voice-activity
detector's recurrent state [2, batch, H] has its rows on axis 1, its sample rate is one
scalar for every row. Oracles: a float64 numpy reference and its finite differences; a
batch equals its rows explained one at a time."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer, InputError
from onnxplain.graph.model import Model
from onnxplain.runtime.batching import RunPolicy

SEQ, HIDDEN = 6, 8


def vad_like() -> onnx.ModelProto:
    """x [batch, seq], state [2, batch, H], sr [] -> prob [batch, 1], stateN [2, batch, H]:
    h = tanh(x W1 + (state[0] * state[1]) * sr / 16000), prob = sigmoid(h w2)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((SEQ, HIDDEN)).astype(np.float32),
                                     "w1"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array(1 / 16000, np.float32), "per_hz")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["xw"]),
             helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
             helper.make_node("Gather", ["state", "one"], ["s1"], axis=0),
             helper.make_node("Mul", ["s0", "s1"], ["ss"]),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["srf", "per_hz"], ["scale"]),
             helper.make_node("Mul", ["ss", "scale"], ["mixed"]),
             helper.make_node("Add", ["xw", "mixed"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["prob"]),
             helper.make_node("Unsqueeze", ["h", "axis0"], ["h_"]),
             helper.make_node("Unsqueeze", ["s1", "axis0"], ["s1_"]),
             helper.make_node("Concat", ["h_", "s1_"], ["stateN"], axis=0)]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", HIDDEN]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", HIDDEN])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def reference(model: onnx.ModelProto, x, state, sr) -> np.ndarray:
    """prob [batch] in float64."""
    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    h = np.tanh(x @ w["w1"] + state[0] * state[1] * (float(sr) / 16000))
    return 1 / (1 + np.exp(-(h @ w["w2"])[:, 0]))


def numeric_grad(f, value: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d sum(f) / d value by central differences (f is per row, so this is per row)."""
    grad = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        up, down = value.copy(), value.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (f(up).sum() - f(down).sum()) / (2 * eps)
    return grad


@pytest.fixture(scope="module")
def case():
    model = vad_like()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((3, SEQ)).astype(np.float32),
             "state": rng.standard_normal((2, 3, HIDDEN)).astype(np.float32),
             "sr": np.array(16000, np.int64)}
    return model, Explainer(model, progress=False), feeds


def rows(feeds: dict, i: int) -> dict:
    return {"x": feeds["x"][i:i + 1], "state": feeds["state"][:, i:i + 1], "sr": feeds["sr"]}


def test_batch_symbol_places_rows_per_input(case):
    batch = Model.load(case[0]).batch
    assert batch.describe() == "symbolic"
    assert batch.of_inputs == {"state": 1, "sr": None}


def test_forward_joins_outputs_on_their_batch_axis(case):
    model, explainer, feeds = case
    # 3 rows in two runs: rows are split and joined
    out = explainer.engine.with_policy(RunPolicy(batch_size=2)).forward(feeds)
    want = reference(model, *(feeds[k].astype(np.float64) for k in ("x", "state")), 16000)
    np.testing.assert_allclose(out["prob"][:, 0], want, rtol=1e-5)
    assert out["stateN"].shape == (2, 3, HIDDEN)
    np.testing.assert_array_equal(out["stateN"][1], feeds["state"][1])


def test_saliency_matches_finite_differences(case):
    model, explainer, feeds = case
    x, state = (feeds[k].astype(np.float64) for k in ("x", "state"))
    got = explainer.explain(feeds, "saliency", batch_size=2, abs=False)
    want_x = numeric_grad(lambda v: reference(model, v, state, 16000), x)
    want_state = numeric_grad(lambda v: reference(model, x, v, 16000), state)
    np.testing.assert_allclose(got["x"], want_x, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["state"], want_state, rtol=1e-4, atol=1e-6)


def test_occlusion_batch_equals_singles_and_reference(case):
    model, explainer, feeds = case
    got = explainer.explain(feeds, "occlusion", input="x", window=2, baseline=0.0)["x"]
    for i in range(3):
        alone = explainer.explain(rows(feeds, i), "occlusion", input="x", window=2,
                                  baseline=0.0)["x"]
        np.testing.assert_allclose(got[i:i + 1], alone, rtol=1e-5, atol=1e-7)
    x, state = (feeds[k].astype(np.float64) for k in ("x", "state"))
    clean = reference(model, x, state, 16000)
    for start in range(0, SEQ, 2):  # the drop in the score with a window of x zeroed
        hidden = x.copy()
        hidden[:, start:start + 2] = 0
        drop = clean - reference(model, hidden, state, 16000)
        np.testing.assert_allclose(got[:, start], drop, rtol=1e-4, atol=1e-6)


def test_perturbing_an_input_batched_off_axis_0_is_refused(case):
    _, explainer, feeds = case
    with pytest.raises(InputError, match="rows on axis 1"):
        explainer.explain(feeds, "occlusion", input="state", window=2)


def test_rows_disagreeing_on_their_batch_axes_are_refused(case):
    _, explainer, feeds = case
    with pytest.raises(InputError, match=r"state: 2 \(axis 1\)"):
        explainer.explain({**feeds, "state": feeds["state"][:, :2]}, "saliency")


def test_methods_that_slice_axis_0_refuse_such_models(case):
    _, explainer, feeds = case
    with pytest.raises(InputError, match=r"smoothgrad takes every input's rows on axis 0, "
                                         r"but 'state' has its rows on axis 1, 'sr' is one"):
        explainer.explain(feeds, "smoothgrad")


def test_export_refuses_such_models(case):
    from onnxplain.exporter import export_explainer
    with pytest.raises(InputError, match="an exported explainer takes every input's rows on "
                                         "axis 0, but 'state' has its rows on axis 1"):
        export_explainer(case[0], "saliency")
