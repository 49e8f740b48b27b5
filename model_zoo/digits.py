"""Small models trained on scikit-learn's bundled 8x8 digits: seconds on a CPU, ~95% accuracy.

- digits_cnn: conv-relu, conv-relu, maxpool, conv-relu, global average pool, dense (a CAM head).
- digits_bn_cnn: the same with batch norm after each conv, exported without folding it away,
  so BatchNormalization nodes stay in the ONNX graph.
- digits_mlp: dense-relu, dense-relu, dense on the 64 pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def _cnn(batch_norm: bool):
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> list:
        layers = [nn.Conv2d(cin, cout, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        return layers + [nn.ReLU()]

    class DigitsCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2),
                                          *block(32, 64))
            self.classifier = nn.Linear(64, 10)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.classifier(self.features(image).mean(dim=(2, 3)))

    return DigitsCNN()


def digits_architecture():
    return _cnn(batch_norm=False)


def digits_bn_architecture():
    return _cnn(batch_norm=True)


def digits_mlp_architecture():
    from torch import nn

    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 10))


def digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split (fixed): images scaled to [0, 1], shape [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[:1500], order[1500:]
    return images[train], labels[train], images[test], labels[test]


def fit(model, xs, ys) -> None:
    """40 epochs of Adam (lr 3e-3, batches of 64, seeded order); leaves the model in eval."""
    import torch

    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        for batch in torch.randperm(len(ys), generator=generator).split(64):
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            loss.backward()
            optimiser.step()
    model.eval()


def _train(model, flat: bool):
    import torch

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_data()
    if flat:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    fit(model, torch.from_numpy(x_train), torch.from_numpy(y_train))
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    if accuracy < 0.9:
        raise RuntimeError(f"digits model trained to only {accuracy:.2%} test accuracy")
    return model, torch.from_numpy(x_test[:16])


def make_digits_cnn():
    import torch

    torch.manual_seed(0)
    model, sample = _train(digits_architecture(), flat=False)
    return model, {"image": sample}


def make_digits_bn_cnn():
    import torch

    torch.manual_seed(0)
    model, sample = _train(digits_bn_architecture(), flat=False)
    return model, {"image": sample}


def make_digits_mlp():
    import torch

    torch.manual_seed(0)
    model, sample = _train(digits_mlp_architecture(), flat=True)
    return model, {"features": sample}


def _export(model, example: dict, path: Path, fold: bool = True) -> None:
    import torch

    name = next(iter(example))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example[name],), str(path), input_names=[name],
                          output_names=["logits"], dynamic_axes={name: {0: "batch"}},
                          opset_version=17, dynamo=False, do_constant_folding=fold)


def export_digits_cnn(model, example: dict, path: Path) -> None:
    _export(model, example, path)


def export_keeping_batch_norm(model, example: dict, path: Path) -> None:
    _export(model, example, path, fold=False)
