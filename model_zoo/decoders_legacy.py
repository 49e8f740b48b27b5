"""Models whose normalisations the legacy torch exporter writes out as primitive ops, beyond
those of hf_models.py's opset-14 BERT (issue 17 item 6).

- llama_tiny_legacy: a Llama causal LM (4 query heads over 2 key/value heads, no cache) by the
  legacy exporter at opset 18: RMSNorm as x * Div(1, Sqrt(ReduceMean(Pow(x, 2)) + eps)), the
  SiLU gate as x * Sigmoid(x) times the up projection.
- clip_tiny: a CLIPModel with both towers scoring image i against text i ([N]: the diagonal
  of logits_per_image, computed per pair so that rows stay independent; logits_per_image
  itself scores every image against every text of the batch, and explaining it row by row
  would mix rows); the legacy exporter at opset 17 writes the embeddings' L2 normalisation
  as x / Pow(ReduceSum(Pow(x, 2)), 0.5).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .decoders import _causal_lm, _decoder_config, _seeded
from .hf_models import _export
from .layouts import CLIP_VISION, _biased, clip_text


def llama_tiny_legacy_architecture():
    return _causal_lm(_decoder_config("llama"))


def make_llama_tiny_legacy():
    """Random weights and norm scales; ids [2, 7], no padding."""
    return _seeded(llama_tiny_legacy_architecture)


def export_legacy18(model, example: dict, path: Path) -> None:
    _export(model, example, path, {0: "batch", 1: "sequence"}, opset=18)


def clip_tiny_architecture():
    from transformers import CLIPConfig, CLIPModel

    # eos is the largest id, so both of CLIP's pooling rules pick the same token
    config = CLIPConfig(text_config=clip_text(2, 99), vision_config=CLIP_VISION,
                        projection_dim=16, attn_implementation="eager")
    return _per_image(CLIPModel(config))


def _per_image(model):
    """forward(input_ids, attention_mask, pixel_values) -> [N]: the logit of image i against
    text i (logits_per_image's diagonal, computed per pair so that rows stay independent:
    logits_per_image itself scores every image against every text of the batch)."""
    import torch

    class PerImage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, pixel_values):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             pixel_values=pixel_values)
            pairs = (out.image_embeds * out.text_embeds).sum(-1)
            return self.model.logit_scale.exp() * pairs

    return PerImage()


def make_clip_tiny():
    """Random weights with small biases; 3 images and 3 texts of 6 tokens (row i feeds
    image i and text i: onnxplain's inputs share one batch axis), each text ending in the
    end-of-text token CLIP pools at (no padding: attention methods read one query row per
    run)."""
    import torch

    model = _biased(clip_tiny_architecture)
    ids = torch.randint(3, 99, (3, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[:, 0] = 0
    ids[:, -1] = 99  # the largest id, as CLIP's end-of-text is (older configs pool at argmax)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, {"input_ids": ids, "attention_mask": mask, "pixel_values": images}


def export_clip(model, example: dict, path: Path) -> None:
    import torch

    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch",
                                                                         1: "sequence"},
            "pixel_values": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), str(path), input_names=list(example),
                          output_names=["logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
