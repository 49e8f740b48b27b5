"""Decoder probes across the zoo's model kinds: which decoder `auto` picks and the linear
baseline beside a conv decoder (rgb_cnn), float16 token models (bert_small_fp16: the
reconstruction reaches the cut model as float16), and ids reshaped before their lookup
(clip_tiny's text tower). Oracles: numpy's normal equations, and ONNX Runtime on a cut
model extracted with onnx.utils, independent of onnxplain's cut."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxplain.graph.model import Model
from onnxplain.graph.sources import embedding_lookup
from onnxplain.probe.data import tap
from onnxplain.probe.fit import ProbeWarning, fit_probe, split_rows
from onnxplain.probe.training import reconstruct

RIDGE = 1e-3


def test_auto_compares_conv_with_linear_on_spatial_layers_only(zoo):
    """rgb_cnn: on its MaxPool [16, 16, 16] `auto` fits the conv decoder and the linear
    closed form (its held-out relative error against scikit-learn's Ridge, whose objective
    is J times rows x pixels) and keeps the one with the lower held-out error; the global
    average pool [32, 1, 1] gets the linear one alone (Resize would spread one value over
    the image)."""
    from sklearn.linear_model import Ridge

    path = str(zoo.model_path("rgb_cnn"))
    x = np.random.default_rng(0).uniform(size=(60, 3, 32, 32)).astype(np.float32)
    pool, gap = "/4/MaxPool_output_0", "/7/GlobalAveragePool_output_0"
    with pytest.warns(ProbeWarning):  # random weights, one epoch: both no better than the mean
        fitted = fit_probe(path, [pool, gap], x, epochs=1)
    layers = fitted.info["layers"]
    compared = layers[pool]["auto"]
    assert layers[pool]["kind"] == ("linear" if compared["linear"] < compared["conv"]
                                    else "conv")
    assert layers[pool]["held_out"]["relative_mse"] == pytest.approx(
        min(compared.values()), rel=1e-4)
    assert layers[gap]["kind"] == "linear" and "auto" not in layers[gap]
    assert "linear_baseline" not in layers[gap]
    acts = tap(path, [pool], x).activations[pool]
    fit, held = split_rows(60, 0.2, 0)
    oracle = Ridge(alpha=RIDGE * len(fit) * 3072).fit(
        acts[fit].reshape(len(fit), -1).astype(np.float64), x[fit].reshape(len(fit), -1))
    a = acts[held].reshape(len(held), -1).astype(np.float64)
    error = ((oracle.predict(a) - x[held].reshape(len(held), -1)) ** 2).mean()
    relative = error / x[held].reshape(len(held), -1).var(axis=0).mean()
    assert compared["linear"] == pytest.approx(relative, rel=1e-3)


def test_float16_token_models_predict_on_float16_reconstructions(zoo):
    path = str(zoo.model_path("bert_small_fp16"))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(40, 10))
    mask = np.ones_like(ids)
    mask[::2, 7:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    layer = "/model/bert/embeddings/LayerNorm/LayerNormalization_output_0"
    words = "/model/bert/embeddings/word_embeddings/Gather_output_0"
    fitted = fit_probe(path, [layer], inputs)
    held_out = fitted.info["layers"][layer]["held_out"]
    # The model after the lookup, cut by onnx.utils, run on the float16 reconstruction
    # (input_ids stays an input: the model reads its shape).
    cut = onnx.utils.Extractor(onnx.load(path)).extract_model(
        [words, *inputs], ["logits"])
    session = ort.InferenceSession(cut.SerializeToString(), providers=["CPUExecutionProvider"])
    _, held = split_rows(40, 0.2, 0)
    acts = tap(path, [layer], inputs).activations[layer][held]
    x_hat = reconstruct(fitted.decoders[0], acts).astype(np.float16)
    feeds = {name: value[held] for name, value in inputs.items()}
    on_x_hat = session.run(["logits"], feeds | {words: x_hat})[0]
    own = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        ["logits"], feeds)[0]
    agreement = (on_x_hat.argmax(axis=1) == own.argmax(axis=1)).mean()
    assert held_out["agreement"] == pytest.approx(agreement)
    assert held_out["real_positions"] == mask[held].sum()


def test_ids_reshaped_before_their_lookup(zoo):
    """CLIP's text tower reshapes input_ids before the token embedding's Gather: the lookup
    still maps back to the ids, so the probe scores nearest tokens."""
    path = str(zoo.model_path("clip_tiny"))
    model = Model.load(path)
    words = "/model/text_model/embeddings/token_embedding/Gather_output_0"
    assert embedding_lookup(model, words) == (
        "input_ids", model.node_by_output[words].input[0])
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 90, size=(30, 6))
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids),
              "pixel_values": rng.normal(size=(30, 3, 32, 32)).astype(np.float32)}
    layer = "/model/text_model/encoder/layers.0/layer_norm1/LayerNormalization_output_0"
    info = fit_probe(path, [layer], inputs).info["layers"][layer]
    assert info["target"] == words
    assert info["embedding_table"] == "model.text_model.embeddings.token_embedding.weight"
    assert info["held_out"]["token_accuracy"] > 0.5
