"""Outputs that are not one row per input row (issue 18): a determinant or a size of the whole
batch, a loss, Unique, ArgMin over the batch, integer casts, and outputs whose rows are not the
input's (Flatten, Tile, Concat, Squeeze over the batch axis). Each is either explained
correctly (it really is per row: checked against numpy) or refused in one typed line naming
the output, never an IndexError or an ONNX Runtime failure; forward runs return the model's
own outputs even when rows would run in chunks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import InputError, OnnxplainError, UnsupportedOpError
from onnxplain.inputs import prepare_inputs
from onnxplain.runtime.batching import RunPolicy
from tests.cli_helpers import run

ROWS = "its rows are not the input's rows"
INTEGERS = "holds integers, not scores"
METHODS = ("saliency", "occlusion", "rise")


def single_op(op: str, dims=("N", 3, 4), inputs=(), inits=(), opset: int = 21,
              **attrs) -> onnx.ModelProto:
    """x `dims` -> `op` -> y, its output declared as ONNX shape inference finds it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    node = helper.make_node(op, ["x", *(i.name for i in inputs), *(t.name for t in inits)],
                            ["y"], **attrs)
    graph = helper.make_graph([node], op, [x, *inputs], [helper.make_empty_tensor_value_info("y")],
                              list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    found = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    model.graph.output[0].CopyFrom(found["y"])
    return model


def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def data(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)


def labels_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("t", TensorProto.INT64, ["N"])


# name -> (model, its input, what the output is for the rows given: numpy)
NOT_PER_ROW = {
    "size": (lambda: single_op("Size"), data(2, 3, 4), lambda x: np.int64(x.size)),
    "argmin_batch": (lambda: single_op("ArgMin", axis=0), data(2, 3, 4),
                     lambda x: x.argmin(axis=0)[None]),
    "flatten_0": (lambda: single_op("Flatten", axis=0), data(2, 3, 4),
                  lambda x: x.reshape(1, -1)),
    "flatten_negative": (lambda: single_op("Flatten", axis=-1), data(2, 3, 4),
                         lambda x: x.reshape(-1, 4)),
    "tile_batch": (lambda: single_op("Tile", inits=[ints("r", [3, 1, 1])]), data(2, 3, 4),
                   lambda x: np.tile(x, (3, 1, 1))),
    "concat_-3": (lambda: single_op("Concat", inits=[numpy_helper.from_array(
        data(1, 3, 4), "c")], axis=-3), data(2, 3, 4),
        lambda x: np.concatenate([x, data(1, 3, 4)])),
    "squeeze_batch": (lambda: single_op("Squeeze", dims=(1, 3, 4), inits=[ints("a", [0])]),
                      data(1, 3, 4), lambda x: x[0]),
    "unique": (lambda: single_op("Unique", dims=("N", 3), sorted=1), data(2, 3),
               lambda x: np.unique(x)),
    "nll_mean": (lambda: single_op("NegativeLogLikelihoodLoss", dims=("N", 3),
                                   inputs=[labels_input()]),
                 {"x": data(2, 3), "t": np.array([0, 2])},
                 lambda f: np.float32(-(f["x"][0, 0] + f["x"][1, 2]) / 2)),
}
INTEGER = {
    "cast_int32": (lambda: single_op("Cast", to=TensorProto.INT32), data(2, 3, 4)),
    "bitcast_int32": (lambda: single_op("BitCast", opset=26, to=TensorProto.INT32),
                      data(2, 3, 4)),
}


def explainer(model: onnx.ModelProto) -> onnxplain.Explainer:
    return onnxplain.Explainer(model.SerializeToString(), progress=False)


def refused(call, *parts: str, error: type[OnnxplainError] = InputError,
            names_output: bool = True) -> str:
    """The one-line message of the `error` that `call` raises; it contains `parts` (and
    starts by naming output y where `names_output`)."""
    with pytest.raises(error) as caught:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    text = str(caught.value)
    assert len(text.splitlines()) == 1, text
    assert not names_output or text.startswith(("output 'y' ", "output y (")), text
    for part in parts:
        assert part in text, text
    return text


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(NOT_PER_ROW))
def test_outputs_without_a_row_per_input_row_are_refused(case, method):
    build, inputs, _ = NOT_PER_ROW[case]
    reason = INTEGERS if case == "argmin_batch" else ROWS  # int64 [1, 3, 4]: both hold
    error = InputError
    if (case, method) == ("unique", "saliency"):  # no gradient through Unique, said first
        reason, error = "no backward rule: ai.onnx::Unique", UnsupportedOpError
    text = refused(lambda: explainer(build()).explain(inputs, method=method), reason,
                   error=error, names_output=error is InputError)
    assert "ONNX Runtime" not in text


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(INTEGER))
def test_integer_outputs_are_never_read_as_scores(case, method):
    build, inputs = INTEGER[case]
    refused(lambda: explainer(build()).explain(inputs, method=method), INTEGERS)


