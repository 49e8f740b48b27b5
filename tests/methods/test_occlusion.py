"""Occlusion against Captum's Occlusion on the same torch models (CNNs and an MLP), token-id
inputs against a direct loop, batch sizes and fixed-batch models, and bad options."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxplain
from onnxplain.errors import InputError

from ..conftest import require
from .test_captum_oracles import Case, max_relative_error


@pytest.mark.parametrize("name, window, stride", [
    ("digits_bn_cnn", 3, 1), ("digits_bn_cnn", 4, 4), ("resnet18_64", 16, 12),
    ("digits_mlp", 5, 3)])
def test_occlusion_matches_captum(zoo, name, window, stride):
    captum = require("captum.attr")
    case = Case(zoo, name)
    got = case.explainer.explain(case.x, "occlusion", target=case.targets, window=window,
                                 stride=stride, baseline=0.25)
    row = case.x.shape[1:]
    if len(row) == 3:
        shapes, strides = (row[0], window, window), (row[0], stride, stride)
    else:
        shapes, strides = (window,), (stride,)
    want = captum.Occlusion(case.module).attribute(
        case.torch.from_numpy(case.x), sliding_window_shapes=shapes, strides=strides,
        baselines=0.25, target=case.target_tensor())
    assert max_relative_error(got[case.input], want.detach().numpy()) < 1e-4
    assert np.array_equal(got.target, case.targets)


def _token_model() -> onnx.ModelProto:
    """ids [N, 5] -> logits [N, 2] from an embedding table: a nonlinear bag of tokens."""
    rng = np.random.default_rng(0)
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 3],
                               rng.standard_normal(30).astype(np.float32).tolist())
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 2],
                                rng.standard_normal(6).astype(np.float32).tolist())
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"]),
             helper.make_node("Tanh", ["emb"], ["act"]),
             helper.make_node("ReduceSum", ["act", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [table, weight, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=9)


def test_token_ids_are_occluded_one_token_at_a_time():
    model = _token_model()
    explainer = onnxplain.Explainer(model, providers="cpu")
    ids = np.array([[1, 4, 2, 7, 3], [5, 5, 0, 9, 8]], dtype=np.int64)
    got = explainer.explain(ids, "occlusion", target=[0, 1], baseline=0)["ids"]
    logits = explainer.forward(ids)["logits"]
    for row, target in enumerate([0, 1]):
        for token in range(5):
            occluded = ids[row:row + 1].copy()
            occluded[0, token] = 0
            drop = logits[row, target] - explainer.forward(occluded)["logits"][0, target]
            assert got[row, token] == pytest.approx(drop, rel=1e-5, abs=1e-6)


def test_batch_size_and_fixed_batch_give_the_same_maps(zoo, tmp_path):
    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu")
    x = zoo.sample("digits_cnn")["image"][:5]
    whole = explainer.explain(x, "occlusion", window=2, stride=2)["image"]
    chunked = explainer.explain(x, "occlusion", window=2, stride=2, batch_size=3)["image"]
    assert np.allclose(whole, chunked, atol=1e-6)
    proto = onnx.load(zoo.model_path("digits_cnn"))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.warns(onnxplain.BatchNotice):
        fixed = onnxplain.Explainer(proto, providers="cpu").explain(
            x, "occlusion", window=2, stride=2)["image"]
    assert np.allclose(whole, fixed, atol=1e-6)


@pytest.mark.parametrize("options, fragment", [
    ({"window": 0}, "'window' of method 'occlusion' expects one or two positive integers"),
    ({"window": 20}, "larger than the input row"),
    ({"baseline": "dark"}, "expects a float"),
    ({"baseline": np.zeros((2, 2))}, "does not broadcast to an input row"),
    ({"input": "nope"}, "unknown input 'nope'"),
])
def test_bad_options_are_one_line_errors(zoo, options, fragment):
    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu")
    x = zoo.sample("digits_cnn")["image"][:1]
    with pytest.raises(InputError, match=fragment):
        explainer.explain(x, "occlusion", **options)


def test_progress_bar_shows_on_long_runs_unless_silenced(zoo, capsys, monkeypatch):
    import onnxplain.runtime.progress as progress

    monkeypatch.setattr(progress, "PROGRESS_AFTER_S", 0.0)  # every run counts as long here
    x = zoo.sample("digits_cnn")["image"][:2]
    loud = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu")
    loud.explain(x, "occlusion", window=2, stride=2)
    err = capsys.readouterr().err
    assert "occlusion" in err
    loud.explain(x, "saliency", batch_size=1)
    assert "rows" in capsys.readouterr().err  # gradient runs in chunks show one too
    quiet = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu", progress=False)
    quiet.explain(x, "occlusion", window=2, stride=2)
    assert capsys.readouterr().err == ""


def test_progress_bars_never_nest():
    from onnxplain.runtime.progress import NoBar, progress_bar

    with progress_bar(True, 3, "outer") as outer:
        assert not isinstance(outer, NoBar)
        with progress_bar(True, 3, "inner") as inner:
            assert isinstance(inner, NoBar)
    with progress_bar(True, 3, "again") as again:
        assert not isinstance(again, NoBar)
    with progress_bar(False, 3, "off") as off:
        assert isinstance(off, NoBar)
