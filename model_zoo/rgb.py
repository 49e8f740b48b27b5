"""Small RGB image classifiers with random weights, shaped like the graphs users download.

- rgb_cnn: conv-relu blocks, max pool, global average pool and a dense head over 3x32x32
  images, 10 classes, symbolic batch axis (the quick 3-channel model of the tests).
- rgb_squeezenet: a SqueezeNet-style network over 3x64x64 images whose classifier is a 1x1
  convolution to 1000 classes, global average pooling and a softmax over the channel axis, so
  its output is [N, 1000, 1, 1] as in the classic ONNX model zoo's SqueezeNet and DenseNet.

The samples are synthetic pictures (smooth colour gradients with a bright square and disc), so
a heatmap has structure to show.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def rgb_cnn_architecture():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def rgb_squeezenet_architecture():
    import torch
    from torch import nn

    class Fire(nn.Module):
        def __init__(self, cin: int, squeeze: int, expand: int) -> None:
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
            self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
            self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.squeeze(x)
            return torch.cat([self.expand1(s), self.expand3(s)], dim=1)

    class SqueezeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(32, 8, 32), Fire(64, 8, 32), nn.MaxPool2d(3, 2, ceil_mode=True),
                Fire(64, 16, 64))
            self.classifier = nn.Sequential(nn.Conv2d(128, 1000, 1), nn.ReLU(),
                                            nn.AdaptiveAvgPool2d(1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.classifier(self.features(image)), dim=1)

    return SqueezeNet()


def synthetic_pictures(count: int, size: int, seed: int = 0) -> np.ndarray:
    """[count, 3, size, size] float32 in [0, 1]: a colour gradient, a square and a disc."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, size, dtype=np.float32)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    pictures = np.empty((count, 3, size, size), dtype=np.float32)
    for index in range(count):
        tint = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
        picture = np.stack([tint[0] * rows, tint[1] * cols, tint[2] * (1 - rows)])
        top, left = rng.integers(0, size // 2, size=2)
        side = size // 4
        picture[:, top:top + side, left:left + side] = rng.uniform(0.6, 1.0, size=(3, 1, 1))
        centre = rng.uniform(0.3, 0.7, size=2) * size
        disc = (rows * size - centre[0]) ** 2 + (cols * size - centre[1]) ** 2 < (size / 6) ** 2
        picture[:, disc] = rng.uniform(0.0, 0.4, size=(3, 1))
        pictures[index] = picture
    return np.clip(pictures, 0.0, 1.0)


def _seeded(architecture, size: int, count: int):
    import torch

    torch.manual_seed(0)
    return architecture().eval(), {
        "image": torch.from_numpy(synthetic_pictures(count, size))}


def make_rgb_cnn():
    return _seeded(rgb_cnn_architecture, 32, 4)


def make_rgb_squeezenet():
    """He-initialised with zero biases, so the class scores depend on the picture; the
    classifier is scaled so that the softmax over 1000 classes is not nearly uniform (its
    gradient would then be rounding noise)."""
    import torch
    from torch import nn

    model, example = _seeded(rgb_squeezenet_architecture, 64, 2)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        model.classifier[0].weight.mul_(10.0)
    return model, example


def export_rgb_model(model, example: dict, path: Path) -> None:
    """Legacy exporter, opset 13, symbolic batch axis on the input and the output."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), str(path),
                          input_names=list(example), output_names=["scores"],
                          dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}},
                          opset_version=13, dynamo=False)
