"""Explainers exported with an output seed compute what Explainer.explain(...,
output_seed=w) computes: with the baked weights on every row, or with weights fed per row;
outputs that are not class scores export with a seed; `onnxplain export --output-seed`
checks itself against the in-process method."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.exporter import export_explainer

from ..cli_helpers import run as run_cli
from .test_export import _close, _run

CASES = [("saliency", {}), ("input_x_gradient", {}), ("guided_backprop", {}),
         ("integrated_gradients", {"n_steps": 8}), ("deeplift", {}), ("lrp", {}),
         ("grad_cam", {}), ("grad_cam_plus_plus", {}), ("guided_grad_cam", {})]
QUIET = {"integrated_gradients": {"delta_tolerance": 1e9}, "deeplift": {"delta_tolerance": 1e9}}


@pytest.fixture(scope="module")
def rgb(zoo):
    rng = np.random.default_rng(0)
    return (zoo.model_path("rgb_cnn"), zoo.sample("rgb_cnn")["image"][:3],
            rng.standard_normal(10).astype(np.float32),  # one row: every row's weights
            rng.standard_normal((3, 10)).astype(np.float32))  # fed per row at run time


@pytest.mark.parametrize("method,options", CASES, ids=lambda v: str(v))
def test_exported_seed_equals_the_in_process_seed(rgb, method, options):
    model, x, row, per_row = rgb
    exported = export_explainer(str(model), method, output_seed=row, **options)
    inputs = {i.name for i in exported.graph.input}
    assert "output_seed" in inputs and "target" not in inputs
    assert "target_used" not in {o.name for o in exported.graph.output}
    explainer = Explainer(str(model), "cpu", progress=False)
    for fed in (None, per_row):
        seeds = np.repeat(row[None], 3, axis=0) if fed is None else fed
        got = _run(exported, {"image": x} if fed is None else {"image": x, "output_seed": fed})
        expected = explainer.explain(x, method=method, output_seed=seeds, **options,
                                     **QUIET.get(method, {}))
        assert expected.objective == "output_seed"
        _close(got["attribution/image"], expected["image"])
        if "convergence_delta" in expected.extras:
            np.testing.assert_allclose(got["convergence_delta"],
                                       expected.extras["convergence_delta"], atol=1e-5)
    # The seed matters: the predicted class's attribution is another one.
    classed = explainer.explain(x, method=method, **options, **QUIET.get(method, {}))
    assert not np.allclose(got["attribution/image"], classed["image"], atol=1e-7)


def _sequence_model() -> onnx.ModelProto:
    """x [batch, 6] -> MatMul -> Reshape: scores [batch, 2, 3], no class axis."""
    weights = np.random.default_rng(1).standard_normal((6, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["flat"], name="dense"),
             helper.make_node("Reshape", ["flat", "shape"], ["scores"], name="split")]
    graph = helper.make_graph(
        nodes, "sequence", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 2, 3])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array([-1, 2, 3], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_outputs_without_a_class_axis_export_with_a_seed(tmp_path):
    model = _sequence_model()
    onnx.save(model, tmp_path / "sequence.onnx")
    seed = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -2.0]], np.float32)  # [2, 3]: one row
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    exported = export_explainer(str(tmp_path / "sequence.onnx"), "input_x_gradient",
                                output_seed=seed)
    got = _run(exported, {"x": x})["attribution/x"]
    # By hand: d(sum(seed * x W reshaped)) / dx = W @ seed.ravel(), times x.
    weights = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(got, x * (weights @ seed.ravel()), rtol=1e-5, atol=1e-6)
    # Without a seed, [batch, 2, 3] is a sequence: the predicted class at every position
    # (objective), computed in the exported graph as in process.
    plain = _run(export_explainer(str(tmp_path / "sequence.onnx"), "input_x_gradient"),
                 {"x": x})["attribution/x"]
    in_process = Explainer(str(tmp_path / "sequence.onnx"), "cpu").explain(
        x, "input_x_gradient")
    np.testing.assert_allclose(plain, in_process["x"], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="one row of weights shaped \\[2, 3\\]"):
        export_explainer(str(tmp_path / "sequence.onnx"), "saliency",
                         output_seed=np.ones((4, 2, 3), np.float32))


@pytest.mark.parametrize("target_input", ["optional", "required"])
def test_cli_export_output_seed_checks_itself(rgb, tmp_path, target_input):
    model, x, row, _ = rgb
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "w.npy", row[None])
    out = tmp_path / "explain.onnx"
    result = run_cli("export", str(model), "-m", "integrated_gradients", "-O", "n_steps=8",
                     "--output-seed", str(tmp_path / "w.npy"), "--target-input", target_input,
                     "-o", str(out), "--check", "-i", str(tmp_path / "x.npy"), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert "output_seed" in summary["added"] and "target" not in summary["added"]
    assert summary["check"]["rows"] == 3 and summary["check"]["max_rel_diff"] < 1e-4
    exported = onnx.load(str(out))
    defaults = {init.name for init in exported.graph.initializer}
    assert ("output_seed" in defaults) == (target_input == "optional")
    text = run_cli("export", str(model), "-m", "saliency", "--output-seed",
                   str(tmp_path / "w.npy"), "-o", str(tmp_path / "s.onnx"), "--check", "-i",
                   str(tmp_path / "x.npy"))
    assert text.exit_code == 0, text.stderr
    assert "check on 3 rows" in text.stdout and "output_seed" in text.stdout


def test_cli_export_bad_seed_is_one_line(rgb, tmp_path):
    model, _, _, _ = rgb
    np.save(tmp_path / "w.npy", np.ones((2, 10), np.float32))
    result = run_cli("export", str(model), "--output-seed", str(tmp_path / "w.npy"),
                     "-o", str(tmp_path / "e.onnx"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "one row" in lines[0]
    assert not (tmp_path / "e.onnx").exists()
    refused = run_cli("export", str(model), "--output-seed", str(tmp_path / "w.npy"),
                      "-o", str(tmp_path / "w.npy"))
    assert refused.exit_code == 2 and "refusing to overwrite" in refused.stderr
