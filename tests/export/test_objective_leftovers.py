"""Leftovers of issue 19 around objectives, tokens and the engine: one padding rule for every
token program (export.attention.real_tokens) against its numpy twin, the `target` input
declared one way (ExplainerGraph.declare_target), a Loop's rows per iteration fed to one
program whatever the value (methods._graph.rows_fed), and Engine.gradients returning the
model's tensor outputs only (a sequence output cannot be joined across row chunks)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer
from onnxplain.export import emit_explainer
from onnxplain.export.attention import real_tokens
from onnxplain.export.graph import TARGET, ExplainerGraph
from onnxplain.export.loop import ROWS_PER_ITERATION
from onnxplain.graph.model import Model
from onnxplain.methods._graph import rows_fed
from onnxplain.methods._tokens import padding_mask
from onnxplain.methods.export_options import exported_options


def _model(nodes, inputs, outputs, initializers=()) -> Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 9
    return Model.load(proto.SerializeToString())


def _run(eg: ExplainerGraph, feeds: dict, names: list[str]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # an optional input is an "initializer in graph inputs"
    session = ort.InferenceSession(eg.proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


# ---- a. one padding rule --------------------------------------------------------------

def _token_graph() -> ExplainerGraph:
    """ids [N, S]; masks: a KV cache's [N, P + S] int64, a [N, S] float one, and a rank-3
    bias that is no padding mask."""
    value = helper.make_tensor_value_info
    model = _model([helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)],
                   [value("ids", TensorProto.INT64, ["N", "S"]),
                    value("mask", TensorProto.INT64, ["N", "K"]),
                    value("other", TensorProto.FLOAT, ["N", "S"]),
                    value("bias", TensorProto.FLOAT, ["N", "S", "S"])],
                   [value("y", TensorProto.FLOAT, ["N", "S"])])
    return ExplainerGraph(model, "y", any_output=True)


def test_the_padding_mask_is_the_in_process_rule():
    """The graph's padding mask equals methods._tokens.padding_mask (numpy, the cut-model
    path) and the rule written out: a mask's last S columns, every mask's zeros."""
    rng = np.random.default_rng(0)
    rows, past, tokens = 4, 3, 5
    feeds = {"ids": rng.integers(0, 9, (rows, tokens)),
             "mask": rng.integers(0, 2, (rows, past + tokens)),
             "other": rng.integers(0, 2, (rows, tokens)).astype(np.float32),
             "bias": rng.normal(size=(rows, tokens, tokens)).astype(np.float32)}
    names = ("mask", "other", "bias", "not_an_input")
    eg = _token_graph()
    real = real_tokens(eg, names, eg.b.dim("ids", 1))
    eg.declare(real, "real", "real tokens")
    (got,) = _run(eg, feeds, ["real"])
    expected = (feeds["mask"][:, past:] != 0) & (feeds["other"] != 0)
    assert got.dtype == bool and 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(got, expected)
    layers = [SimpleNamespace(mask_inputs=names)]
    np.testing.assert_array_equal(got, padding_mask(feeds, layers, rows, tokens))


def test_no_mask_input_is_no_padding_mask():
    eg = _token_graph()
    assert real_tokens(eg, ("bias", "not_an_input"), eg.b.dim("ids", 1)) is None


# ---- b. the target input --------------------------------------------------------------

def test_the_target_input_is_declared_once_optional_with_minus_one():
    value = helper.make_tensor_value_info
    model = _model([helper.make_node("Relu", ["x"], ["y"])],
                   [value("x", TensorProto.FLOAT, ["N", 3])],
                   [value("y", TensorProto.FLOAT, ["N", 3])])
    eg = ExplainerGraph(model, "y")
    eg.declare_target()
    eg.declare_target()  # a second caller (a label objective, ExplainerGraph.target)
    assert [i.name for i in eg.proto.graph.input].count(TARGET) == 1
    eg.declare(eg.b.op("Identity", TARGET), "out", "the target as read")
    x = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(_run(eg, {"x": x}, ["out"])[0], [-1])
    chosen = np.array([2, 0], np.int64)
    np.testing.assert_array_equal(_run(eg, {"x": x, TARGET: chosen}, ["out"])[0], chosen)


# ---- c. rows per iteration: a feed of one program ------------------------------------

LOOPS = [("digits_cnn", "integrated_gradients", {"n_steps": 5}),
         ("digits_cnn", "smoothgrad", {"n_samples": 3}),
         ("digits_cnn", "vargrad", {"n_samples": 3}),
         ("bert_small", "layer_integrated_gradients", {"n_steps": 4})]


def _without_rows_default(proto) -> tuple[bytes, int]:
    """The program's bytes with the ROWS_PER_ITERATION default taken out, and that default."""
    proto = type(proto).FromString(proto.SerializeToString())
    (init,) = [i for i in proto.graph.initializer if i.name == ROWS_PER_ITERATION]
    default = int(numpy_helper.to_array(init))
    proto.graph.initializer.remove(init)
    return proto.SerializeToString(), default


