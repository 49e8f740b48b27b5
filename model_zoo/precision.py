"""Half-precision and newest-opset exports, as deployment tools write them.

- digits_cnn_fp16 / digits_cnn_fp16_io32: the trained digits CNN through
  `onnxconverter_common.float16.convert_float_to_float16`, without and with keep_io_types
  (float16 image and logits, or float32 ones with Casts at the edges).
- bert_small_fp16: bert_small by the same converter (int64 ids, float16 logits).
- bert_small_ort_fp16: bert_small by `onnxruntime.transformers.float16` (keep_io_types).
- llama_tiny_opset23: a 2-layer Llama classifier (hidden 32, 2 heads, vocabulary 100) by
  torch's dynamo exporter at opset 23, which writes RMSNormalization, RotaryEmbedding and
  Attention nodes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .digits import digits_architecture, export_digits_cnn
from .hf_models import (
    _export_dynamo,
    _logits_wrapper,
    bert_small_architecture,
    export_text_model,
    make_bert_small,
)
from .registry import reused

# The builders and architectures the registry names in this module.
__all__ = ["bert_small_architecture", "digits_architecture", "make_bert_small"]


def make_digits_cnn():
    """digits_cnn's trained weights and sample, from its zoo build (training takes the most
    time of a cold build: done once)."""
    return reused("digits_cnn")


def _converted(export, model, example: dict, path: Path, convert) -> None:
    """Export the float32 model with `export`, then write convert(onnx model) to path."""
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "float32.onnx"
        export(model, example, plain)
        onnx.save(convert(onnx.load(str(plain))), str(path))


def _onnxconverter(keep_io_types: bool):
    def convert(model):
        from onnxconverter_common import float16

        return float16.convert_float_to_float16(model, keep_io_types=keep_io_types)
    return convert


def _ort_float16(model):
    from onnxruntime.transformers import float16

    return float16.convert_float_to_float16(model, keep_io_types=True)


def export_digits_fp16(model, example: dict, path: Path) -> None:
    _converted(export_digits_cnn, model, example, path, _onnxconverter(False))


def export_digits_fp16_io32(model, example: dict, path: Path) -> None:
    _converted(export_digits_cnn, model, example, path, _onnxconverter(True))


def export_bert_fp16(model, example: dict, path: Path) -> None:
    _converted(export_text_model, model, example, path, _onnxconverter(False))


def export_bert_ort_fp16(model, example: dict, path: Path) -> None:
    _converted(export_text_model, model, example, path, _ort_float16)


# ---- a tiny Llama at opset 23 -------------------------------------------------------------
def llama_tiny_architecture():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=0, num_labels=3,
                         attn_implementation="sdpa")
    return _logits_wrapper(LlamaForSequenceClassification(config), ("input_ids",))


def make_llama_tiny():
    """Random weights, the norm scales too (all ones would hide a wrong scale gradient)."""
    import torch

    torch.manual_seed(0)
    model = llama_tiny_architecture().eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.uniform_(0.5, 1.5)
    generator = torch.Generator().manual_seed(1)
    return model, {"input_ids": torch.randint(1, 100, (2, 7), generator=generator)}


def export_llama_opset23(model, example: dict, path: Path) -> None:
    _export_dynamo(model, example, path, 23)