@pytest.mark.parametrize("case", sorted(NOT_PER_ROW))
def test_forward_returns_the_models_output_in_one_run(case):
    """Rows that would run one at a time (batch_size 1) run together instead: joining the
    chunks of an output whose rows are not the input's would be wrong."""
    build, inputs, expected = NOT_PER_ROW[case]
    engine = explainer(build())
    feeds = prepare_inputs(engine.model, inputs)
    found = engine.engine.with_policy(RunPolicy(batch_size=1)).forward(feeds)["y"]
    want = expected(inputs)
    assert found.shape == np.shape(want)
    np.testing.assert_allclose(found, want, rtol=1e-6)


def test_rows_coupled_by_a_fixed_batch_are_refused_in_forward():
    """A fixed batch of 2 padded for one row: the padded row's values would be mixed in."""
    model = single_op("Flatten", dims=(2, 3, 4), axis=0)
    with pytest.raises(InputError, match="runs of fewer rows cannot be joined"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explainer(model).forward(data(1, 3, 4))


def test_per_row_flatten_with_a_negative_axis_is_explained():
    """Flatten at axis -2 of [N, 3, 4] keeps the rows: saliency of the predicted score is
    one at its element (d y[n, k] / d x = one-hot), in two runs of one row each."""
    x = data(2, 3, 4)
    engine = explainer(single_op("Flatten", axis=-2))
    found = engine.explain(x, method="saliency", batch_size=1).attributions["x"]
    hot = np.zeros((2, 12), dtype=np.float32)
    hot[np.arange(2), x.reshape(2, -1).argmax(axis=1)] = 1
    np.testing.assert_allclose(np.abs(found), hot.reshape(x.shape))


def test_per_row_determinant_is_occluded_as_numpy_does():
    """Det of [N, 2, 2] is one value per row: occlusion (window 1, baseline 0) credits each
    element with det(x) - det(x with it set to 0)."""
    x = data(2, 2, 2)
    found = explainer(single_op("Det", dims=("N", 2, 2))).explain(
        x, method="occlusion").attributions["x"]
    want = np.zeros_like(x, dtype=np.float64)
    for index in np.ndindex(x.shape):
        moved = x.astype(np.float64).copy()
        moved[index] = 0
        want[index] = np.linalg.det(x[index[0]]) - np.linalg.det(moved[index[0]])
    np.testing.assert_allclose(found, want, rtol=1e-4, atol=1e-6)


def test_per_row_loss_is_occluded_as_numpy_does():
    """NLL loss without reduction is one value per row: -x[n, t[n]]; occluding element
    (n, c) changes it by x[n, c] exactly where c = t[n]."""
    feeds = {"x": data(2, 3), "t": np.array([0, 2])}
    model = single_op("NegativeLogLikelihoodLoss", dims=("N", 3), inputs=[labels_input()],
                      reduction="none")
    found = explainer(model).explain(feeds, method="occlusion").attributions["x"]
    want = np.zeros((2, 3))
    want[np.arange(2), feeds["t"]] = -feeds["x"][np.arange(2), feeds["t"]]
    np.testing.assert_allclose(found, want, rtol=1e-5)


def test_argmin_labels_per_row_are_explained_as_labels():
    """ArgMin over the classes is a class label per row: occlusion credits an element with 1
    where zeroing it changes the chosen class."""
    x = data(2, 4)
    found = explainer(single_op("ArgMin", dims=("N", 4), axis=1, keepdims=0)).explain(
        x, method="occlusion").attributions["x"]
    want = np.zeros_like(x)
    for row, column in np.ndindex(x.shape):
        moved = x[row].copy()
        moved[column] = 0
        want[row, column] = float(moved.argmin() != x[row].argmin())
    np.testing.assert_array_equal(found, want)


@pytest.mark.parametrize("case", ["flatten_0", "tile_batch", "size", "cast_int32"])
def test_cli_refuses_in_one_line(tmp_path: Path, case):
    build, inputs = (NOT_PER_ROW[case][:2] if case in NOT_PER_ROW else INTEGER[case])
    onnx.save(build(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", inputs)
    out = tmp_path / "out"
    result = run("explain", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npy"), "-o",
                 str(out), "-q")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: output"), result.stderr
    assert (ROWS if case != "cast_int32" else INTEGERS) in lines[0]
    assert not out.exists()


def test_no_rows_for_a_fixed_batch_is_refused():
    """Zero rows cannot be padded to a fixed batch (there is no row to repeat)."""
    model = single_op("Flatten", dims=(2, 3, 4), axis=1)
    for method in ("saliency", "occlusion"):
        refused(lambda m=method: explainer(model).explain(np.zeros((0, 3, 4), np.float32),
                                                          method=m),
                "the inputs have no rows", names_output=False)


# [batch, k] integers no ArgMax or TopK made: read as class labels they would be nonsense (a
# BitCast's 1065353216 for 1.0 taken as a class index).
NOT_LABELS = {
    "bitcast_rows": lambda: single_op("BitCast", dims=("N", 3), opset=26, to=TensorProto.INT32),
    "cast_rows": lambda: single_op("Cast", dims=("N", 3), to=TensorProto.INT64),
    "cast_per_row": lambda: single_op("Cast", dims=("N",), to=TensorProto.INT32),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(NOT_LABELS))
def test_integers_no_argmax_made_are_not_read_as_labels(case, method):
    model = NOT_LABELS[case]()
    x = data(2, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]])
    refused(lambda: explainer(model).explain(x, method=method),
            "holds integers that no ArgMax or TopK makes")


def test_labels_through_a_cast_and_reshape_are_labels():
    """ArgMax -> Cast(int32) -> Unsqueeze is still a label head: occlusion explains it exactly
    as it explains the bare ArgMax (the same decisions, so the same drops)."""
    def head(extra: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("ArgMax", ["x"], ["a" if extra else "y"], axis=1, keepdims=0)]
        if extra:
            nodes += [helper.make_node("Cast", ["a"], ["c"], to=TensorProto.INT32),
                      helper.make_node("Unsqueeze", ["c", "one"], ["y"])]
        graph = helper.make_graph(
            nodes, "labels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
            [helper.make_tensor_value_info("y", TensorProto.INT32 if extra else TensorProto.INT64,
                                           ["N", 1] if extra else ["N"])], [ints("one", [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        model.ir_version = 10
        return model

    x = data(3, 5)
    bare = explainer(head(False)).explain(x, method="occlusion")
    wrapped = explainer(head(True)).explain(x, method="occlusion")
    np.testing.assert_array_equal(wrapped.target, x.argmax(axis=1))
    np.testing.assert_array_equal(wrapped.first, bare.first)
