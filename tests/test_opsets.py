"""Saliency across the opsets exporters write (9 to 23 here, legacy and dynamo exporters; 24
to 28 in test_newest_opsets.py), each against torch autograd on the same trained digits CNN."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

import onnxplain

from .conftest import require

EXPORTS = [(9, False), (11, False), (13, False), (17, False), (20, False), (18, True),
           (23, True)]


@pytest.mark.parametrize("opset, dynamo", EXPORTS,
                         ids=[f"opset{o}-{'dynamo' if d else 'legacy'}" for o, d in EXPORTS])
def test_saliency_equals_torch_at_every_opset(zoo, tmp_path, opset, dynamo):
    torch = require("torch")
    module = zoo.load_torch("digits_cnn")
    path = tmp_path / "digits.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
            torch.onnx.export(module, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=True,
                              input_names=["image"], output_names=["logits"],
                              opset_version=opset, dynamic_shapes=shapes)
        else:
            torch.onnx.export(module, (torch.zeros(2, 1, 8, 8),), str(path), dynamo=False,
                              input_names=["image"], output_names=["logits"],
                              opset_version=opset, dynamic_axes={"image": {0: "batch"}})
    assert onnxplain.Explainer(path, providers="cpu").model.opset == opset
    assert onnx.load(str(path)).opset_import
    image = zoo.sample("digits_cnn")["image"]
    targets = np.arange(len(image)) % 10
    result = onnxplain.Explainer(path, providers="cpu").explain(image, target=targets,
                                                                abs=False)
    x = torch.from_numpy(image).requires_grad_(True)
    module(x)[torch.arange(len(targets)), torch.from_numpy(targets)].sum().backward()
    want = x.grad.numpy()
    assert np.abs(result["image"] - want).max() / np.abs(want).max() < 1e-4
