"""Saliency against torch autograd on PyTorch models exported to ONNX (the oracle), and the
batch invariants: a batch equals its rows explained one by one, fixed-batch models work."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnxplain

from .conftest import require

# Models whose sample input is decision-stable (see test_oracle_input_is_decision_stable).
STRICT = ["digits_cnn", "resnet18_64", "vit_small", "bert_small"]


def max_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def l2_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def torch_gradients(zoo, name: str, sample: dict, targets: np.ndarray, double: bool = False):
    """Logits and d(sum_rows logit[row, target[row]]) / d(attributed tensors), from torch."""
    torch = require("torch")
    module = zoo.load_torch(name)
    if double:
        module = module.double()
    captured: dict = {}
    inputs = {k: torch.from_numpy(v) for k, v in sample.items()}
    if double:
        inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    hooks = []
    if "input_ids" in sample:
        embeddings = module.model.bert.embeddings

        def keep(key):
            def hook(_module, _inputs, output):
                output.retain_grad()
                captured[key] = output
            return hook

        hooks = [embeddings.word_embeddings.register_forward_hook(keep("input_ids")),
                 embeddings.token_type_embeddings.register_forward_hook(keep("token_type_ids"))]
    else:
        for value in inputs.values():
            value.requires_grad_(True)
        captured = inputs
    logits = module(*inputs.values())
    logits[torch.arange(len(targets)), torch.from_numpy(targets)].sum().backward()
    for hook in hooks:
        hook.remove()
    grads = {k: v.grad.double().numpy() for k, v in captured.items()}
    return logits.detach().double().numpy(), grads


def _targets(explainer: onnxplain.Explainer, sample: dict) -> np.ndarray:
    classes = explainer.model.output("logits").dims[1]
    rows = next(iter(sample.values())).shape[0]
    return (np.arange(rows) * 3 + 1) % classes


@pytest.mark.parametrize("name", STRICT)
def test_oracle_input_is_decision_stable(zoo, name):
    """Precondition of the strict comparison: torch in float32 and float64 agree to 1e-5, so
    float32 rounding flips no ReLU or max-pool decision on this input (at 224x224 some do)."""
    sample = zoo.sample(name)
    targets = _targets(onnxplain.Explainer(zoo.model_path(name), providers="cpu"), sample)
    _, single = torch_gradients(zoo, name, sample, targets)
    _, double = torch_gradients(zoo, name, sample, targets, double=True)
    for key in single:
        assert max_relative_error(single[key], double[key]) < 1e-5, key


@pytest.mark.parametrize("name", STRICT)
def test_saliency_equals_torch_autograd(zoo, name):
    sample = zoo.sample(name)
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    targets = _targets(explainer, sample)
    result = explainer.explain(sample, target=targets, abs=False)
    logits, grads = torch_gradients(zoo, name, sample, targets)
    np.testing.assert_allclose(result.outputs["logits"], logits, rtol=1e-4, atol=1e-4)
    assert result.target.tolist() == targets.tolist()
    for input_name, want in grads.items():
        got = result.tensors[result.sources[input_name]]
        assert got.shape == want.shape
        error = max_relative_error(got, want)
        assert error < 1e-4, (input_name, error)
        if result.sources[input_name] != input_name:  # token ids: gradient norm per token
            per_token = np.linalg.norm(want, axis=-1)
            assert max_relative_error(result[input_name], per_token) < 1e-4
    absolute = explainer.explain(sample, target=targets)
    for input_name in grads:
        np.testing.assert_array_equal(absolute.tensors[absolute.sources[input_name]],
                                      np.abs(result.tensors[result.sources[input_name]]))


def test_resnet18_at_224_is_as_accurate_as_torch_itself(zoo):
    """At 224x224 float32 rounding flips a few ReLU/max-pool decisions in any implementation,
    so compare both float32 gradients with torch's float64 one: ours must not be worse."""
    sample = zoo.sample("resnet18")
    explainer = onnxplain.Explainer(zoo.model_path("resnet18"), providers="cpu")
    targets = _targets(explainer, sample)
    ours = explainer.explain(sample, target=targets, abs=False)["pixel_values"]
    _, single = torch_gradients(zoo, "resnet18", sample, targets)
    _, double = torch_gradients(zoo, "resnet18", sample, targets, double=True)
    exact, torch32 = double["pixel_values"], single["pixel_values"]
    assert l2_relative_error(ours, exact) <= 1.5 * l2_relative_error(torch32, exact) + 1e-5
    assert max_relative_error(ours, exact) <= 1.5 * max_relative_error(torch32, exact) + 1e-5


@pytest.mark.parametrize("name", ["digits_cnn", "bert_small"])
def test_batch_equals_rows_one_by_one(zoo, name):
    sample = zoo.sample(name)
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    batch = explainer.explain(sample)
    rows = next(iter(sample.values())).shape[0]
    for row in range(rows):
        single = explainer.explain({k: v[row:row + 1] for k, v in sample.items()})
        assert single.target.tolist() == batch.target[row:row + 1].tolist()
        for key, values in single.attributions.items():
            np.testing.assert_allclose(values[0], batch[key][row], rtol=1e-5, atol=1e-6)
    chunked = explainer.explain(sample, batch_size=2)
    for key in batch:
        np.testing.assert_allclose(chunked[key], batch[key], rtol=1e-5, atol=1e-6)


def test_padded_tokens_get_no_attribution(zoo):
    sample = zoo.sample("bert_small")
    result = onnxplain.Explainer(zoo.model_path("bert_small"), providers="cpu").explain(sample)
    padded = sample["attention_mask"] == 0
    assert padded.any()
    assert np.all(result["input_ids"][padded] == 0)
    assert np.all(result["input_ids"][~padded] > 0)


def test_default_target_is_the_predicted_class(zoo):
    sample = zoo.sample("digits_cnn")
    result = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu").explain(sample)
    assert result.target.tolist() == result.predicted.tolist()
    assert result.target.tolist() == result.outputs["logits"].argmax(1).tolist()
    np.testing.assert_allclose(result.predicted_score, result.target_score)


def test_fixed_batch_model_runs_in_chunks(zoo, tmp_path):
    """A model exported with batch 1 baked in: rows run one by one, with a one-line notice."""
    torch = require("torch")
    module = zoo.load_torch("digits_cnn")
    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 1, 8, 8),), str(path), input_names=["image"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    sample = zoo.sample("digits_cnn")
    fixed = onnxplain.Explainer(path, providers="cpu")
    assert not fixed.model.batch.symbolic and fixed.model.batch.size == 1
    with pytest.warns(onnxplain.BatchNotice, match="fixed to 1; running 16 rows in chunks of 1"):
        chunked = fixed.explain(sample, target=2)
    free = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu").explain(
        sample, target=2)
    np.testing.assert_allclose(chunked["image"], free["image"], rtol=1e-5, atol=1e-6)


def test_memory_budget_chunks_rows_without_changing_results(zoo):
    sample = zoo.sample("digits_cnn")
    path = zoo.model_path("digits_cnn")
    whole = onnxplain.Explainer(path, providers="cpu").explain(sample, target=4)
    tiny = onnxplain.Explainer(path, providers="cpu", memory_budget_mb=0.05)
    from onnxplain.runtime.batching import rows_per_run

    assert rows_per_run(tiny.model, sample, tiny.memory_budget_mb) < len(sample["image"])
    np.testing.assert_allclose(tiny.explain(sample, target=4)["image"], whole["image"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(onnxplain.InputError, match="memory_budget_mb must be positive"):
        onnxplain.Explainer(path, providers="cpu", memory_budget_mb=0)
