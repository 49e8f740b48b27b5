"""Decoder probes on token models: from a hidden layer of the zoo's sentiment BERT back to
the word embeddings its input ids look up (the target is the embedding Gather's output), and
the nearest-token read-out of the reconstruction.

Measured here (1000 sentences, 20% held out, padding excluded; per-position linear decoder
in closed form): nearest-token accuracy on held-out tokens 0.982 from the embedding
LayerNorm, 0.908 / 0.889 after layer 0's attention / output, 0.794 / 0.749 after layer 1's.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import InputError
from onnxplain.methods._common import ConvergenceWarning
from onnxplain.probe.fit import fit_probe, nearest_tokens
from onnxplain.probe.training import reconstruct

LN = "/model/bert/{}/LayerNormalization_output_0"
LAYERS = [LN.format("embeddings/LayerNorm"),
          LN.format("encoder/layer.0/output/LayerNorm"),
          LN.format("encoder/layer.1/output/LayerNorm")]
WORDS = "/model/bert/embeddings/word_embeddings/Gather_output_0"
TABLE = "model.bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def bert(zoo):
    from model_zoo.sentiment import encode, sentiment_data, vocabulary

    train, test = sentiment_data()
    vocab = {token: i for i, token in enumerate(vocabulary())}
    pairs = (train + test)[:600]
    ids, mask = encode([s for s, _ in pairs], vocab)
    inputs = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    labels = np.array([label for _, label in pairs])
    return str(zoo.model_path("sentiment_bert")), inputs, labels


@pytest.fixture(scope="module")
def fitted(bert):
    path, inputs, labels = bert
    return fit_probe(path, LAYERS, inputs, labels=labels)


def test_decoders_rebuild_the_word_embeddings_per_position(fitted):
    for decoder in fitted.decoders:
        info = fitted.info["layers"][decoder.layer]
        assert decoder.target == WORDS and info["embedding_table"] == TABLE
        assert decoder.kind == "linear" and decoder.per_position
        assert decoder.params["weight"].shape == (64, 64)


def test_nearest_token_accuracy_falls_with_depth(fitted, bert):
    path, inputs, _ = bert
    held = [fitted.info["layers"][layer]["held_out"] for layer in LAYERS]
    accuracy = [h["token_accuracy"] for h in held]
    assert accuracy[0] > 0.9  # the embedding LayerNorm keeps the token almost always
    assert accuracy[0] > accuracy[1] > accuracy[2] > 0.3, accuracy
    errors = [h["relative_mse"] for h in held]
    assert errors[0] < errors[1] < errors[2], errors
    # the read-out by hand: reconstruct, nearest row of the table by explicit Euclidean
    # distances to every row (numpy), compare on real tokens
    from onnxplain.probe.data import tap
    from onnxplain.probe.fit import split_rows

    data = tap(path, [LAYERS[0]], inputs)
    _, rows = split_rows(data.rows, 0.2, 0)
    x_hat = reconstruct(fitted.decoders[0], data.activations[LAYERS[0]][rows])
    table = onnx_table(path)
    found = np.stack([np.linalg.norm(row[:, None, :] - table[None], axis=-1).argmin(axis=-1)
                      for row in x_hat.astype(np.float64)])
    real = inputs["attention_mask"][rows] == 1
    ids = inputs["input_ids"][rows]
    assert (found == ids)[real].mean() == pytest.approx(accuracy[0])
    assert held[0]["real_positions"] == real.sum()
    assert held[0]["chance_accuracy"] == pytest.approx(
        np.unique(ids[real], return_counts=True)[1].max() / real.sum())
    assert not real.all()  # padded rows: the accuracy counts real tokens only


def onnx_table(path: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    inits = onnx.load(path).graph.initializer
    return numpy_helper.to_array(next(i for i in inits if i.name == TABLE)).astype(np.float64)


def test_nearest_tokens_in_chunks_is_the_argmin_over_the_table(monkeypatch):
    """nearest_tokens bounds its distance matrix: chunks of any size give numpy's argmin."""
    from onnxplain.probe import fit

    rng = np.random.default_rng(0)
    table, embeddings = rng.normal(size=(50, 8)), rng.normal(size=(3, 7, 8))
    expected = np.linalg.norm(embeddings[..., None, :] - table, axis=-1).argmin(axis=-1)
    for chunk_bytes in (8 * 50 * 2, 8 * 50 * 5, 1, 2**30):  # 2, 5, 1 and all 21 rows a time
        monkeypatch.setattr(fit, "NEAREST_CHUNK_BYTES", chunk_bytes)
        np.testing.assert_array_equal(nearest_tokens(embeddings, table), expected)


def test_the_model_reads_its_class_from_reconstructed_embeddings(fitted):
    for layer in LAYERS:
        held = fitted.info["layers"][layer]["held_out"]
        assert held["model_accuracy"] > 0.95
        assert held["accuracy"] > 0.9


def test_classifier_aware_decoder_trains_through_the_cut_model(bert):
    path, inputs, labels = bert
    with pytest.warns(ConvergenceWarning, match="still fell"):  # two epochs: still learning
        aware = fit_probe(path, [LAYERS[-1]], inputs, labels=labels, classifier_weight=0.1,
                          epochs=2)
    info = aware.info["layers"][LAYERS[-1]]
    assert info["solver"] == "adam" and len(info["history"]) == 2
    assert np.isfinite(info["history"]).all()
    assert info["held_out"]["relative_mse"] < 0.6  # started at the closed form, stayed near
    assert info["held_out"]["accuracy"] > 0.9


def test_a_layer_not_computed_from_the_tokens_is_refused(bert):
    path, inputs, _ = bert
    positions = "/model/bert/embeddings/position_embeddings/Gather_output_0"
    with pytest.raises(InputError, match="is not computed from any float or token input"):
        fit_probe(path, [positions], inputs)
