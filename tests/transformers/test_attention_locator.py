"""The attention locator on real exports: legacy and dynamo exporters, eager and sdpa attention,
the opset-23 Attention op, ORT-fused graphs, overrides; and invariants every attention method
keeps: the same explanation whatever the export, padded tokens at zero, batch equals singles."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.describe import describe_model
from onnxplain.errors import InputError, ModelError
from onnxplain.graph.attention import find_attention
from onnxplain.graph.model import Model

METHODS = ["raw_attention", "rollout", "attgrad", "generic_attention", "partial_lrp",
           "transformer_attribution", "cat", "attncat", "layer_integrated_gradients"]
EXPORTS = ["bert_small_dynamo", "bert_small_sdpa", "bert_small_attention23"]


@pytest.fixture(scope="module")
def bert(zoo):
    return onnxplain.Explainer(zoo.model_path("bert_small")), zoo.sample("bert_small")


def _scores(attribution) -> np.ndarray:
    return attribution.attributions["input_ids"].astype(np.float64)


def _close(actual: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    scale = max(np.abs(expected).max(), 1e-30)
    assert np.abs(actual - expected).max() <= rtol * scale, (actual, expected)


def test_finds_every_layer_of_bert_and_vit(zoo):
    bert = find_attention(Model.load(zoo.model_path("bert_small")))
    assert [layer.index for layer in bert] == [0, 1]
    assert all(layer.heads == 4 and layer.mask_inputs == ("attention_mask",) for layer in bert)
    assert bert[0].hidden.endswith("embeddings/LayerNorm/LayerNormalization_output_0")
    assert "layer.0/output/LayerNorm" in bert[1].hidden  # post-norm: the block's output
    vit = find_attention(Model.load(zoo.model_path("vit_small")))
    assert len(vit) == 4 and all(layer.mask_inputs == () for layer in vit)
    # Pre-norm: the residual stream before the LayerNormalization feeding Q, K and V.
    assert vit[1].hidden.endswith("layers.0/Add_1_output_0")


@pytest.mark.parametrize("name", EXPORTS)
def test_other_exports_give_the_same_explanations(zoo, bert, name):
    """Dynamo opset 18, sdpa attention (Where masks, Q and K scaled apart) and the opset-23
    Attention op (decomposed on load) compute what the legacy eager export computes, so every
    method must agree with it."""
    legacy, sample = bert
    other = onnxplain.Explainer(zoo.model_path(name))
    assert len(find_attention(other.model)) == 2
    for method in METHODS:
        _close(_scores(other.explain(sample, method)), _scores(legacy.explain(sample, method)),
               1e-4)


def test_attention23_export_really_has_attention_ops(zoo):
    import onnx

    proto = onnx.load(zoo.model_path("bert_small_attention23"))
    assert [n.op_type for n in proto.graph.node].count("Attention") == 2


@pytest.mark.parametrize("method", METHODS)
def test_padding_is_zero_and_batch_equals_singles(bert, method):
    explainer, sample = bert
    batch = _scores(explainer.explain(sample, method))
    mask = sample["attention_mask"].astype(bool)
    assert np.all(batch[~mask] == 0)
    for row in range(len(mask)):
        length = int(mask[row].sum())
        single = {k: v[row:row + 1, :length] for k, v in sample.items()}
        alone = _scores(explainer.explain(single, method))[0]
        _close(batch[row, :length], alone, 1e-4)


def test_vit_patches_become_an_image_heatmap(zoo):
    explainer = onnxplain.Explainer(zoo.model_path("vit_small"))
    result = explainer.explain(zoo.sample("vit_small"), "rollout")
    maps = result.attributions["pixel_values"]
    assert maps.shape == (4, 1, 32, 32)
    assert result.tensors["patches"].shape == (4, 1, 8, 8)
    assert result.extras["patch_grid"] == [8, 8]
    # The class token is not a patch: 64 patch scores, and the class token's own is dropped.
    assert np.allclose(result.tensors["tokens"][:, 1:].reshape(4, 1, 8, 8),
                       result.tensors["patches"])


def test_override_by_node_and_tensor_names(zoo, bert):
    explainer, sample = bert
    layers = find_attention(explainer.model)
    named = f"{layers[1].node},{layers[0].probabilities}"
    result = explainer.explain(sample, "rollout", attention=named)
    assert [entry["probabilities"] for entry in result.extras["layers"]] == [
        layers[1].probabilities, layers[0].probabilities]
    with pytest.raises(InputError, match="no tensor or node named 'nope'"):
        explainer.explain(sample, "rollout", attention="nope")
    with pytest.raises(InputError, match="has rank 3"):
        explainer.explain(sample, "rollout", attention=layers[0].hidden)


def test_bad_options_name_the_problem(bert):
    explainer, sample = bert
    with pytest.raises(InputError, match="start_layer 5 is out of range for 2"):
        explainer.explain(sample, "rollout", start_layer=5)
    with pytest.raises(InputError, match="'query' of method 'rollout' expects one of auto"):
        explainer.explain(sample, "rollout", query="first")
    with pytest.raises(InputError, match="query token 40 is out of range"):
        explainer.explain(sample, "rollout", query=40)


def test_models_without_attention_are_refused(digits_path):
    explainer = onnxplain.Explainer(digits_path)
    with pytest.raises(InputError, match="no attention layer found"):
        explainer.explain(np.zeros((1, 1, 8, 8), np.float32), "rollout")


def test_ort_fused_graphs_get_a_clear_error():
    """Fused attention that no canonicalisation decomposes (PackedAttention) is refused;
    Attention, MultiHeadAttention and GroupQueryAttention are decomposed on load
    (tests/graph/test_canonical_ms_attention.py, tests/transformers/test_optimized_models.py)."""
    from onnx import TensorProto, helper

    names = ["input", "weights", "bias", "token_offset", "cumulative_sequence_length"]
    node = helper.make_node("PackedAttention", names, ["out"], domain="com.microsoft",
                            num_heads=2, name="packed")
    shapes = {"input": [6, 16], "weights": [16, 48], "bias": [48], "token_offset": [2, 4],
              "cumulative_sequence_length": [3]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT if i < 3 else
                                            TensorProto.INT32, shapes[n])
              for i, n in enumerate(names)]
    graph = helper.make_graph([node], "packed", inputs, [
        helper.make_tensor_value_info("out", TensorProto.FLOAT, [6, 16])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 8
    model = Model.load(proto)
    with pytest.raises(ModelError, match="explain the un-optimised export"):
        find_attention(model)
    assert "com.microsoft::PackedAttention" in describe_model(model)["attention_problem"]


def test_inspect_reports_the_token_layout_when_shapes_are_static(zoo):
    vit = describe_model(Model.load(zoo.model_path("vit_small")))
    assert vit["attention_tokens"] == {"tokens": 65, "class_tokens": 1, "patch_grid": [8, 8]}
    bert = describe_model(Model.load(zoo.model_path("bert_small")))
    assert bert["attention_tokens"] is None  # the sequence axis is symbolic
    assert len(bert["attention_layers"]) == 2
