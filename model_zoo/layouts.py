"""Transformers whose attention maps are not [batch, heads, tokens, tokens] over one sequence
(issue 17, item 5), tiny configurations with random weights, exported offline by the legacy
exporter at opset 17:

- swin_tiny: window attention, maps [batch x windows, heads, w^2, w^2];
- segformer_tiny: spatial-reduction attention, keys a strided-convolution copy of the tokens;
- detr_tiny: a DETR encoder over ResNet features, a decoder of object queries with
  cross-attention to the encoder's tokens (no timm, no pretrained backbone);
- bart_tiny: an encoder-decoder classifier (decoder self- and cross-attention);
- clip_vision_tiny: CLIP's vision tower with a classifier (class token + patches).
"""

from __future__ import annotations

from .hf_models import _logits_wrapper, _seeded, export_image_model, export_text_model


def _biased(architecture):
    """Random weights with small random biases: transformers initialises biases to 0, and a
    LayerNorm right after a bias-free patch embedding makes the model scale invariant (its
    output jumps at the black image, and integrated gradients cannot add up)."""
    import torch

    model = _seeded(architecture)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def _images(rows: int, size: int = 32):
    import torch

    generator = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(rows, 3, size, size, generator=generator)}


def swin_tiny_architecture():
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(image_size=32, patch_size=4, num_channels=3, embed_dim=16,
                        depths=[2, 2], num_heads=[2, 2], window_size=4, mlp_ratio=2.0,
                        num_labels=10, attn_implementation="eager")
    return _logits_wrapper(SwinForImageClassification(config), ("pixel_values",))


def segformer_tiny_architecture():
    from transformers import SegformerConfig, SegformerForImageClassification

    config = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1],
                             sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
                             strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                             num_labels=10, attn_implementation="eager")
    return _logits_wrapper(SegformerForImageClassification(config), ("pixel_values",))


def detr_tiny_architecture():
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                            layer_type="basic", out_features=["stage2"])
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                        backbone_config=backbone, d_model=32, encoder_layers=1,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5, num_labels=3,
                        auxiliary_loss=False, attn_implementation="eager")
    return _logits_wrapper(DetrForObjectDetection(config), ("pixel_values",))


def bart_tiny_architecture():
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig(vocab_size=100, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                        num_labels=2, attn_implementation="eager")
    return _logits_wrapper(BartForSequenceClassification(config), ("input_ids",))


# The tiny CLIP towers (decoders_legacy.py's two-tower model uses them too).
CLIP_VISION = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2}


def clip_text(layers: int, eos: int) -> dict:
    return {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": layers, "num_attention_heads": 2,
            "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": eos,
            "pad_token_id": 1}


def clip_vision_tiny_architecture():
    from transformers import CLIPConfig, CLIPForImageClassification

    config = CLIPConfig(text_config=clip_text(1, 2), vision_config=CLIP_VISION,
                        projection_dim=16, num_labels=10, attn_implementation="eager")
    return _logits_wrapper(CLIPForImageClassification(config), ("pixel_values",))


def make_swin_tiny():
    return _biased(swin_tiny_architecture), _images(2)


def make_segformer_tiny():
    return _biased(segformer_tiny_architecture), _images(2)


def make_detr_tiny():
    return _biased(detr_tiny_architecture), _images(2, 64)


def make_bart_tiny():
    import torch

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 100, (2, 9), generator=generator)
    ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>: the classifier reads the one </s>
    return _biased(bart_tiny_architecture), {"input_ids": ids}


def make_clip_vision_tiny():
    return _biased(clip_vision_tiny_architecture), _images(2)


export_images = export_image_model
export_text = export_text_model
