"""Small leftovers of issue 19: one padding rule (numpy and ONNX agree), feature masks refuse
negative ids, Kernel SHAP's matrix check sized by the coalitions it scores, a recurrent
layer's lengths input checked against the sequence length, and `onnxplain.generate` no
longer shadowing a module of the same name."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxplain
from onnxplain import Explainer
from onnxplain.errors import AttributionWarning, InputError
from onnxplain.export.designs import check_matrix
from onnxplain.features import feature_mask, row_masks
from onnxplain.graph.builder import GraphBuilder
from onnxplain.graph.padding import real_positions, real_positions_in_graph
from onnxplain.graph.shapes import TensorInfo

from .cli_helpers import run

# ---- a. the padding rule, numpy and ONNX ------------------------------------------------------

ROWS, LENGTH, PAST = 3, 5, 2


def _masks(dtype) -> dict[str, np.ndarray]:
    """Two masks: one of the T positions, one of a KV cache (P cached, then the T new)."""
    rng = np.random.default_rng(0)
    return {"own": (rng.random((ROWS, LENGTH)) > 0.3).astype(dtype),
            "cache": (rng.random((ROWS, PAST + LENGTH)) > 0.3).astype(dtype)}


def _in_graph(feeds: dict[str, np.ndarray], names: list[str], cached: bool) -> np.ndarray:
    """real_positions_in_graph run under ONNX Runtime on `feeds`."""
    dtype = helper.np_dtype_to_tensor_dtype(feeds[names[0]].dtype)
    inputs = [helper.make_tensor_value_info(n, dtype, [ROWS, None]) for n in names]
    width = helper.make_tensor_value_info("width", TensorProto.INT64, [1])
    graph = helper.make_graph([], "padding", inputs + [width], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    infos = {n: TensorInfo(dtype, (ROWS, None)) for n in names}
    infos["width"] = TensorInfo(TensorProto.INT64, (1,))
    b = GraphBuilder(model, infos)
    real = real_positions_in_graph(b, names, "width" if cached else None)
    model.graph.output.append(helper.make_tensor_value_info(real, TensorProto.BOOL, None))
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {**{n: feeds[n] for n in names},
                              "width": np.array([LENGTH], np.int64)})[0]


@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_the_padding_rule_is_the_same_in_numpy_and_in_onnx(dtype):
    feeds = _masks(dtype)
    own, cache = feeds["own"] != 0, feeds["cache"][:, PAST:] != 0
    # Not cached: only masks of the T positions themselves.
    np.testing.assert_array_equal(real_positions(feeds, ["own", "cache"], ROWS, LENGTH, False),
                                  own)
    np.testing.assert_array_equal(_in_graph(feeds, ["own"], False), own)
    # Cached: a longer mask's last T columns too.
    both = real_positions(feeds, ["own", "cache"], ROWS, LENGTH, True)
    np.testing.assert_array_equal(both, own & cache)
    np.testing.assert_array_equal(_in_graph(feeds, ["own", "cache"], True), both)


def test_the_padding_rule_skips_what_is_no_mask_of_these_rows():
    feeds = {"short": np.zeros((ROWS, LENGTH - 1)), "other_rows": np.zeros((ROWS + 1, LENGTH)),
             "flat": np.zeros(ROWS)}
    real = real_positions(feeds, [*feeds, "absent"], ROWS, LENGTH, True)
    assert real.all() and real.shape == (ROWS, LENGTH)
    assert real_positions_in_graph(None, [], None) is None  # no mask: no tensor


# ---- d. feature masks and Kernel SHAP's matrix --------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda mask: feature_mask(np.zeros(4), mask=mask),
    lambda mask: row_masks(np.zeros((2, 4)), mask)[1],
])
def test_a_negative_feature_id_is_refused_by_feature_mask_itself(call):
    with pytest.raises(InputError, match="^a feature mask holds feature ids >= 0, got -3: "
                       "give every element a feature") as error:
        call(np.array([0, -3, 1, 1]))
    assert "\n" not in str(error.value)
    np.testing.assert_array_equal(call(np.array([5, 0, 7, 7])), [1, 0, 2, 2])


def _linear_table(columns: int) -> onnx.ModelProto:
    w = onnx.numpy_helper.from_array(
        np.random.default_rng(columns).standard_normal((columns, 2)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "table",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", columns])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_kernel_shap_sizes_its_matrix_by_the_coalitions_it_enumerates():
    """4 features: every coalition (15) is scored whatever n_samples says, so a huge count
    holds no larger matrix and gives the same values (exact Shapley values of a linear
    model: w_i (x_i - 0) with baseline 0)."""
    check_matrix("kernel_shap", 4, 10**12, 1.0)  # 15 coalitions: far under 1 MB
    with pytest.raises(InputError, match="n_samples=1,000,000,000,000"):
        check_matrix("lime", 4, 10**12, 1.0)  # LIME fits on every sample it draws
    with pytest.raises(InputError, match="n_samples=1,000,000"):
        check_matrix("kernel_shap", 30, 10**6, 1.0)  # drawn: sized by n_samples
    model = _linear_table(4)
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    explainer = Explainer(model, progress=False)
    huge = explainer.explain(x, "kernel_shap", 0, n_samples=10**12, baseline=0.0)
    default = explainer.explain(x, "kernel_shap", 0, baseline=0.0)
    np.testing.assert_array_equal(huge.attributions["x"], default.attributions["x"])
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])[:, 0]
    np.testing.assert_allclose(huge.attributions["x"], x * w, rtol=1e-4, atol=1e-5)


# ---- e. a recurrent layer's lengths --------------------------------------------------------

@pytest.mark.parametrize("name, length", [("lstm_tokens_padded_tiny", 7),
                                          ("gru_features_padded_tiny", 6)])
@pytest.mark.parametrize("bad", ["over", "negative"])
def test_a_length_outside_the_sequence_is_one_line(zoo, name, length, bad):
    feeds = dict(zoo.sample(name))
    value = length + 1 if bad == "over" else -1
    feeds["lengths"] = np.array([2, value, length])  # the sequence's own length is fine
    message = (f"^input 'lengths' holds {value} at row 1, outside 0..{length} "
               fr"\(the sequence length is {length}: the recurrent layer's sequence_lens\)$")
    explainer = Explainer(str(zoo.model_path(name)), progress=False)
    with pytest.raises(InputError, match=message):
        explainer.explain(feeds, "saliency", 0)
    feeds["lengths"] = np.array([2, 0, length])  # 0..T is what ONNX Runtime runs
    with pytest.warns(AttributionWarning, match="every attribution is 0 in row 1"):
        result = explainer.explain(feeds, "saliency", 0)
    scores = result.attributions[next(iter(zoo.sample(name)))]
    assert not scores[1].any() and scores[0].any() and scores[2].any()  # row 1 reads nothing


def test_the_cli_refuses_a_length_outside_the_sequence_with_exit_2(zoo, tmp_path):
    name = "gru_features_padded_tiny"
    feeds = dict(zoo.sample(name))
    np.save(tmp_path / "f.npy", feeds["features"])
    np.save(tmp_path / "l.npy", np.array([2, 9, 1]))
    result = run("explain", str(zoo.model_path(name)), "-i", f"features={tmp_path / 'f.npy'}",
                 "-i", f"lengths={tmp_path / 'l.npy'}", "-m", "saliency", "-q", "-o",
                 str(tmp_path / "out"))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0] == ("error: input 'lengths' holds 9 at row 1, outside 0..6 (the sequence "
                        "length is 6: the recurrent layer's sequence_lens)"), lines[0]


# ---- f. onnxplain.generate -----------------------------------------------------------------

def test_generate_is_the_function_and_no_module_shadows_it():
    """`onnxplain.generate` is the function; its module is onnxplain.generation, so that
    `import onnxplain.X as m`, importlib and mock.patch all see the same object."""
    import importlib

    import onnxplain.generation as module

    assert callable(onnxplain.generate) and onnxplain.generate is module.generate
    assert onnxplain.Generation is module.Generation
    assert onnxplain.GenerationStep is module.GenerationStep
    assert importlib.import_module("onnxplain.generation") is module
    assert "onnxplain.generate" not in sys.modules
    assert onnxplain.generate.__module__ == "onnxplain.generation"