@pytest.mark.parametrize("name,method,options", LOOPS)
def test_the_program_reads_rows_per_iteration_only_as_a_default(zoo, name, method, options):
    """rows_fed's premise, on the builders themselves: programs built for two values of
    internal_batch_size differ in nothing but the default of ROWS_PER_ITERATION."""
    model = Model.load(str(zoo.model_path(name)))
    output = model.outputs[0].name
    built = [_without_rows_default(emit_explainer(model, method, exported_options(
        method, {**options, "internal_batch_size": rows}), output).proto) for rows in (3, 40)]
    assert [default for _, default in built] == [3, 40]
    assert built[0][0] == built[1][0]


def test_two_row_counts_run_one_program_with_equal_results(zoo):
    """In process: another internal_batch_size is another feed (rows_fed), not another
    program, and the scores agree up to the summation order of the chunks (layer IG on a
    padded BERT: the token program's own path, methods.layer_integrated_gradients)."""
    explainer = Explainer(str(zoo.model_path("bert_small")), "cpu", progress=False)
    feeds = {k: v[:3].copy() for k, v in zoo.sample("bert_small").items()}
    feeds["attention_mask"][1, -4:] = 0
    engine = explainer.engine
    keyed, fed = rows_fed(engine, feeds, {"n_steps": 8, "internal_batch_size": 2})
    assert int(fed[ROWS_PER_ITERATION]) == 2
    assert rows_fed(engine, feeds, {"n_steps": 8, "internal_batch_size": 9})[0] == keyed
    runs = [explainer.explain(feeds, "layer_integrated_gradients", n_steps=8,
                              internal_batch_size=rows)["input_ids"] for rows in (3, 12)]
    programs = len(engine._programs) + sum(  # noqa: SLF001
        len(v) for v in engine._specialised.values())  # noqa: SLF001
    assert programs == 1
    scale = float(np.abs(runs[0]).max())
    assert scale > 0 and float(np.abs(runs[0] - runs[1]).max()) <= 1e-5 * scale
    np.testing.assert_array_equal(runs[0][1, -4:], 0)  # padding (real_tokens)


# ---- d. Engine.gradients: tensor outputs only ----------------------------------------

@pytest.fixture(scope="module")
def with_sequence():
    """y = x @ W, also returned as a one-tensor sequence (as skl2onnx's ZipMap returns
    maps next to the probabilities)."""
    weights = (np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5) / 7
    value = helper.make_tensor_value_info
    return weights, _model(
        [helper.make_node("MatMul", ["x", "W"], ["y"]),
         helper.make_node("SequenceConstruct", ["y"], ["seq"])],
        [value("x", TensorProto.FLOAT, ["N", 3])],
        [value("y", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights, "W")])


def test_gradients_return_the_tensor_outputs_joined_over_chunks(with_sequence):
    weights, model = with_sequence
    explainer = Explainer(model, "cpu", progress=False)
    x = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    target = np.array([0, 1, 1, 0, 1])
    whole = explainer.gradients(x, target)
    chunked = explainer.engine.with_policy(explainer.policy.derive(batch_size=2)).gradients(
        {"x": x}, target)
    for run in (whole, chunked):
        assert set(run.outputs) == set(explainer.forward(x)) == {"y"}
        np.testing.assert_allclose(run.outputs["y"], x @ weights, rtol=1e-6)
        np.testing.assert_array_equal(run.grads["x"], weights.T[target])  # d(x W)_c / dx
