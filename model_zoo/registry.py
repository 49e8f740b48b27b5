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
    # -- attention layouts: windows, pooled keys, cross-attention (issue 17 item 5: layouts.py)
    ZooModel("swin_tiny", "Swin (transformers), 2 stages, window 4, random weights, 32x32: "
             "window attention [batch x windows, heads, 16, 16]", "layouts", "make_swin_tiny",
             "export_images", "swin_tiny_architecture", depends=("hf_models.py",)),
    ZooModel("segformer_tiny", "SegFormer classifier (transformers), 2 stages, random weights, "
             "32x32: spatial-reduction attention (keys pooled 2x2) in stage 1",
             "layouts", "make_segformer_tiny", "export_images", "segformer_tiny_architecture",
             depends=("hf_models.py",)),
    ZooModel("detr_tiny", "DETR (transformers, ResNet backbone, no timm), 1+1 layers, 5 object "
             "queries, random weights, 64x64: encoder, decoder and cross-attention",
             "layouts", "make_detr_tiny", "export_images", "detr_tiny_architecture",
             depends=("hf_models.py",)),
    ZooModel("bart_tiny", "BART sequence classifier (transformers), 1+1 layers, random weights: "
             "encoder, decoder self- and cross-attention", "layouts", "make_bart_tiny",
             "export_text", "bart_tiny_architecture", depends=("hf_models.py",)),
    ZooModel("clip_vision_tiny", "CLIP vision tower with a classifier (transformers), 2 layers, "
             "random weights, 32x32, patch 8", "layouts", "make_clip_vision_tiny",
             "export_images", "clip_vision_tiny_architecture", depends=("hf_models.py",)),
    # -- causal language models with a KV cache and grouped-query heads (issue 17, items 4-5:
    #    model_zoo/decoders.py)
    ZooModel("gpt2_tiny_kv", "gpt2_tiny with its KV cache as inputs (5 cached positions, 3 new "
             "tokens; legacy exporter, opset 17)", "decoders", "make_gpt2_tiny_kv",
             "export_with_past", "gpt2_tiny_kv_architecture",
             depends=("hf_models.py", "optimized.py", "precision.py", "digits.py")),
    ZooModel("qwen2_tiny_opset18", "2-layer Qwen2 causal LM, 4 query heads over 2 key/value "
             "heads, dynamo exporter at opset 18", "decoders", "make_qwen2_tiny",
             "export_dynamo18", "qwen2_tiny_architecture",
             depends=("hf_models.py", "optimized.py", "precision.py", "digits.py")),
    ZooModel("qwen2_tiny_opset23", "qwen2_tiny with sdpa attention by the dynamo exporter at "
             "opset 23: RMSNormalization, RotaryEmbedding, Attention", "decoders",
             "make_qwen2_tiny_sdpa", "export_dynamo23", "qwen2_tiny_sdpa_architecture",
             depends=("hf_models.py", "optimized.py", "precision.py", "digits.py")),
    ZooModel("llama_tiny_kv", "2-layer Llama causal LM with its KV cache as inputs, 4 query "
             "heads over 2 key/value heads (dynamo exporter, opset 18)", "decoders",
             "make_llama_tiny_kv", "export_dynamo_with_past18", "llama_tiny_kv_architecture",
             depends=("hf_models.py", "optimized.py", "precision.py", "digits.py")),
    # -- outputs scored per position: token tags, CTC, segmentation (issue 17, item 3:
    #    model_zoo/sequence.py)
    ZooModel("token_tagger_tiny", "BertForTokenClassification (transformers), 2 layers of "
             "width 32, 5 tags, random weights: logits [batch, sequence, 5], one padded row",
             "sequence", "make_token_tagger", "export_text_model", "token_tagger_architecture",
             depends=("hf_models.py",)),
    ZooModel("ctc_conv_tiny", "convolutional CTC-style recogniser (no recurrence), random "
             "weights, 1x16x48 image -> logits [batch, 12 time steps, 11 classes]", "sequence",
             "make_ctc_conv", "export_image_model", "ctc_conv_architecture",
             depends=("hf_models.py",)),
    ZooModel("segment_fcn_tiny", "fully convolutional segmenter, random weights, 3x24x24 -> "
             "logits [batch, 4, 24, 24]", "sequence", "make_segment_fcn", "export_image_model",
             "segment_fcn_architecture", depends=("hf_models.py",)),
    # -- trained causal LM for next-token explanations and generation (issue 17, item 4:
    #    model_zoo/causal_lm.py)
    ZooModel("causal_lm", "tiny GPT-2 trained on generated sentences: the next word is the "
             "sound of the animal named earlier ('... cow ... and it said' -> 'moo')",
             "causal_lm", "make_causal_lm", "export_causal_lm", "causal_lm_architecture",
             depends=("hf_models.py", "optimized.py")),
    # -- control flow: torch.cond exported as If (issue 17, item 2: model_zoo/control.py)
    ZooModel("cond_cnn", "conv stem, then torch.cond on the sign of the input's mean picks "
             "one of two dense heads (dynamo exporter, opset 18: an If reading outer "
             "tensors), random weights, 3x16x16, 4 classes", "control", "make_cond_cnn",
             "export_cond_cnn", "cond_cnn_architecture"),
    # -- recurrent classifiers: LSTM, GRU, RNN (issue 17, item 1: model_zoo/recurrent.py)
    ZooModel("lstm_tokens_tiny", "embedding + 2-layer bidirectional LSTM (hidden 6) over token "
             "ids, last step -> 3 logits, random weights", "recurrent", "make_lstm_tokens",
             "export_sequence_model", "lstm_tokens_architecture", depends=("hf_models.py",)),
    ZooModel("gru_features_tiny", "bidirectional GRU (hidden 6) over float features [batch, "
             "sequence, 5], mean over time -> 4 logits, random weights", "recurrent",
             "make_gru_features", "export_sequence_model", "gru_features_architecture",
             depends=("hf_models.py",)),
    ZooModel("rnn_features_tiny", "2-layer tanh RNN (hidden 6, time-major) over float features "
             "[batch, sequence, 5], final state -> 3 logits, random weights", "recurrent",
             "make_rnn_features", "export_sequence_model", "rnn_features_architecture",
             depends=("hf_models.py",)),
    # -- normalisations written out as primitive ops by the legacy exporter (issue 17, item 6:
    #    model_zoo/decoders_legacy.py)
    ZooModel("llama_tiny_legacy", "2-layer Llama causal LM, 4 query heads over 2 key/value "
             "heads, legacy exporter at opset 18, no cache: RMSNorm as Div(1, Sqrt(..))",
             "decoders_legacy", "make_llama_tiny_legacy", "export_legacy18",
             "llama_tiny_legacy_architecture",
             depends=("decoders.py", "hf_models.py", "layouts.py", "optimized.py",
                      "precision.py", "digits.py")),
    ZooModel("clip_tiny", "CLIPModel (transformers) with both towers, 2 layers each, random "
             "weights, 32x32 images, the logit of image i against text i [N] (legacy "
             "exporter, opset 17: L2 normalisation as x / Pow(ReduceSum(x^2), 0.5))",
             "decoders_legacy",
             "make_clip_tiny", "export_clip", "clip_tiny_architecture",
             depends=("decoders.py", "hf_models.py", "layouts.py", "optimized.py",
                      "precision.py", "digits.py")),
    # -- issue 17: padded recurrent classifiers, `lengths` wired into the recurrent nodes'
    #    sequence_lens (model_zoo/recurrent_padded.py)
    ZooModel("lstm_tokens_padded_tiny", "embedding + 2-layer bidirectional LSTM (hidden 6) over "
             "token ids with lengths [batch] as sequence_lens, both directions' final states -> "
             "3 logits, random weights", "recurrent_padded", "make_lstm_tokens_padded",
             "export_padded_sequence_model", "lstm_tokens_padded_architecture",
             depends=("hf_models.py", "recurrent.py")),
    ZooModel("gru_features_padded_tiny", "bidirectional GRU (hidden 6) over float features "
             "[batch, sequence, 5] with lengths [batch] as sequence_lens, both final states -> "
             "4 logits, random weights", "recurrent_padded", "make_gru_features_padded",
             "export_padded_sequence_model", "gru_features_padded_architecture",
             depends=("hf_models.py", "recurrent.py")),
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


def reused(name: str):
    """Another zoo model's torch module (built if needed) and sample, as a builder returns
    them: builders that convert a trained model reuse its weights instead of retraining."""
    import torch

    return load_torch(name), {k: torch.from_numpy(v) for k, v in sample(name).items()}
