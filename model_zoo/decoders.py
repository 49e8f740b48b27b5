"""Causal language models as they are shipped for generation: logits [batch, sequence,
vocabulary] (the next-token objective applies), with a KV cache and grouped-query heads.

- gpt2_tiny_kv: gpt2_tiny's architecture with the cache as inputs (legacy exporter, opset
  17): input_ids [batch, sequence], attention_mask [batch, past + sequence] and
  past_key_<l>, past_value_<l> [batch, heads, past, head size] per layer; keys are longer
  than queries.
- qwen2_tiny_opset18 / qwen2_tiny_opset23: a Qwen2 decoder with 4 query heads sharing 2
  key/value heads, by the dynamo exporter (opset 23 writes RMSNormalization, RotaryEmbedding
  and Attention nodes).
- llama_tiny_kv: a Llama decoder (4 query heads, 2 key/value heads) with its cache as inputs,
  by the dynamo exporter at opset 18.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .hf_models import _export_dynamo
from .optimized import gpt2_tiny_architecture, make_gpt2_tiny
from .precision import make_llama_tiny

LAYERS = 2
PAST = 5


def _WithCache(model, layers: int):  # noqa: N802 - a class made on demand (lazy torch)
    """forward(input_ids, attention_mask, past_key_0, past_value_0, ...) -> logits."""
    import torch
    from transformers import DynamicCache

    class WithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache()
            for layer in range(layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              past_key_values=cache, use_cache=True).logits

    return WithCache()


def _with_past(ids, heads: int, head_size: int, layers: int = LAYERS, past: int = PAST):
    """Example inputs: ids [N, T], a mask over past + new, random cached keys and values."""
    import torch

    generator = torch.Generator().manual_seed(2)
    rows = ids.shape[0]
    example = {"input_ids": ids,
               "attention_mask": torch.ones(rows, past + ids.shape[1], dtype=torch.long)}
    for layer in range(layers):
        for kind in ("key", "value"):
            example[f"past_{kind}_{layer}"] = torch.randn(rows, heads, past, head_size,
                                                          generator=generator)
    return example


def gpt2_tiny_kv_architecture():
    return _WithCache(gpt2_tiny_architecture().model, LAYERS)


def make_gpt2_tiny_kv():
    """gpt2_tiny's weights (make_gpt2_tiny), 3 new tokens after 5 cached positions."""
    plain, example = make_gpt2_tiny()
    model = _WithCache(plain.model, LAYERS)
    return model.eval(), _with_past(example["input_ids"][:, :3], heads=2, head_size=16)


def _legacy_with_past(model, example: dict, path: Path, opset: int) -> None:
    import torch

    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total_sequence"}}
    axes.update({name: {0: "batch", 2: "past_sequence"} for name in example
                 if name.startswith("past_")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), str(path), input_names=list(example),
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                          dynamo=False)


def export_with_past(model, example: dict, path: Path) -> None:
    _legacy_with_past(model, example, path, 17)


def export_dynamo_with_past18(model, example: dict, path: Path) -> None:
    """The dynamo exporter at opset 18, every axis but the heads and head size symbolic (the
    legacy exporter writes RMSNorm's 1 / sqrt as a Div that Chefer's LRP has no rule for)."""
    import torch

    auto = torch.export.Dim.AUTO
    ids, mask = {0: auto, 1: auto}, {0: auto, 1: auto}
    past = tuple({0: auto, 2: auto} for name in example if name.startswith("past_"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), str(path), input_names=list(example),
                          output_names=["logits"], dynamic_shapes=(ids, mask, past),
                          opset_version=18, dynamo=True, verbose=False)


# ---- Qwen2 and Llama decoders with grouped-query heads --------------------------------------
def _decoder_config(kind: str, hidden: int = 32, layers: int = LAYERS, heads: int = 4,
                    kv_heads: int = 2, attention: str = "eager"):
    from transformers import LlamaConfig, Qwen2Config

    config = {"qwen2": Qwen2Config, "llama": LlamaConfig}[kind]
    return config(vocab_size=100, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, max_position_embeddings=64,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation=attention)


def _causal_lm(config):
    from transformers import AutoModelForCausalLM

    from .hf_models import _logits_wrapper

    return _logits_wrapper(AutoModelForCausalLM.from_config(config),
                           ("input_ids", "attention_mask"))


def _randomised(model):
    """Random norm scales too (all ones would hide a wrong scale gradient)."""
    import torch

    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.uniform_(0.5, 1.5)
    return model.eval()


def qwen2_tiny_architecture():
    return _causal_lm(_decoder_config("qwen2"))


def qwen2_tiny_sdpa_architecture():
    return _causal_lm(_decoder_config("qwen2", attention="sdpa"))


def _seeded(architecture):
    import torch

    torch.manual_seed(0)
    model = _randomised(architecture())
    _, example = make_llama_tiny()  # its ids: [2, 7] in 1..99
    example["attention_mask"] = torch.ones_like(example["input_ids"])
    return model, example


def make_qwen2_tiny():
    return _seeded(qwen2_tiny_architecture)


def make_qwen2_tiny_sdpa():
    return _seeded(qwen2_tiny_sdpa_architecture)


def export_dynamo18(model, example: dict, path: Path) -> None:
    _export_dynamo(model, example, path, 18)


def export_dynamo23(model, example: dict, path: Path) -> None:
    _export_dynamo(model, example, path, 23)


def llama_kv_architecture(hidden: int = 32, layers: int = LAYERS):
    from transformers import AutoModelForCausalLM

    config = _decoder_config("llama", hidden=hidden, layers=layers)
    return _WithCache(AutoModelForCausalLM.from_config(config), layers)


def make_llama_tiny_kv(hidden: int = 32, layers: int = LAYERS, past: int = PAST,
                       new: int = 3, rows: int = 2):
    """Random weights; `new` tokens after `past` cached positions (larger sizes: benchmarks)."""
    import torch

    torch.manual_seed(0)
    model = _randomised(llama_kv_architecture(hidden, layers))
    ids = torch.randint(1, 100, (rows, new), generator=torch.Generator().manual_seed(1))
    return model, _with_past(ids, heads=2, head_size=hidden // 4, layers=layers, past=past)


def llama_tiny_kv_architecture():
    return llama_kv_architecture()
