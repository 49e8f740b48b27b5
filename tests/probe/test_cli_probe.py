"""`onnxplain probe fit` and `onnxplain probe explain` on the zoo's digits CNN: the written
probe runs in a plain ONNX Runtime session with the model's output unchanged, explain writes
what explain_probe computes, and bad input is one `error:` line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxplain.probe.explain import explain_probe
from tests.cli_helpers import digests, run

LAYERS = ("/features/features.1/Relu_output_0", "/features/features.6/Relu_output_0")


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_path, digits_split):
    x, y, xt, yt = digits_split
    folder = tmp_path_factory.mktemp("probe_cli")
    shutil.copy(digits_path, folder / "model.onnx")
    np.savez(folder / "train.npz", image=x[:400], y=y[:400])
    np.savez(folder / "test.npz", image=xt[:30], y=yt[:30])
    np.save(folder / "rows.npy", xt[:3])
    np.save(folder / "flat.npy", xt[:3].reshape(3, 64))
    return folder


@pytest.fixture(scope="module")
def fitted(files):
    out = files / "fitted" / "probe.onnx"
    out.parent.mkdir()
    args = ["probe", "fit", str(files / "model.onnx"), "--data", str(files / "train.npz"),
            "-o", str(out), "--decoder", "linear", "--json"]
    for layer in LAYERS:
        args += ["--layer", layer]
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


def test_fit_writes_one_model_that_plain_runtime_runs(fitted, files):
    out, summary = fitted
    assert [entry["layer"] for entry in summary["layers"]] == list(LAYERS)
    assert summary["info"]["layers"][LAYERS[0]]["held_out"]["mse"] > 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.load(files / "test.npz")["image"]
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x}),
                       strict=True))
    original = ort.InferenceSession(str(files / "model.onnx"),
                                    providers=["CPUExecutionProvider"]).run(None, {"image": x})
    np.testing.assert_array_equal(outputs["logits"], original[0])
    for k, entry in enumerate(summary["layers"]):
        assert set(entry["outputs"].values()) <= set(outputs)
        assert outputs[f"probe/{k}/reconstruction"].shape == x.shape


def test_explain_writes_the_numbers_and_pictures_of_explain_probe(fitted, files, tmp_path):
    out, _ = fitted
    before = digests(files, recursive=True)
    folder = tmp_path / "new" / "explained"
    result = run("probe", "explain", str(out), "--input", str(files / "test.npz"),
                 "--out", str(folder))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("30 rows, output 'logits', model accuracy ")
    assert len(lines) == 2 + len(LAYERS) and "accuracy on reconstructions" in lines[1]
    data = np.load(files / "test.npz")
    expected = explain_probe(str(out), data["image"], "cpu", labels=data["y"])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["layers"] == json.loads(json.dumps(expected.summary()["layers"]))
    assert f"mean error {summary['layers'][1]['mean_error']:.4g}" in lines[2]
    arrays = np.load(folder / "probe.npz")
    np.testing.assert_array_equal(arrays["probe/1/reconstruction"],
                                  expected.layers[1].reconstruction)
    pictures = sorted(p.name for p in folder.glob("probe_*.png"))
    assert len(pictures) == 30 and summary["row_details"][4]["picture"] == "probe_4.png"
    assert sorted(summary["files"]) == sorted([*pictures, "probe.npz", "summary.json"])
    assert digests(files, recursive=True) == before  # the user's files untouched
    # A plain .npy and --json: the same summary on stdout, no labels so no accuracy.
    again = run("probe", "explain", str(out), "-i", str(files / "rows.npy"), "-o",
                str(tmp_path / "rows"), "--json")
    assert again.exit_code == 0, again.stderr
    quick = json.loads(again.stdout)
    assert quick["rows"] == 3 and "accuracy" not in quick["layers"][0]
    assert quick["layers"][0]["agreement"] is not None
    # Again into the first folder, with 3 rows: the pictures of rows 3 to 29 go.
    third = run("probe", "explain", str(out), "-i", str(files / "rows.npy"), "-o", str(folder),
                "-q")
    assert third.exit_code == 0 and third.stdout == ""
    assert sorted(p.name for p in folder.iterdir()) == \
        ["probe.npz", "probe_0.png", "probe_1.png", "probe_2.png", "summary.json"]


def test_bad_input_is_one_line_exit_2_and_nothing_written(fitted, files, tmp_path):
    out, _ = fitted
    model, train = str(files / "model.onnx"), str(files / "train.npz")
    target = tmp_path / "p.onnx"
    before = digests(files, recursive=True)
    fit = ["probe", "fit", model, "--data", train, "--layer", LAYERS[0]]
    for args, message in [
        ([*fit, "-o", model], "refusing to overwrite"),
        ([*fit, "-o", str(tmp_path)], "is a folder"),
        (["probe", "fit", model, "--data", str(files / "rows.npy"), "--layer", LAYERS[0],
          "-o", str(target)], "expected an .npz file"),
        (["probe", "fit", model, "--data", train, "--layer", "no_such_tensor", "-o",
          str(target)], "no_such_tensor"),
        ([*fit, "-o", str(target), "--decoder", "deconv"], "deconv"),
        ([*fit, "-o", str(target), "--epochs", "0"], "--epochs"),
        (["probe", "fit", model, "--data", train, "-o", str(target)], "--layer"),
        (["probe", "explain", model, "-i", str(files / "rows.npy"), "-o",
          str(tmp_path / "e")], "not a probe file"),
        (["probe", "explain", str(out), "-i", str(files / "flat.npy"), "-o",
          str(tmp_path / "e")], "image"),
        (["probe", "explain", str(out), "-i", str(files / "missing.npy"), "-o",
          str(tmp_path / "e")], "not found"),
        (["probe", "explain", str(out), "-i", str(files / "rows.npy"), "-o",
          str(files / "rows.npy")], "not a folder"),
    ]:
        result = run(*args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
    assert digests(files, recursive=True) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_fit_trains_a_conv_decoder_with_the_classifier_loss(files, tmp_path):
    out = tmp_path / "conv.onnx"
    result = run("probe", "fit", str(files / "model.onnx"), "--data", str(files / "train.npz"),
                 "--layer", LAYERS[1], "-o", str(out), "--epochs", "1",
                 "--classifier-weight", "0.5", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    assert "conv decoder to 'image'" in result.stdout
    proto = onnx.load(str(out))
    assert {n.op_type for n in proto.graph.node} >= {"Conv", "Resize"}
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == "onnxplain.probe"))
    assert meta["info"]["options"]["classifier_weight"] == 0.5
    assert meta["info"]["options"]["seed"] == 3 and meta["layers"][0]["kind"] == "conv"
