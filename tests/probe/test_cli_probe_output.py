"""What `onnxplain probe fit` and `probe explain` print: the held-out nearest-token accuracy of
token layers beside its chance baseline (sentiment BERT), the outputs the written file
declares (--json), a layer whose reconstructions are no better than the mean input flagged
(digits MLP on noise: its logits cannot rebuild independent noise), and --target."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.cli_helpers import run

BERT_LAYER = "/model/bert/encoder/layer.0/output/LayerNorm/LayerNormalization_output_0"
FLAG = "no better than the mean input"


def _blocks(stdout: str) -> dict[str, str]:
    """Each layer's lines of `probe fit`'s text output, by layer name."""
    blocks: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith("layer "):
            name = line.split("'")[1]
            blocks[name] = line
        elif line.startswith("  ") and blocks:
            blocks[name] += "\n" + line
    return blocks


@pytest.fixture(scope="module")
def bert(zoo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe_bert")
    path = str(zoo.model_path("sentiment_bert"))
    np.savez(folder / "train.npz", **zoo.token_batch(["input_ids", "attention_mask"], 60, 12,
                                                     seed=1))
    args = ["probe", "fit", path, "--layer", BERT_LAYER, "--data", str(folder / "train.npz"),
            "--decoder", "linear", "-o"]
    text = run(*args, str(folder / "a.onnx"))
    assert text.exit_code == 0, text.stderr
    as_json = run(*args, str(folder / "b.onnx"), "--json")
    assert as_json.exit_code == 0, as_json.stderr
    return folder, text.stdout, json.loads(as_json.stdout)


def test_fit_prints_the_held_out_token_accuracy_and_its_chance(bert):
    _, stdout, summary = bert
    held = summary["info"]["layers"][BERT_LAYER]["held_out"]
    block = _blocks(stdout)[BERT_LAYER]
    assert f"nearest-token accuracy {100 * held['token_accuracy']:.1f}%" in block
    assert f"the most frequent token {100 * held['chance_accuracy']:.1f}%" in block
    assert "padding by attention mask 'attention_mask'" in block
    assert held["token_accuracy"] > held["chance_accuracy"] + 0.5  # layer 0 keeps the words


def test_fit_json_lists_the_outputs_the_file_declares(bert):
    folder, _, summary = bert
    declared = {o.name for o in onnx.load(str(folder / "b.onnx")).graph.output}
    (entry,) = summary["layers"]
    assert entry["outputs"] == {key: f"probe/0/{key}" for key in
                                ("reconstruction", "error", "prediction", "tokens")}
    assert set(entry["outputs"].values()) <= declared


@pytest.fixture(scope="module")
def noise(zoo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe_noise")
    rng = np.random.default_rng(0)
    np.savez(folder / "noise.npz", features=rng.normal(size=(150, 64)).astype(np.float32))
    out = folder / "probe.onnx"
    args = ["probe", "fit", str(zoo.model_path("digits_mlp")), "--data",
            str(folder / "noise.npz"), "--decoder", "linear", "--layer", "/1/Relu_output_0",
            "--layer", "logits", "-o", str(out)]
    text = run(*args)
    assert text.exit_code == 0, text.stderr
    meta = json.loads(next(p.value for p in onnx.load(str(out)).metadata_props
                           if p.key == "onnxplain.probe"))
    return folder, out, text.stdout, meta["info"]


def test_fit_flags_layers_no_better_than_the_mean_input(noise):
    _, _, stdout, info = noise
    relative = {layer: entry["held_out"]["relative_mse"]
                for layer, entry in info["layers"].items()}
    # Independent noise: the 10 logits rebuild no more of it than its mean; the 128 ReLU
    # units (an invertible-ish map of it) rebuild a little: one layer each side of 1.
    assert relative["logits"] >= 1 > relative["/1/Relu_output_0"]
    blocks = _blocks(stdout)
    for layer, value in relative.items():
        assert (FLAG in blocks[layer]) == (value >= 1), blocks[layer]


def test_explain_flags_the_layers_the_fit_found_no_better_than_the_mean(noise):
    folder, out, _, info = noise
    result = run("probe", "explain", str(out), "-i", str(folder / "noise.npz"), "-o",
                 str(folder / "explained"))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert FLAG not in lines[1] and f"{FLAG} at fit (held-out relative error" in lines[2]
    summary = json.loads((folder / "explained" / "summary.json").read_text())
    assert [e["no_better_than_mean"] for e in summary["layers"]] == [False, True]
    assert summary["layers"][1]["fit_relative_mse"]["value"] == \
        pytest.approx(info["layers"]["logits"]["held_out"]["relative_mse"])


def test_fit_target_option_reaches_the_library(zoo, tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "x.npz", features=rng.normal(size=(20, 64)).astype(np.float32))
    args = ["probe", "fit", str(zoo.model_path("digits_mlp")), "--data", str(tmp_path / "x.npz"),
            "--decoder", "linear", "--layer", "logits"]
    wrong = run(*args, "-o", str(tmp_path / "a.onnx"), "--target", "pixels")
    assert wrong.exit_code == 2 and "target 'pixels'" in wrong.stderr and \
        "choose from features" in wrong.stderr, wrong.stderr
    assert wrong.stderr.count("\n") == 1
    right = run(*args, "-o", str(tmp_path / "b.onnx"), "--target", "features", "--json")
    assert right.exit_code == 0, right.stderr
    assert json.loads(right.stdout)["layers"][0]["target"] == "features"


def test_help_says_what_ridge_penalises_and_what_target_chooses():
    text = " ".join(run("probe", "fit", "--help").stdout.split())
    assert "L2 penalty of the linear decoders' weights (conv decoders are not penalised" in text
    assert "--target INPUT" in text and "several float or token inputs" in text


def test_report_notes_a_layer_no_better_than_the_mean(noise, zoo):
    folder, out, _, _ = noise
    result = run("report", str(zoo.model_path("digits_mlp")), "-i", str(folder / "noise.npz"),
                 "--methods", "probe", "--probe", str(out), "-o", str(folder / "report"), "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads((folder / "report" / "report.json").read_text())
    notes = [entry["notes"] for entry in report["probe"]]
    assert notes[0] == [] and len(notes[1]) == 1 and notes[1][0].startswith(FLAG)
    assert FLAG in (folder / "report" / "index.html").read_text()
