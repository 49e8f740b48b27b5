"""The zoo's catalogue and its cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ZooModel:
    name: str
    description: str
    module: str          # model_zoo submodule that defines it
    make: str            # function returning (torch module, example inputs dict) with weights
    export: str          # function(module, example, path) writing the ONNX file
    architecture: str    # function returning the untrained torch module (for load_torch)
    depends: tuple[str, ...] = ()  # other model_zoo files its code imports (cache key)


ZOO: dict[str, ZooModel] = {m.name: m for m in [
    ZooModel("digits_cnn", "small CNN trained on scikit-learn's 8x8 digits (GAP + dense head)",
             "digits", "make_digits_cnn", "export_digits_cnn", "digits_architecture"),
    ZooModel("digits_bn_cnn", "digits CNN with batch norm kept as BatchNormalization nodes",
             "digits", "make_digits_bn_cnn", "export_keeping_batch_norm",
             "digits_bn_architecture"),
    ZooModel("digits_mlp", "MLP trained on the 64 digit pixels",
             "digits", "make_digits_mlp", "export_digits_cnn", "digits_mlp_architecture"),
    ZooModel("resnet18", "ResNet-18 configuration (transformers), random weights, 224x224",
             "hf_models", "make_resnet18", "export_image_model", "resnet18_architecture"),
    ZooModel("resnet18_64", "the resnet18 weights exported for 64x64 inputs (oracle tests)",
             "hf_models", "make_resnet18_64", "export_image_model", "resnet18_architecture"),
    ZooModel("vit_small", "small ViT (transformers), random weights, 32x32, 4 layers",
             "hf_models", "make_vit_small", "export_image_model", "vit_small_architecture"),
    ZooModel("bert_small", "small BERT classifier (transformers), random weights, 2 layers",
             "hf_models", "make_bert_small", "export_text_model", "bert_small_architecture"),
    ZooModel("bert_small_dynamo", "bert_small by the dynamo exporter, opset 18",
             "hf_models", "make_bert_small", "export_text_model_dynamo18",
             "bert_small_architecture"),
    ZooModel("bert_small_sdpa", "bert_small with sdpa attention, legacy exporter, opset 17",
             "hf_models", "make_bert_small_sdpa", "export_text_model",
             "bert_small_sdpa_architecture"),
    ZooModel("bert_small_attention23", "bert_small with sdpa attention by the dynamo "
             "exporter at opset 23: standard Attention ops", "hf_models", "make_bert_small_sdpa",
             "export_text_model_attention23", "bert_small_sdpa_architecture"),
    ZooModel("rgb_cnn", "small RGB CNN, random weights, 3x32x32, 10 classes, symbolic batch",
             "rgb", "make_rgb_cnn", "export_rgb_model", "rgb_cnn_architecture"),
    ZooModel("rgb_squeezenet", "SqueezeNet-style RGB CNN, random weights, 3x64x64, softmax "
             "output [N, 1000, 1, 1] as in the classic ONNX zoo", "rgb", "make_rgb_squeezenet",
             "export_rgb_model", "rgb_squeezenet_architecture"),
    # -- quantized exports (issue 16: model_zoo/quantized.py)
    ZooModel("digits_cnn_qdq", "digits_cnn by quantize_static, QDQ format (uint8 "
             "activations, per-channel int8 weights)", "quantized", "make_digits_cnn_reused",
             "export_qdq", "digits_architecture", depends=("digits.py",)),
    ZooModel("digits_cnn_qoperator", "digits_cnn by quantize_static, QOperator format "
             "(QLinearConv, uint8 MaxPool, QGemm)", "quantized", "make_digits_cnn_reused",
             "export_qoperator", "digits_architecture", depends=("digits.py",)),
    ZooModel("digits_resnet_qdq", "residual digits CNN by quantize_static, QDQ format",
             "quantized", "make_digits_resnet", "export_qdq", "digits_resnet_architecture",
             depends=("digits.py", "sentiment.py", "hf_models.py")),
    ZooModel("digits_resnet_qoperator", "digits_resnet_qdq's weights by quantize_static, "
             "QOperator format (QLinearAdd, QLinearGlobalAveragePool)", "quantized",
             "make_digits_resnet_reused", "export_qoperator", "digits_resnet_architecture",
             depends=("digits.py", "sentiment.py", "hf_models.py")),
    ZooModel("sentiment_bert_dynamic", "sentiment_bert by quantize_dynamic "
             "(DynamicQuantizeLinear, MatMulInteger, int8 embedding tables)", "quantized",
             "make_sentiment_bert_reused", "export_dynamic", "sentiment_architecture",
             depends=("sentiment.py", "hf_models.py", "digits.py")),
    ZooModel("bert_small_ort_dynamic", "bert_small_ort by quantize_dynamic: com.microsoft "
             "QAttention and QEmbedLayerNormalization", "quantized", "make_bert_small",
             "export_bert_ort_dynamic", "bert_small_architecture",
             depends=("optimized.py", "hf_models.py", "digits.py", "sentiment.py")),
    # -- ONNX Runtime-optimized exports (issue 16: model_zoo/optimized.py)
    ZooModel("bert_small_ort", "bert_small through ONNX Runtime's transformer optimizer "
             "(bert, opt_level 1): fused Attention, EmbedLayerNormalization, "
             "SkipLayerNormalization, BiasGelu", "optimized", "make_bert_small",
             "export_bert_ort", "bert_small_architecture", depends=("hf_models.py",)),
    ZooModel("bert_small_ort_mha", "bert_small optimized with MultiHeadAttention, a raw 2-D "
             "mask and FastGelu", "optimized", "make_bert_small", "export_bert_ort_mha",
             "bert_small_architecture", depends=("hf_models.py",)),
    ZooModel("vit_small_ort", "vit_small through the optimizer (vit): SkipLayerNormalization, "
             "BiasGelu", "optimized", "make_vit_small", "export_vit_ort",
             "vit_small_architecture", depends=("hf_models.py",)),
    ZooModel("gpt2_tiny", "GPT-2, 2 layers of width 32, 2 heads, 100 tokens, random weights; "
             "logits of every position", "optimized", "make_gpt2_tiny", "export_gpt2",
             "gpt2_tiny_architecture", depends=("hf_models.py",)),
    ZooModel("gpt2_tiny_ort", "gpt2_tiny through the optimizer (gpt2): SkipLayerNormalization, "
             "FastGelu", "optimized", "make_gpt2_tiny", "export_gpt2_ort",
             "gpt2_tiny_architecture", depends=("hf_models.py",)),
    # -- float16 and newest-opset exports (issue 16: model_zoo/precision.py)
    ZooModel("digits_cnn_fp16", "digits_cnn converted to float16 by onnxconverter-common "
             "(float16 input and logits)", "precision", "make_digits_cnn", "export_digits_fp16",
             "digits_architecture", depends=("digits.py", "hf_models.py")),
    ZooModel("digits_cnn_fp16_io32", "digits_cnn converted to float16 by onnxconverter-common "
             "with keep_io_types (float32 input and logits)", "precision", "make_digits_cnn",
             "export_digits_fp16_io32", "digits_architecture",
             depends=("digits.py", "hf_models.py")),
    ZooModel("bert_small_fp16", "bert_small converted to float16 by onnxconverter-common",
             "precision", "make_bert_small", "export_bert_fp16", "bert_small_architecture",
             depends=("digits.py", "hf_models.py")),
    ZooModel("bert_small_ort_fp16", "bert_small converted to float16 by "
             "onnxruntime.transformers.float16 (keep_io_types)", "precision", "make_bert_small",
             "export_bert_ort_fp16", "bert_small_architecture",
             depends=("digits.py", "hf_models.py")),
    ZooModel("llama_tiny_opset23", "2-layer Llama classifier (transformers), random weights, "
             "dynamo exporter at opset 23: RMSNormalization, RotaryEmbedding, Attention",
             "precision", "make_llama_tiny", "export_llama_opset23", "llama_tiny_architecture",
             depends=("digits.py", "hf_models.py")),
    ZooModel("bert_small_opset14", "bert_small by the legacy exporter at opset 14: LayerNorm "
             "as ReduceMean, Sub, Pow, Sqrt, Div", "hf_models", "make_bert_small",
             "export_text_model_opset14", "bert_small_architecture"),
    ZooModel("sentiment_bert", "small BERT trained on generated sentiment with negations",
             "sentiment", "make_sentiment_bert", "export_sentiment_bert",
             "sentiment_architecture", depends=("hf_models.py",)),
]}


def cache_dir() -> Path:
    base = os.environ.get("ONNXPLAIN_ZOO_DIR")
    return Path(base) if base else Path.home() / ".cache" / "onnxplain" / "zoo"


def _function(entry: ZooModel, attribute: str) -> Callable:
    import importlib

    module = importlib.import_module(f"model_zoo.{entry.module}")
    return getattr(module, getattr(entry, attribute))


def _fingerprint(entry: ZooModel) -> str:
    import torch

    digest = hashlib.sha256()
    for name in ("registry.py", f"{entry.module}.py", *entry.depends):
        digest.update((HERE / name).read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def _entry(name: str) -> ZooModel:
    if name not in ZOO:
        raise KeyError(f"unknown zoo model '{name}' (known: {', '.join(sorted(ZOO))})")
    return ZOO[name]


def build(name: str, force: bool = False) -> Path:
    """Build (or reuse) the model; returns its folder."""
    entry = _entry(name)
    folder = cache_dir() / name
    meta_file = folder / "meta.json"
    fingerprint = _fingerprint(entry)
    if not force and meta_file.exists():
        if json.loads(meta_file.read_text()).get("fingerprint") == fingerprint:
            return folder
    import torch

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        module, example = _function(entry, "make")()
        module.eval()
        _function(entry, "export")(module, example, staging / "model.onnx")
        torch.save(module.state_dict(), staging / "state.pt")
        np.savez(staging / "sample.npz", **{k: v.numpy() for k, v in example.items()})
        meta = {"name": name, "fingerprint": fingerprint, "description": entry.description,
                "inputs": list(example)}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)  # atomic: a half-built model is never visible
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def model_path(name: str) -> Path:
    return build(name) / "model.onnx"


def sample(name: str) -> dict[str, np.ndarray]:
    with np.load(build(name) / "sample.npz") as data:
        return {key: data[key] for key in data.files}


def load_torch(name: str):
    """The torch original with the exported weights, in eval mode (for oracle tests)."""
    import torch

    entry = _entry(name)
    folder = build(name)
    module = _function(entry, "architecture")()
    module.load_state_dict(torch.load(folder / "state.pt", weights_only=True))
    return module.eval()
