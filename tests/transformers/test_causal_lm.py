"""Causal language models ([batch, sequence, vocabulary] logits): every family explains the
logit of the next token at the last non-padding position (objective.resolve_dense), and the
attention methods read that position's row.

Oracles: torch autograd (float64) of logits[row, last, token] on the original module; a
right-padded row equals the same prompt run alone without padding; rollout equals its numpy
recomputation from the tapped attention probabilities, read at the last row.
"""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from cli.outputs import describe_result

from ..conftest import require
from ..test_zoo_coverage import check_rollout, explainer, worst_row_error

GPT2 = ("gpt2_tiny", "gpt2_tiny_ort")
# float64 torch against float32 ONNX Runtime: measured 2e-6 of each row's largest |gradient|.
TOLERANCE = 1e-4


def _explainer(zoo, name: str) -> onnxplain.Explainer:
    return explainer(zoo.model_path(name))


def _torch_gradient(zoo, feeds: dict, positions, tokens) -> np.ndarray:
    """d(sum_rows logits[row, position, token]) / d(token embeddings), float64 torch."""
    torch = require("torch")
    module = zoo.load_torch("gpt2_tiny").double()
    captured = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        captured["embedding"] = output
        return output

    handle = module.model.transformer.wte.register_forward_hook(hook)
    logits = module(torch.from_numpy(feeds["input_ids"]),
                    torch.from_numpy(feeds["attention_mask"]))
    rows = torch.arange(len(tokens))
    logits[rows, torch.as_tensor(positions), torch.as_tensor(tokens)].sum().backward()
    handle.remove()
    return captured["embedding"].grad.numpy()


def _embedding_gradient(result) -> np.ndarray:
    return result.tensors[result.sources["input_ids"]]


def _right_padded(zoo) -> dict:
    """The sample with row 1's last two tokens turned into padding."""
    feeds = {k: v.copy() for k, v in zoo.sample("gpt2_tiny").items()}
    feeds["attention_mask"][1, -2:] = 0
    feeds["input_ids"][1, -2:] = 0
    return feeds


@pytest.mark.parametrize("name", GPT2)
def test_saliency_is_the_next_token_gradient_of_torch(zoo, name):
    feeds = zoo.sample(name)
    result = _explainer(zoo, name).explain(feeds, "saliency", abs=False)
    last = feeds["input_ids"].shape[1] - 1
    assert result.objective == "next_token"
    assert result.extras["explained_positions"] == [last, last]
    logits = result.outputs["logits"]
    np.testing.assert_array_equal(result.target, logits[:, last].argmax(axis=1))
    want = _torch_gradient(zoo, feeds, [last, last], result.target)
    assert worst_row_error(_embedding_gradient(result), want) < TOLERANCE


def test_a_target_names_the_next_token(zoo):
    feeds = zoo.sample("gpt2_tiny")
    result = _explainer(zoo, "gpt2_tiny").explain(feeds, "saliency", target=[5, 17],
                                                  abs=False)
    np.testing.assert_array_equal(result.target, [5, 17])
    np.testing.assert_allclose(result.target_score, result.outputs["logits"][[0, 1], -1,
                                                                               [5, 17]])
    want = _torch_gradient(zoo, feeds, [6, 6], [5, 17])
    assert worst_row_error(_embedding_gradient(result), want) < TOLERANCE


@pytest.mark.parametrize("method", ["saliency", "layer_integrated_gradients", "occlusion"])
def test_a_right_padded_row_equals_its_prompt_alone(zoo, method):
    """Row 1 ends at position 4: it is explained there, as the 5-token prompt alone is."""
    feeds = _right_padded(zoo)
    explainer = _explainer(zoo, "gpt2_tiny")
    options = {"saliency": {"abs": False}, "layer_integrated_gradients": {"n_steps": 16},
               "occlusion": {}}[method]
    padded = explainer.explain(feeds, method, **options)
    alone = explainer.explain({k: v[1:, :5] for k, v in feeds.items()}, method, **options)
    assert padded.extras["explained_positions"] == [6, 4]
    assert alone.extras["explained_positions"] == [4]
    assert padded.target[1] == alone.target[0]
    got = padded["input_ids"][1]
    np.testing.assert_allclose(got[:5], alone["input_ids"][0], rtol=1e-4, atol=1e-6)
    assert not np.any(got[5:])
    if method == "saliency":
        want = _torch_gradient(zoo, feeds, [6, 4], padded.target)
        assert worst_row_error(_embedding_gradient(padded), want) < TOLERANCE


@pytest.mark.parametrize("name", [*GPT2, "llama_tiny_opset23"])
def test_rollout_reads_the_last_row(zoo, name):
    """The first token's row sees itself alone (an all-zero map once its own entry is
    dropped); the last row's rollout is recomputed in numpy."""
    feeds = zoo.sample(name)
    explainer = _explainer(zoo, name)
    result = explainer.explain(feeds, "rollout")
    assert not [note for note in result.notes if "every attribution is 0" in note]
    last = feeds["input_ids"].shape[1] - 1
    assert result.extras["query"] == last
    assert np.all(np.any(result.first[:, :last] > 0, axis=1))
    check_rollout(explainer, feeds, result, query=last)


@pytest.mark.parametrize("method", ["rollout", "transformer_attribution"])
def test_rows_that_end_at_different_positions_read_each_its_own(zoo, method):
    """Right padding: each row's query row is its own last real token (read in the graph,
    export.attention._auto_row): the padded batch equals its rows explained alone."""
    explainer = _explainer(zoo, "gpt2_tiny")
    padded = _right_padded(zoo)
    batch = explainer.explain(padded, method)
    assert batch.extras["query"] == [6, 4]
    for row, count in enumerate([7, 5]):
        alone = explainer.explain({k: v[row:row + 1, :count] for k, v in padded.items()},
                                  method).attributions["input_ids"][0]
        assert np.abs(alone).max() > 0
        np.testing.assert_allclose(batch.attributions["input_ids"][row, :count], alone,
                                   rtol=1e-5, atol=1e-6 * np.abs(alone).max())
        assert not batch.attributions["input_ids"][row, count:].any()


def test_the_objective_is_stated(zoo):
    result = _explainer(zoo, "gpt2_tiny").explain(_right_padded(zoo), "saliency")
    summary = result.summary()
    assert summary["objective"] == "next_token"
    assert "next token at the last non-padding position" in summary["explained"]
    assert summary["extras"]["explained_positions"] == [6, 4]
    lines = describe_result(result)
    assert "next token" in lines[0]
    assert lines[2].startswith(f"row 1: token {int(result.target[1])} after position 4")


def test_a_sequence_output_without_token_ids_is_no_next_token_output():
    """[N, T, V] over float features (a CTC recogniser) is no next-token output: the
    predicted class at every position is explained, not some last position (objective)."""
    onnx = require("onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                                   [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    result = onnxplain.Explainer(model, "cpu").explain(np.ones((2, 3, 4), np.float32))
    assert result.objective == "sequence" and "explained_positions" not in result.extras
