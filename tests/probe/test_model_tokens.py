"""A probe of a token model (the zoo's sentiment BERT): the decoder reconstructs the word
embeddings (the lookup's output) from a hidden layer; the probe file names the nearest
embedding row per position, and its prediction is the model run from the reconstructed
embeddings (the model cut at the lookup, fed the reconstruction: oracle)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxplain import Explainer
from onnxplain.graph.cut import cut_at
from onnxplain.graph.model import Model
from onnxplain.probe.explain import explain_probe
from onnxplain.probe.model import load_probe, probe_model
from tests.probe.ridge_decoders import Fitted, ridge_decoder

LAYER = "/model/bert/encoder/layer.0/output/LayerNorm/LayerNormalization_output_0"
LOOKUP = "/model/bert/embeddings/word_embeddings/Gather_output_0"
TABLE = "model.bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def bert(zoo):
    path = str(zoo.model_path("sentiment_bert"))
    feeds = zoo.token_batch(["input_ids", "attention_mask"], 48, 12, seed=1)
    acts = Explainer(path, "cpu").forward(feeds, taps=[LAYER, LOOKUP])
    # Per position: [N * T, H] -> [N * T, E], so the decoder is [H, E] and takes any length.
    hidden, embedded = acts[LAYER], acts[LOOKUP]
    flat = ridge_decoder(LAYER, LOOKUP, hidden.reshape(-1, 1, hidden.shape[-1]),
                         embedded.reshape(-1, 1, embedded.shape[-1]))
    flat.layer_shape, flat.target_shape = hidden.shape[1:], embedded.shape[1:]
    assert flat.per_position
    return path, probe_model(path, Fitted([flat])), feeds


def _run(proto: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def test_token_probe_keeps_the_output_and_names_the_nearest_tokens(bert, zoo):
    path, proto, _ = bert
    feeds = zoo.token_batch(["input_ids", "attention_mask"], 8, 16, seed=7)  # longer rows
    outputs = _run(proto, feeds)
    np.testing.assert_array_equal(outputs["logits"], _run(onnx.load(path), feeds)["logits"])
    table = next(onnx.numpy_helper.to_array(t) for t in proto.graph.initializer
                 if t.name == TABLE)
    rows = outputs["probe/0/reconstruction"]
    distances = ((rows[:, :, None, :] - table[None, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(outputs["probe/0/tokens"], distances.argmin(-1))
    layer = load_probe(proto).layers[0]
    assert (layer.token_input, layer.embedding) == ("input_ids", TABLE)
    # The prediction is the model run from the reconstructed word embeddings.
    cut = cut_at(Model.load(path), LOOKUP)
    fed = {**feeds, LOOKUP: rows}
    fed = {name: fed[name] for name in (i.name for i in cut.proto.graph.input)}
    np.testing.assert_allclose(outputs["probe/0/prediction"], _run(cut.proto, fed)["logits"],
                               rtol=1e-4, atol=1e-5)


def test_token_accuracy_counts_the_real_tokens_recovered(bert):
    _, proto, feeds = bert
    found = explain_probe(proto, feeds, "cpu")
    layer = found.layers[0]
    real = feeds["attention_mask"] != 0
    hits = (layer.tokens == feeds["input_ids"]) & real
    np.testing.assert_allclose(layer.token_accuracy, hits.sum(1) / real.sum(1))
    summary = found.summary()["layers"][0]
    # Pooled over the real positions of every row (not the mean of the rows' shares).
    assert summary["token_accuracy"] == pytest.approx(hits.sum() / real.sum())
    assert summary["padding"] == "attention mask 'attention_mask'"
    # One layer after the embeddings still names most tokens (ridge fit on these rows).
    assert summary["token_accuracy"] > 0.9
    assert found.picture(0) is None  # no image to draw
