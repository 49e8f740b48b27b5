"""Gradients through control flow exported from torch: `torch.cond` by the dynamo exporter
becomes an ONNX `If` whose branches read outer tensors; saliency must equal torch autograd
on inputs taking each branch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnxplain

from .conftest import require


def _torch_saliency(zoo, image: np.ndarray, targets: np.ndarray) -> tuple:
    torch = require("torch")
    module = zoo.load_torch("cond_cnn")
    x = torch.from_numpy(image).requires_grad_(True)
    logits = module(x)
    logits[torch.arange(len(targets)), torch.from_numpy(targets)].sum().backward()
    return logits.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["bright-branch", "dark-branch"])
def test_cond_saliency_equals_torch_autograd(zoo, sign: float):
    image = zoo.sample("cond_cnn")["image"] * np.float32(sign)
    assert (image.mean() >= 0) == (sign > 0)  # each case takes the branch it names
    explainer = onnxplain.Explainer(zoo.model_path("cond_cnn"), providers="cpu")
    targets = np.array([1, 3])
    result = explainer.explain({"image": image}, target=targets, abs=False)
    logits, want = _torch_saliency(zoo, image, targets)
    np.testing.assert_allclose(result.outputs["logits"], logits, rtol=1e-5, atol=1e-5)
    got = result["image"] if result["image"].shape == want.shape else result.tensors["image"]
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _scripted_loop():
    """h <- tanh(cell(h) + x), repeated width/2 times, then a dense head: torch.jit.script
    and the legacy exporter write the repetition as an ONNX Loop (trip count computed from
    the input's shape, weights and x captured by the body)."""
    torch = require("torch")

    class Recurrent(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell, self.head = torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.zeros_like(x)
            for _ in range(int(x.shape[1] // 2)):
                h = torch.tanh(self.cell(h) + x)
            return self.head(h)

    torch.manual_seed(0)
    return Recurrent().eval()


def test_scripted_loop_saliency_equals_torch_autograd(tmp_path):
    torch = require("torch")
    module = _scripted_loop()
    path = tmp_path / "loop.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(module), (torch.randn(2, 6),), str(path),
                          dynamo=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}}, opset_version=17)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    targets = np.array([0, 2, 1])
    explainer = onnxplain.Explainer(path, providers="cpu")
    assert any(node.op_type == "Loop" for node in explainer.model.proto.graph.node)
    result = explainer.explain({"x": x}, target=targets, abs=False)
    tx = torch.from_numpy(x).requires_grad_(True)
    module(tx)[torch.arange(3), torch.from_numpy(targets)].sum().backward()
    want = tx.grad.numpy()
    np.testing.assert_allclose(result["x"], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _scanned_rnn():
    """h <- tanh(h W + x_t) over the time axis by torch's scan, a head on the last state and
    on the sum of the per-step outputs: the dynamo exporter writes an ONNX Scan (state,
    scan input, scan output, W captured by the body)."""
    torch = require("torch")
    from torch._higher_order_ops.scan import scan

    class Scanned(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W = torch.nn.Parameter(torch.randn(4, 4) * 0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            def step(h: torch.Tensor, xt: torch.Tensor):
                h2 = torch.tanh(h @ self.W + xt)
                return h2, h2 * 2.0

            h_last, per_step = scan(step, torch.zeros(x.shape[0], 4), x.transpose(0, 1))
            return h_last + per_step.sum(0)

    torch.manual_seed(0)
    return Scanned().eval()


def test_dynamo_scan_saliency_equals_torch_autograd(tmp_path):
    torch = require("torch")
    module = _scanned_rnn()
    path = tmp_path / "scan.onnx"
    x = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=True,
                          input_names=["x"], output_names=["logits"], verbose=False)
    explainer = onnxplain.Explainer(path, providers="cpu")
    assert any(node.op_type == "Scan" for node in explainer.model.proto.graph.node)
    targets = np.array([3, 0])
    result = explainer.explain({"x": x}, target=targets, abs=False)
    tx = torch.from_numpy(x).requires_grad_(True)
    module(tx)[torch.arange(2), torch.from_numpy(targets)].sum().backward()
    want = tx.grad.numpy()
    np.testing.assert_allclose(result["x"], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
