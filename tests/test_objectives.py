"""What is explained: class targets, weights on the output, one-value outputs, and where
attributions are taken; each against a numpy or torch oracle."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import onnxplain
from onnxplain.errors import InputError
from onnxplain_cli.main import main

from .tiny_models import mlp, mlp_reference

X = np.random.default_rng(11).standard_normal((5, 6)).astype(np.float32)


def test_output_seed_weights_the_whole_output():
    seed = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    result = onnxplain.Explainer(mlp(), providers="cpu").explain(X, output_seed=seed, abs=False)
    _, jacobian = mlp_reference(mlp(), X)
    np.testing.assert_allclose(result["x"], np.einsum("nc,ncf->nf", seed, jacobian),
                               rtol=1e-5, atol=1e-6)
    assert result.objective == "output_seed" and result.summary()["objective"] == "output_seed"


def test_one_hot_seed_equals_class_target():
    explainer = onnxplain.Explainer(mlp(), providers="cpu")
    targets = np.array([0, 3, 1, 2, 3])
    seed = np.eye(4, dtype=np.float32)[targets]
    by_seed = explainer.explain(X, output_seed=seed)
    by_target = explainer.explain(X, target=targets)
    np.testing.assert_allclose(by_seed["x"], by_target["x"], rtol=1e-6)


@pytest.mark.parametrize("seed, fragment", [
    (np.zeros((4, 4), np.float32), "output_seed has shape (4, 4)"),
    (np.zeros((5, 3), np.float32), "output_seed has shape (5, 3)"),
    (np.zeros((5,), np.float32), "output_seed has shape (5,)"),
])
def test_bad_output_seed_is_an_input_error(seed, fragment):
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        onnxplain.Explainer(mlp(), providers="cpu").explain(X, output_seed=seed)


def test_target_and_seed_together_are_refused():
    with pytest.raises(InputError, match="either target or output_seed"):
        onnxplain.Explainer(mlp(), providers="cpu").explain(
            X, target=1, output_seed=np.ones((5, 4), np.float32))


def test_one_value_outputs_are_explained_directly():
    """An output [batch] (a regression score) is its own objective; a target is refused."""
    model = mlp(classes=1)
    graph = model.graph
    graph.node.append(helper.make_node("Reshape", ["logits", "minus_one"], ["score"]))
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64),
                                                          "minus_one"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]))
    explainer = onnxplain.Explainer(model, providers="cpu")
    result = explainer.explain(X, abs=False)
    _, jacobian = mlp_reference(mlp(classes=1), X)
    np.testing.assert_allclose(result["x"], jacobian[:, 0], rtol=1e-5, atol=1e-6)
    assert result.objective == "sum" and result.predicted is None
    for method in ("saliency", "occlusion"):  # one rule for every family
        with pytest.raises(InputError, match="one value per row and no class axis"):
            explainer.explain(X, method, target=0)
    occluded = explainer.explain(X, "occlusion", window=1)
    np.testing.assert_allclose(occluded.target_score, explainer.forward(X)["score"], rtol=1e-6)


def test_attribute_at_an_intermediate_tensor():
    """Attributing the MLP input at its hidden pre-activation h = x W1 + b1."""
    model = mlp()
    result = onnxplain.Explainer(model, providers="cpu", attribute_at={"x": "h"}).explain(
        X, target=2, abs=False)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    h = X.astype(np.float64) @ weights["w1"] + weights["b1"]
    expected = (h > 0) * weights["w2"][:, 2]
    np.testing.assert_allclose(result["x"], expected, rtol=1e-5, atol=1e-6)
    assert result.sources == {"x": "h"}


@pytest.mark.parametrize("overrides, fragment", [
    ({"y": "h"}, "cannot attribute unknown input 'y'"),
    ({"x": "nothing"}, "no tensor named 'nothing'"),
])
def test_attribute_at_errors(overrides, fragment):
    with pytest.raises(InputError, match=fragment):
        onnxplain.Explainer(mlp(), providers="cpu", attribute_at=overrides)


def test_token_ids_attributed_at_a_named_tensor_match_torch(zoo):
    """BERT ids attributed after the embedding LayerNorm instead of at the word embedding."""
    from .conftest import require

    torch = require("torch")
    sample = zoo.sample("bert_small")
    path = zoo.model_path("bert_small")
    model = onnxplain.Explainer(path, providers="cpu").model
    norm = next(n.output[0] for n in model.proto.graph.node
                if n.op_type == "LayerNormalization" and "embeddings" in n.name)
    explainer = onnxplain.Explainer(path, providers="cpu", attribute_at={"input_ids": norm})
    result = explainer.explain(sample, target=1, abs=False)
    module = zoo.load_torch("bert_small")
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["norm"] = output

    hook = module.model.bert.embeddings.LayerNorm.register_forward_hook(keep)
    logits = module(*[torch.from_numpy(v) for v in sample.values()])
    logits[:, 1].sum().backward()
    hook.remove()
    want = captured["norm"].grad.numpy()
    got = result.tensors[norm]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    np.testing.assert_allclose(result["input_ids"], np.linalg.norm(want, axis=-1),
                               rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_cli_output_seed_and_attribute_at(tmp_path):
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", X)
    seed = np.random.default_rng(5).standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "seed.npy", seed)
    result = CliRunner().invoke(main, [
        "explain", str(tmp_path / "mlp.onnx"), "-i", str(tmp_path / "x.npy"),
        "--output-seed", str(tmp_path / "seed.npy"), "-O", "abs=false", "--json",
        "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["objective"] == "output_seed"
    _, jacobian = mlp_reference(mlp(), X)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "attribution.npy"),
                               np.einsum("nc,ncf->nf", seed, jacobian), rtol=1e-5, atol=1e-6)
    at = CliRunner().invoke(main, [
        "explain", str(tmp_path / "mlp.onnx"), "-i", str(tmp_path / "x.npy"),
        "--attribute-at", "x=h", "--json", "-o", str(tmp_path / "out2")])
    assert at.exit_code == 0, at.stderr
    assert json.loads(at.stdout)["inputs"]["x"]["source"] == "h"
    bad = CliRunner().invoke(main, [
        "explain", str(tmp_path / "mlp.onnx"), "-i", str(tmp_path / "x.npy"),
        "--attribute-at", "x=missing", "-o", str(tmp_path / "out3")])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: no tensor named 'missing'")
