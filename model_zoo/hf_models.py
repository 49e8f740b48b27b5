"""transformers architectures with random weights (nothing is downloaded), exported to ONNX.

Each is wrapped so the export has plain tensor inputs and one `logits` output, with a
symbolic batch axis (and sequence axis for text).
"""

from __future__ import annotations

import warnings
from pathlib import Path


def _logits_wrapper(model, input_names: tuple[str, ...]):
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(input_names, args, strict=True))).logits

    return Logits()


def resnet18_architecture():
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                          depths=[2, 2, 2, 2], layer_type="basic", num_labels=1000)
    return _logits_wrapper(ResNetForImageClassification(config), ("pixel_values",))


def vit_small_architecture():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=64,
                       num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                       num_labels=10, attn_implementation="eager")
    return _logits_wrapper(ViTForImageClassification(config), ("pixel_values",))


def bert_small_architecture(attention: str = "eager"):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=128, num_labels=2,
                        attn_implementation=attention)
    return _logits_wrapper(BertForSequenceClassification(config), (
        "input_ids", "attention_mask", "token_type_ids"))


def bert_small_sdpa_architecture():
    """bert_small with scaled_dot_product_attention (same weights: attention holds none)."""
    return bert_small_architecture("sdpa")


def _seeded(architecture):
    import torch

    torch.manual_seed(0)
    return architecture().eval()


def make_resnet18():
    import torch

    generator = torch.Generator().manual_seed(1)
    return _seeded(resnet18_architecture), {
        "pixel_values": torch.randn(2, 3, 224, 224, generator=generator)}


def make_resnet18_64():
    """Same weights as resnet18; at 64x64 float32 rounding flips no ReLU or max-pool decision
    for the sample, so torch and ONNX Runtime gradients can be compared element by element."""
    import torch

    generator = torch.Generator().manual_seed(1)
    return _seeded(resnet18_architecture), {
        "pixel_values": torch.randn(2, 3, 64, 64, generator=generator)}


def make_vit_small():
    import torch

    generator = torch.Generator().manual_seed(1)
    return _seeded(vit_small_architecture), {
        "pixel_values": torch.randn(4, 3, 32, 32, generator=generator)}


def make_bert_small():
    import torch

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (3, 12), generator=generator)
    ids[:, 0] = 2  # a CLS-like first token
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 9:] = 0  # one padded row
    mask[2, 6:] = 0
    ids = ids * mask
    return _seeded(bert_small_architecture), {
        "input_ids": ids, "attention_mask": mask,
        "token_type_ids": torch.zeros(3, 12, dtype=torch.long)}


def make_bert_small_sdpa():
    _, example = make_bert_small()
    return _seeded(bert_small_sdpa_architecture), example


def _export(model, example: dict, path: Path, axes: dict[int, str], opset: int = 17) -> None:
    import torch

    names = list(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), str(path), input_names=names,
                          output_names=["logits"],
                          dynamic_axes={name: axes for name in names}, opset_version=opset,
                          dynamo=False)


def export_image_model(model, example: dict, path: Path) -> None:
    _export(model, example, path, {0: "batch"})


def export_text_model(model, example: dict, path: Path) -> None:
    _export(model, example, path, {0: "batch", 1: "sequence"})


def export_text_model_opset14(model, example: dict, path: Path) -> None:
    """Legacy exporter at opset 14: LayerNorm written out as ReduceMean, Sub, Pow, Sqrt, Div."""
    _export(model, example, path, {0: "batch", 1: "sequence"}, opset=14)


def _export_dynamo(model, example: dict, path: Path, opset: int) -> None:
    """torch.export-based exporter, symbolic batch and sequence axes."""
    import torch

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), str(path),
                          input_names=list(example), output_names=["logits"],
                          dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in example),),
                          opset_version=opset, dynamo=True, verbose=False)


def export_text_model_dynamo18(model, example: dict, path: Path) -> None:
    """Decomposed attention as the dynamo exporter writes it at opset 18."""
    _export_dynamo(model, example, path, 18)


def export_text_model_attention23(model, example: dict, path: Path) -> None:
    """With sdpa attention, the dynamo exporter writes one standard Attention op per layer
    at opset 23."""
    _export_dynamo(model, example, path, 23)
