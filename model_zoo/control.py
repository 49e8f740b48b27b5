"""A tiny classifier with data-dependent control flow (issue 17, item 2).

- cond_cnn: a conv stem over 3x16x16 images, then `torch.cond` on the sign of the input's
  mean (over the whole batch: torch.cond takes one scalar) picks one of two heads; the
  dynamo exporter writes the choice as an ONNX `If` whose branches read the stem's features
  and the heads' weights from the outer graph.

Random weights: the model exists to check gradients through `If` against torch autograd.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def cond_cnn_architecture():
    import torch
    from torch import nn

    class CondCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.bright = nn.Linear(8, 4)
            self.dark = nn.Linear(8, 4)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            features = self.stem(image)

            def bright(f: torch.Tensor) -> torch.Tensor:
                return torch.tanh(self.bright(f)) * 3.0

            def dark(f: torch.Tensor) -> torch.Tensor:
                return self.dark(f * f)

            return torch.cond(image.mean() >= 0, bright, dark, (features,))

    return CondCNN()


def make_cond_cnn():
    import torch

    torch.manual_seed(0)
    model = cond_cnn_architecture()
    # Pixels in [0, 1): the sample, its masked copies and the zero baseline all take the
    # `bright` branch (so IG's path stays in one branch); tests negate it for `dark`.
    image = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    return model, {"image": torch.from_numpy(image)}


def export_cond_cnn(model, example: dict, path: Path) -> None:
    """The dynamo exporter (torch.export), symbolic batch, opset 18."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), str(path),
                          input_names=list(example), output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},),
                          opset_version=18, dynamo=True, verbose=False)
