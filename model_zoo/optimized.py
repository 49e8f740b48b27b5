"""Exports passed through ONNX Runtime's transformer optimizer
(`onnxruntime.transformers.optimizer.optimize_model`), as users ship them: fused
`com.microsoft` ops (Attention, MultiHeadAttention, EmbedLayerNormalization,
SkipLayerNormalization, BiasGelu, FastGelu) that onnxplain canonicalises on load.

Which fused ops each holds (onnxruntime 1.31, `python -m model_zoo.optimized` prints them):
- bert_small_ort (model_type bert, opt_level 1): EmbedLayerNormalization, Attention (1-D
  mask_index from the embedding's mask), SkipLayerNormalization, BiasGelu. opt_level 0 and 2
  fuse the same ops; 99 adds NCHWc layouts tied to the CPU that optimised it, not a form to
  ship.
- bert_small_ort_mha (use_multi_head_attention, enable_gelu_approximation,
  use_raw_attention_mask): MultiHeadAttention with a 2-D raw mask, FastGelu.
- gpt2_tiny_ort (model_type gpt2): SkipLayerNormalization (with its sum output), FastGelu;
  the attention of transformers 5's GPT-2 export is not matched by the fusion and stays
  decomposed.
- vit_small_ort (model_type vit): SkipLayerNormalization, BiasGelu (the attention likewise).
"""

from __future__ import annotations

import collections
import tempfile
import warnings
from pathlib import Path

from . import hf_models
from .hf_models import (  # noqa: F401 - the registry names them in this module
    bert_small_architecture,
    make_bert_small,
    make_vit_small,
    vit_small_architecture,
)


def _optimize(export, model, example: dict, path: Path, model_type: str, heads: int,
              hidden: int, opt_level: int = 1, **fusion) -> None:
    """Export with `export`, then optimise the file as a user would."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(model_type)
    if fusion.pop("use_raw_attention_mask", False):
        options.use_raw_attention_mask(True)
    for name, value in fusion.items():
        setattr(options, name, value)
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "plain.onnx"
        export(model, example, plain)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(str(plain), model_type=model_type, num_heads=heads,
                                       hidden_size=hidden, opt_level=opt_level, use_gpu=False,
                                       optimization_options=options)
        optimized.save_model_to_file(str(path))


def export_bert_ort(model, example: dict, path: Path) -> None:
    _optimize(hf_models.export_text_model, model, example, path, "bert", 4, 64)


def export_bert_ort_mha(model, example: dict, path: Path) -> None:
    _optimize(hf_models.export_text_model, model, example, path, "bert", 4, 64,
              use_multi_head_attention=True, enable_gelu_approximation=True,
              use_raw_attention_mask=True)


def export_vit_ort(model, example: dict, path: Path) -> None:
    _optimize(hf_models.export_image_model, model, example, path, "vit", 4, 64)


def gpt2_tiny_architecture():
    """GPT-2 with 2 layers of width 32, 2 heads, 100 tokens; returns the next-token logits of
    every position, [batch, sequence, 100]."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return _NoCache(GPT2LMHeadModel(config))


def _NoCache(model):  # noqa: N802 - a class made on demand (torch is imported lazily)
    import torch

    class NoCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              use_cache=False).logits

    return NoCache()


def make_gpt2_tiny():
    import torch

    torch.manual_seed(0)
    model = gpt2_tiny_architecture().eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (2, 7), generator=generator)
    mask = torch.ones(2, 7, dtype=torch.long)
    return model, {"input_ids": ids, "attention_mask": mask}


def export_gpt2(model, example: dict, path: Path) -> None:
    hf_models.export_text_model(model, example, path)


def export_gpt2_ort(model, example: dict, path: Path) -> None:
    _optimize(export_gpt2, model, example, path, "gpt2", 2, 32)


def fused_ops(path: Path) -> dict[str, int]:
    """How many nodes of each com.microsoft op the file holds."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return dict(sorted(collections.Counter(n.op_type for n in nodes
                                           if n.domain == "com.microsoft").items()))


if __name__ == "__main__":
    from .registry import ZOO, model_path

    for entry in ZOO.values():
        if entry.module == "optimized":
            print(entry.name, fused_ops(model_path(entry.name)))
