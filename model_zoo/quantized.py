"""Trained zoo models passed through ONNX Runtime's quantization tools, as users ship them.

- digits_cnn_qdq / digits_cnn_qoperator: the digits_cnn weights, `quantize_static` (uint8
  activations, int8 weights, calibrated on 256 training digits) in the QDQ format
  (QuantizeLinear/DequantizeLinear pairs around float ops) and the QOperator format
  (QLinearConv, MaxPool on uint8, com.microsoft QGemm).
- digits_resnet_qdq / digits_resnet_qoperator: a small residual CNN trained on the digits,
  per-channel weights in QDQ; QOperator adds QLinearAdd and QLinearGlobalAveragePool.
- sentiment_bert_dynamic: the sentiment_bert weights through `quantize_dynamic`
  (DynamicQuantizeLinear + MatMulInteger, int8 embedding tables looked up then dequantized).
- bert_small_ort_dynamic: bert_small_ort (ONNX Runtime's transformer optimizer) through
  `quantize_dynamic`, which turns the fused Attention into com.microsoft QAttention and
  EmbedLayerNormalization into QEmbedLayerNormalization (uint8 tables).

Each folder also holds `float.onnx`, the export before quantization (the tests' oracle).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import digits, optimized, registry, sentiment
from .digits import digits_architecture  # noqa: F401 - the registry names it in this module
from .hf_models import bert_small_architecture, make_bert_small  # noqa: F401 - likewise
from .sentiment import sentiment_architecture  # noqa: F401 - likewise

CALIBRATION_ROWS = 256


def digits_resnet_architecture():
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.body(x))

    return nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), Residual(12),
                         nn.MaxPool2d(2), Residual(12), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(12, 10))


def make_digits_cnn_reused():
    """The zoo's digits_cnn (same weights, no retraining) and its sample."""
    return registry.reused("digits_cnn")


def make_digits_resnet():
    import torch

    torch.manual_seed(0)
    model, sample = digits._train(digits_resnet_architecture(), flat=False)
    return model, {"image": sample}


def make_digits_resnet_reused():
    """digits_resnet_qdq's float weights (trained once for both formats)."""
    return registry.reused("digits_resnet_qdq")


def make_sentiment_bert_reused():
    return registry.reused("sentiment_bert")


def export_qdq(module, example: dict, path: Path) -> None:
    _quantize_static(module, example, Path(path), "QDQ", per_channel=True)


def export_qoperator(module, example: dict, path: Path) -> None:
    _quantize_static(module, example, Path(path), "QOperator", per_channel=False)


def export_dynamic(module, example: dict, path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    path = Path(path)
    sentiment.export_sentiment_bert(module, example, path.with_name("float.onnx"))
    quantize_dynamic(str(path.with_name("float.onnx")), str(path))


def export_bert_ort_dynamic(module, example: dict, path: Path) -> None:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    path = Path(path)
    optimized.export_bert_ort(module, example, path.with_name("float.onnx"))
    # The quantizer's shape inference cannot type the outputs of contrib ops (fused
    # Attention, SkipLayerNormalization): it is told they are float.
    quantize_dynamic(str(path.with_name("float.onnx")), str(path),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def _quantize_static(module, example: dict, path: Path, quant_format: str,
                     per_channel: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Digits(CalibrationDataReader):
        def __init__(self) -> None:
            images = digits.digits_data()[0][:CALIBRATION_ROWS]
            self.batches = iter([{"image": images[i:i + 32]} for i in range(0, len(images), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    float_path = path.with_name("float.onnx")
    digits.export_digits_cnn(module, example, float_path)
    quantize_static(str(float_path), str(path), Digits(), quant_format=QuantFormat[quant_format],
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=per_channel)
