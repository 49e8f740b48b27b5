"""Which token positions a probe counts (probe.tokens), on real zoo models: an attention mask
(sentiment BERT), a lengths input read as sequence_lens (the padded LSTM), or neither (every
position, said so); token accuracy pooled over the real positions, beside the share of the
most frequent true token. Oracles: the padding rebuilt here from the inputs themselves."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.graph.model import Model
from onnxplain.probe.explain import explain_probe, report_columns
from onnxplain.probe.model import probe_model
from onnxplain.probe.tokens import (
    ALL_POSITIONS,
    chance_accuracy,
    real_tokens,
    token_accuracy,
)
from tests.cli_helpers import run
from tests.probe.ridge_decoders import Fitted, ridge_decoder

PADDED = "lstm_tokens_padded_tiny"
STATES, LOOKUP = "/Concat_output_0", "/embed/Gather_output_0"  # [N, 12] -> [N, T, 8]
LENGTH, PAD = 9, 0


def _padded_rows(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Ids 1..29 up to each row's length (2..9), PAD after it: padding a decoder can learn."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, LENGTH + 1, rows)
    ids = rng.integers(1, 30, (rows, LENGTH))
    ids[np.arange(LENGTH)[None, :] >= lengths[:, None]] = PAD
    return {"input_ids": ids.astype(np.int64), "lengths": lengths.astype(np.int64)}


@pytest.fixture(scope="module")
def padded(zoo):
    path = str(zoo.model_path(PADDED))
    train = _padded_rows(240, seed=0)
    acts = Explainer(path, "cpu").forward(train, taps=[STATES, LOOKUP])
    decoder = ridge_decoder(STATES, LOOKUP, acts[STATES], acts[LOOKUP])
    return path, probe_model(path, Fitted([decoder]))


def test_lengths_input_marks_padding(zoo):
    model = Model.load(zoo.model_path(PADDED))
    feeds = _padded_rows(6, seed=3)
    found = real_tokens(model, feeds, "input_ids")
    np.testing.assert_array_equal(found.real, feeds["input_ids"] != PAD)
    assert found.rule == "lengths input 'lengths'"


def test_attention_mask_marks_padding_and_without_either_every_position_counts(zoo):
    bert = Model.load(zoo.model_path("sentiment_bert"))
    feeds = zoo.token_batch(["input_ids", "attention_mask"], 5, 10, seed=2)
    found = real_tokens(bert, feeds, "input_ids")
    np.testing.assert_array_equal(found.real, feeds["attention_mask"] == 1)
    assert not found.real.all() and found.rule == "attention mask 'attention_mask'"
    plain = Model.load(zoo.model_path("lstm_tokens_tiny"))
    ids = np.zeros((2, 4), np.int64)
    found = real_tokens(plain, {"input_ids": ids}, "input_ids")
    assert found.real.all() and found.rule == ALL_POSITIONS


def test_token_accuracy_is_pooled_and_chance_is_the_most_frequent_token():
    ids = np.array([[5, 5, 7, 0], [5, 0, 0, 0]])
    real = ids != 0
    found = np.array([[5, 1, 7, 0], [1, 0, 0, 0]])
    # Pooled: 2 of 4 real positions; the mean of per-row shares would be (2/3 + 0) / 2.
    assert token_accuracy(found, ids, real) == 0.5
    assert chance_accuracy(ids, real) == 0.75  # id 5 holds 3 of the 4 real positions
    assert np.isnan(token_accuracy(found, ids, np.zeros_like(real)))


def test_explain_counts_only_the_real_tokens_of_a_lengths_model(padded):
    _, proto = padded
    feeds = _padded_rows(120, seed=1)
    found = explain_probe(proto, feeds, "cpu")
    layer, entry = found.layers[0], found.summary()["layers"][0]
    real = np.arange(LENGTH)[None, :] < feeds["lengths"][:, None]
    hits = layer.tokens == feeds["input_ids"]
    assert entry["token_accuracy"] == pytest.approx(hits[real].mean())
    assert entry["real_positions"] == real.sum() and entry["padding"] == "lengths input 'lengths'"
    values, counts = np.unique(feeds["input_ids"][real], return_counts=True)
    assert entry["chance_accuracy"] == pytest.approx(counts.max() / real.sum())
    # The decoder names the padding far better than the real tokens: counting every
    # position would read a different number (this test tells the two apart).
    assert hits[~real].mean() - hits[real].mean() > 0.3
    np.testing.assert_allclose(layer.token_accuracy,
                               [h[r].mean() for h, r in zip(hits, real, strict=True)])
    # The error over real positions only, pooled.
    per_position = layer.error.mean(axis=2)
    assert entry["mean_error"] == pytest.approx(per_position[real].mean(), rel=1e-6)
    # The report's column says the same of the whole layer.
    (note,) = report_columns(found)[0].notes
    assert note.startswith(f"{hits[real].mean():.1%} of {real.sum()} real tokens named (chance")


def test_flattened_decoder_refuses_another_sequence_length(padded, tmp_path, session_rows):
    path, proto = padded
    feeds = _padded_rows(4, seed=2)
    short = {"input_ids": feeds["input_ids"][:, :5], "lengths": np.minimum(feeds["lengths"], 5)}
    message = "fitted on 9 tokens of input 'input_ids' per row; these rows have 5"
    with pytest.raises(InputError, match=message):
        explain_probe(proto, short, "cpu")
    # The report refuses it in one line before any method runs.
    onnx.save(proto, str(tmp_path / "probe.onnx"))
    np.savez(tmp_path / "short.npz", **short)
    session_rows.clear()
    result = run("report", path, "-i", str(tmp_path / "short.npz"), "--probe",
                 str(tmp_path / "probe.onnx"), "-o", str(tmp_path / "report"), "--no-scores")
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and session_rows == []


def test_a_row_all_padding_has_no_token_numbers(padded):
    _, proto = padded
    feeds = _padded_rows(3, seed=4)
    feeds["lengths"][1] = 0  # ONNX Runtime's sequence_lens allows 0
    summary = explain_probe(proto, feeds, "cpu").summary()
    row = summary["row_details"][1]["layers"][0]
    assert row["token_accuracy"] is None and row["mean_error"] is None
    assert summary["layers"][0]["real_positions"] == feeds["lengths"].sum()
    json.dumps(summary, allow_nan=False)  # as summary.json is written
