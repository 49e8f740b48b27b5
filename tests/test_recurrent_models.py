"""Explanations of LSTM, GRU and RNN exports through the public API against torch autograd
on the same torch modules (the oracle): saliency and Integrated Gradients over token
embeddings and over float features; a padded batch (sequence_lens) equals its rows
explained alone; LRP and DeepLIFT refuse recurrent nodes by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import UnsupportedOpError
from onnxplain.export.methods import path_points

from .conftest import require

MODELS = ["lstm_tokens_tiny", "gru_features_tiny", "rnn_features_tiny"]
TARGETS = np.array([1, 2])


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _torch_gradient(zoo, name: str, point: np.ndarray) -> np.ndarray:
    """d(sum_rows logit[row, target[row]]) / d(point), float64: the point is the features, or
    for the token model the embeddings (where onnxplain attributes token ids)."""
    torch = require("torch")
    module = zoo.load_torch(name).double()
    leaf = torch.from_numpy(point).double().requires_grad_(True)
    if name == "lstm_tokens_tiny":
        states, _ = module.lstm(leaf)
        logits = module.head(states[:, -1])
    else:
        logits = module(leaf)
    logits[torch.arange(len(TARGETS)), torch.from_numpy(TARGETS)].sum().backward()
    return leaf.grad.numpy()


def _point(zoo, name: str, sample: dict) -> np.ndarray:
    """The attributed tensor: the features, or the token embeddings."""
    torch = require("torch")
    (values,) = sample.values()
    if name != "lstm_tokens_tiny":
        return values.astype(np.float64)
    embed = zoo.load_torch(name).double().embed
    return embed(torch.from_numpy(values)).detach().numpy()


@pytest.mark.parametrize("name", MODELS)
def test_saliency_equals_torch_autograd(zoo, name):
    sample = zoo.sample(name)
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    result = explainer.explain(sample, target=TARGETS, abs=False)
    (key,) = sample
    got = result.tensors[result.sources[key]]
    want = _torch_gradient(zoo, name, _point(zoo, name, sample))
    assert got.shape == want.shape
    assert _relative(got, want) < 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_equal_torch(zoo, name):
    """IG from a zero baseline (on the embeddings for token ids: layer IG) with the same
    Gauss-Legendre points, from torch's gradients."""
    sample = zoo.sample(name)
    (key,) = sample
    tokens = name == "lstm_tokens_tiny"
    method = "layer_integrated_gradients" if tokens else "integrated_gradients"
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    result = explainer.explain(sample, method=method, target=TARGETS, n_steps=8)
    point = _point(zoo, name, sample)
    alphas, weights = path_points(8, "gausslegendre")
    path = sum(w * _torch_gradient(zoo, name, a * point)
               for a, w in zip(alphas, weights, strict=True))
    got = result.tensors[result.sources[key]] if tokens else result[key]
    assert _relative(got, point * path) < 1e-4


@pytest.mark.parametrize("method", ["lrp", "deeplift"])
def test_relevance_methods_refuse_recurrent_nodes(zoo, method):
    explainer = onnxplain.Explainer(zoo.model_path("gru_features_tiny"), providers="cpu")
    with pytest.raises(UnsupportedOpError, match="GRU"):
        explainer.explain(zoo.sample("gru_features_tiny"), method=method)


def _padded_lstm() -> onnx.ModelProto:
    """X [N, T, 3] (made time-major) and sequence_lens [N] -> bidirectional LSTM -> Y_h ->
    2 logits [N, 2]."""
    rng = np.random.default_rng(5)
    hidden = 4
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name)
             for name, shape in [("W", (2, 16, 3)), ("R", (2, 16, hidden)), ("B", (2, 32)),
                                 ("head", (2 * hidden, 2))]]
    inits.append(numpy_helper.from_array(np.array([-1, 2 * hidden], np.int64), "flat"))
    nodes = [helper.make_node("Transpose", ["X"], ["steps"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["steps", "W", "R", "B", "sequence_lens"], ["Y", "Y_h"],
                              name="lstm", hidden_size=hidden, direction="bidirectional"),
             helper.make_node("Transpose", ["Y_h"], ["rows"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["rows", "flat"], ["joined"]),
             helper.make_node("MatMul", ["joined", "head"], ["logits"])]
    graph = helper.make_graph(
        nodes, "padded_lstm",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "sequence", 3]),
         helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["batch"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_padded_batch_equals_rows_alone():
    """Rows padded (with noise) past their length: the padded steps get no attribution and
    each row's attribution equals that of the row alone, unpadded."""
    rng = np.random.default_rng(0)
    lengths = np.array([5, 2, 4], np.int32)
    x = rng.standard_normal((3, 5, 3)).astype(np.float32)
    explainer = onnxplain.Explainer(_padded_lstm(), providers="cpu")
    batch = explainer.explain({"X": x, "sequence_lens": lengths}, target=np.array([0, 1, 1]),
                              abs=False)
    for row, length in enumerate(lengths):
        alone = explainer.explain({"X": x[row:row + 1, :length],
                                   "sequence_lens": lengths[row:row + 1]},
                                  target=np.array([[0, 1, 1][row]]), abs=False)
        np.testing.assert_allclose(batch["X"][row, :length], alone["X"][0],
                                   rtol=1e-5, atol=1e-6)
        assert np.all(batch["X"][row, length:] == 0)
        assert np.abs(alone["X"]).min() > 0


def test_dynamo_export_saliency_equals_torch(tmp_path):
    """The dynamo exporter (opset 18) writes nn.LSTM as an LSTM node too."""
    torch = require("torch")
    import warnings

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True,
                                      batch_first=True)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            states, _ = self.lstm(x)
            return self.head(states.mean(1))

    torch.manual_seed(0)
    module, x = Tagger().eval(), torch.randn(2, 6, 5)
    path = tmp_path / "lstm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}
        torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_shapes=(dims,), opset_version=18, dynamo=True,
                          verbose=False)
    assert "LSTM" in {node.op_type for node in onnx.load(str(path)).graph.node}
    result = onnxplain.Explainer(path, providers="cpu").explain(
        {"x": x.numpy()}, target=TARGETS, abs=False)
    leaf = x.double().requires_grad_(True)
    logits = module.double()(leaf)
    logits[torch.arange(2), torch.from_numpy(TARGETS)].sum().backward()
    assert _relative(result["x"], leaf.grad.numpy()) < 1e-4
