"""One rule for what is explained, in every family: class outputs shaped [N, C, 1, 1] (the
classic ONNX zoo's SqueezeNet and DenseNet) are classifiers, and outputs with no score per row
(neither classes, one value, nor scores per position or pixel) are refused by every method
unless an output seed weights them.

Oracles: torch autograd of the SqueezeNet-style zoo model; the same model with its output
flattened to [N, C] (every method must give the same attribution); numpy dot products of the
output seed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxplain
from onnxplain.errors import InputError
from onnxplain.methods import METHODS

from .cli_helpers import run

# Small settings so every method runs in about a second on the 64x64 model.
QUICK = {"rise": {"n_masks": 16}, "lime": {"n_samples": 24}, "kernel_shap": {"n_samples": 24},
         "integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3},
         "smoothgrad_sq": {"n_samples": 3}, "vargrad": {"n_samples": 3},
         "occlusion": {"window": 16, "stride": 16},
         "feature_ablation": {"features": "grid", "cell": 16}}
IMAGE_METHODS = sorted(name for name, spec in METHODS.items()
                       if spec.family not in ("attention",)
                       and name not in ("layer_integrated_gradients", "cam"))


@pytest.fixture(scope="module")
def squeezenet(zoo):
    return str(zoo.model_path("rgb_squeezenet")), zoo.sample("rgb_squeezenet")["image"][:2]


@pytest.fixture(scope="module")
def flattened(squeezenet) -> onnx.ModelProto:
    """The same network with its [N, 1000, 1, 1] output flattened to [N, 1000]."""
    model = onnx.load(squeezenet[0])
    graph = model.graph
    old = graph.output[0]
    graph.node.append(helper.make_node("Flatten", [old.name], ["flat"], axis=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("flat", onnx.TensorProto.FLOAT,
                                                      ["batch", 1000]))
    return model


def test_squeezenet_output_is_four_dimensional(squeezenet):
    dims = [d.dim_value or d.dim_param for d in
            onnx.load(squeezenet[0]).graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1000, 1, 1]


def test_saliency_of_a_four_dimensional_classifier_matches_torch(zoo, squeezenet):
    torch = pytest.importorskip("torch")
    path, x = squeezenet
    result = onnxplain.Explainer(path, "cpu").explain(x, "saliency", target=[5, 6], abs=False)
    module = zoo.load_torch("rgb_squeezenet")
    inputs = torch.from_numpy(x).requires_grad_(True)
    out = module(inputs)
    out[0, 5, 0, 0].add(out[1, 6, 0, 0]).backward()
    expected = inputs.grad.numpy()
    np.testing.assert_allclose(result["image"], expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    assert result.target.tolist() == [5, 6]
    np.testing.assert_allclose(result.target_score, out.detach().numpy()[[0, 1], [5, 6], 0, 0],
                               rtol=1e-5)


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_method_treats_n_c_1_1_as_n_c(method, squeezenet, flattened):
    path, x = squeezenet
    options = QUICK.get(method, {})
    four = onnxplain.Explainer(path, "cpu", progress=False)
    two = onnxplain.Explainer(flattened, "cpu", progress=False)
    for target in (None, 7, [5, 6]):
        got = four.explain(x, method, target, **options)
        want = two.explain(x, method, target, **options)
        np.testing.assert_allclose(got.first, want.first, rtol=1e-5,
                                   atol=1e-6 * (np.abs(want.first).max() + 1e-30))
        assert got.target.tolist() == want.target.tolist()
        np.testing.assert_allclose(got.target_score, want.target_score, rtol=1e-6)
        assert got.predicted.tolist() == want.predicted.tolist()


def test_export_treats_n_c_1_1_as_n_c(squeezenet, flattened):
    ort = pytest.importorskip("onnxruntime")
    from onnxplain.exporter import export_explainer

    path, x = squeezenet
    outputs = {}
    for label, model in (("four", path), ("two", flattened)):
        exported = export_explainer(model, "integrated_gradients", n_steps=4)
        session = ort.InferenceSession(exported.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        outputs[label] = dict(zip([o.name for o in session.get_outputs()],
                                  session.run(None, {"image": x, "target": np.array([5, 6])}),
                                  strict=True))
    np.testing.assert_allclose(outputs["four"]["attribution/image"],
                               outputs["two"]["attribution/image"], rtol=1e-5, atol=1e-9)
    assert outputs["four"]["target_used"].tolist() == [5, 6]
    in_process = onnxplain.Explainer(path, "cpu").explain(x, "integrated_gradients", [5, 6],
                                                          n_steps=4)
    np.testing.assert_allclose(outputs["four"]["attribution/image"], in_process["image"],
                               rtol=1e-4, atol=1e-6 * np.abs(in_process["image"]).max())


@pytest.fixture(scope="module")
def map_output(squeezenet) -> onnx.ModelProto:
    """The SqueezeNet whose only output is its class map reshaped to [N, 10, 100, 7, 7]: no
    score per row (a [N, 1000, 7, 7] map has one: tests/test_sequence_objectives.py)."""
    model = onnx.load(squeezenet[0])
    tensor = next(n.output[0] for n in model.graph.node if n.name.endswith("classifier.1/Relu"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        np.array([-1, 10, 100, 7, 7], np.int64), "five_axes"))
    model.graph.node.append(helper.make_node("Reshape", [tensor, "five_axes"], ["map"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(
        "map", onnx.TensorProto.FLOAT, ["batch", 10, 100, 7, 7]))
    return model


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "grad_cam", "rise",
                                    "occlusion", "lime", "kernel_shap", "lrp", "deeplift"])
def test_every_family_refuses_an_output_without_a_score_per_row(method, map_output, squeezenet):
    explainer = onnxplain.Explainer(map_output, "cpu", progress=False)
    for target in (None, 3):
        with pytest.raises(InputError, match="neither class scores .* nor one value per row"):
            explainer.explain(squeezenet[1], method, target, **QUICK.get(method, {}))


@pytest.mark.parametrize("method", ["saliency", "occlusion", "rise"])
def test_a_seed_makes_any_output_explainable_and_is_the_stated_score(method, map_output,
                                                                     squeezenet):
    x = squeezenet[1]
    seed = np.random.default_rng(0).random((2, 10, 100, 7, 7)).astype(np.float32)
    explainer = onnxplain.Explainer(map_output, "cpu", progress=False)
    result = explainer.explain(x, method, output_seed=seed, **QUICK.get(method, {}))
    output = next(iter(explainer.forward(x).values()))
    np.testing.assert_allclose(result.target_score,
                               (seed * output).reshape(2, -1).sum(axis=1), rtol=1e-5)
    assert result.objective == "output_seed"
    assert result.summary()["explained"] == f"sum(output_seed * {explainer.output}) per row"
    assert np.any(result.first)


def test_cli_target_on_a_four_dimensional_classifier(squeezenet, tmp_path):
    """The issue's report: rise with -t 5 was an internal IndexError, two targets dropped."""
    path, x = squeezenet
    np.save(tmp_path / "x.npy", x)
    for target, expected in (("5", [5, 5]), ("5,6", [5, 6])):
        result = run("explain", path, "-i", str(tmp_path / "x.npy"), "-m", "rise",
                     "-O", "n_masks=16", "-t", target, "-o", str(tmp_path / "out"), "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["target"] == expected
        assert summary["explained"] == "the score of the target class in output 'scores'"


def test_cli_states_the_objective(squeezenet, tmp_path):
    path, x = squeezenet
    np.save(tmp_path / "x.npy", x[:1])
    result = run("explain", path, "-i", str(tmp_path / "x.npy"), "-t", "5",
                 "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("explained: the score of the target class in output 'scores'" in line
               for line in lines)
    row = next(line for line in lines if line.strip().startswith("row 0"))
    assert "class 5 (explained score" in row and "predicted class" in row


def test_cli_refuses_an_output_without_a_score_per_row(map_output, squeezenet, tmp_path):
    onnx.save(map_output, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", squeezenet[1])
    for method in ("saliency", "rise"):
        result = run("explain", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npy"),
                     "-m", method, "-O", "n_masks=8" if method == "rise" else "abs=true",
                     "-o", str(tmp_path / "out"))
        assert result.exit_code == 2
        assert result.stderr.count("\n") == 1 and "--output-seed" in result.stderr


@pytest.mark.parametrize("classes, form", [(3, "sequence"), (50, "next_token")])
def test_per_position_logits_are_a_language_model_only_over_the_vocabulary(classes, form):
    """[N, T, C] logits of a model reading token ids: over the vocabulary (C = the rows of the
    embedding table) a language model, explained at the next token; a token classifier's
    handful of tags is not: the predicted tag at every position (objective)."""
    from onnxplain.objective import output_form

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["embedded"]),
         helper.make_node("MatMul", ["embedded", "head"], ["logits"])], "g",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT,
                                       ["batch", "sequence", classes])],
        [onnx.numpy_helper.from_array(rng.standard_normal((50, 4)).astype(np.float32), "table"),
         onnx.numpy_helper.from_array(rng.standard_normal((4, classes)).astype(np.float32),
                                      "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    explainer = onnxplain.Explainer(model, "cpu")
    assert output_form(explainer.model, "logits") == form
    ids = rng.integers(0, 50, (2, 5))
    assert explainer.explain(ids, "saliency").objective == form
