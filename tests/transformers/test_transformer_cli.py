"""Transformer methods from the command line: token pages and JSON for text, heatmaps for
ViT, the attention layers in `onnxplain inspect`, and one-line errors."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest

from ..cli_helpers import run

TEXT_METHODS = ["raw_attention", "rollout", "attgrad", "generic_attention", "partial_lrp",
                "transformer_attribution", "cat", "attncat", "layer_integrated_gradients"]



class _Spans(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[tuple[str, float]] = []
        self._score: float | None = None

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "span" and "data-score" in values:
            self._score = float(values["data-score"])

    def handle_data(self, data):
        if self._score is not None:
            self.tokens.append((data, self._score))
            self._score = None


@pytest.fixture(scope="module")
def sentiment(zoo, tmp_path_factory):
    folder = zoo.build("sentiment_bert")
    return folder / "model.onnx", folder / "sample.npz", folder / "vocab.txt"


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_text_methods_write_token_pages_and_json(sentiment, tmp_path, method):
    model, sample, vocab = sentiment
    out = tmp_path / "out"
    result = run("explain", str(model), "-i", str(sample), "-m", method, "--vocab", str(vocab),
                 "-o", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    scores = np.load(out / "attributions.npz")["input_ids"]
    with np.load(sample) as data:
        ids, mask = data["input_ids"], data["attention_mask"]
    words = vocab.read_text().split("\n")
    views = json.loads((out / "tokens.json").read_text())["input_ids"]
    assert len(views) == len(ids)
    for row in range(len(ids)):
        real = np.flatnonzero(mask[row])
        assert [v["token"] for v in views[row]] == [words[i] for i in ids[row, real]]
        assert np.allclose([v["score"] for v in views[row]], scores[row, real], atol=1e-6)
        parser = _Spans()
        parser.feed((out / f"tokens_input_ids_{row}.html").read_text())
        assert [t for t, _ in parser.tokens] == [words[i] for i in ids[row, real]]
        assert np.allclose([s for _, s in parser.tokens], scores[row, real], rtol=1e-6,
                           atol=1e-12)
    assert str(out / "tokens.json") in summary["files"]


def test_vit_rollout_writes_heatmaps(zoo, tmp_path):
    folder = zoo.build("vit_small")
    result = run("explain", str(folder / "model.onnx"), "-i", str(folder / "sample.npz"),
                 "-m", "rollout", "-o", str(tmp_path / "out"), "-O", "start_layer=1", "-q")
    assert result.exit_code == 0, result.stderr
    assert len(list((tmp_path / "out").glob("heatmap_pixel_values_*.png"))) == 4


def test_inspect_lists_attention_layers(sentiment):
    model, _, _ = sentiment
    result = run("inspect", str(model), "--json")
    layers = json.loads(result.stdout)["attention_layers"]
    assert [layer["layer"] for layer in layers] == [0, 1]
    assert all(layer["heads"] == 4 and layer["mask_inputs"] == ["attention_mask"]
               for layer in layers)
    text = run("inspect", str(model)).stdout
    assert "attention layers: 2" in text


@pytest.mark.parametrize("args, fragment", [
    (["-m", "rollout", "-O", "start_layer=9"], "start_layer 9 is out of range"),
    (["-m", "rollout", "-O", "attention=nothing_here"], "no tensor or node named"),
    (["-m", "rollout", "--vocab", "{missing}"], "vocabulary file"),
    (["-m", "integrated_gradients"], "use layer_integrated_gradients"),
])
def test_bad_transformer_options_are_one_line_errors(sentiment, tmp_path, args, fragment):
    model, sample, _ = sentiment
    args = [a.format(missing=tmp_path / "nope.txt") for a in args]
    result = run("explain", str(model), "-i", str(sample), "-o", str(tmp_path / "o"), *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
