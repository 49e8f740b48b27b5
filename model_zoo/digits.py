"""A small CNN trained on scikit-learn's bundled 8x8 digits: seconds on a CPU, ~97% accuracy.

conv-relu, conv-relu, maxpool, conv-relu, global average pool, dense: the last conv block
feeds a GAP + dense head, which CAM needs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def digits_architecture():
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU())
            self.classifier = nn.Linear(64, 10)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(image).mean(dim=(2, 3)))

    return DigitsCNN()


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split (fixed): images scaled to [0, 1], shape [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:1500], order[1500:]
    return images[train], labels[train], images[test], labels[test]


def make_digits_cnn():
    import torch

    torch.manual_seed(0)
    model = digits_architecture()
    x_train, y_train, x_test, y_test = digits_data()
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        for batch in torch.randperm(len(ys), generator=generator).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    if accuracy < 0.9:
        raise RuntimeError(f"digits CNN trained to only {accuracy:.2%} test accuracy")
    return model, {"image": torch.from_numpy(x_test[:16])}


def export_digits_cnn(model, example: dict, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example["image"],), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                          opset_version=17, dynamo=False)
