"""Models scored per position, random weights (issue 17, item 3: dense objectives).

- token_tagger_tiny: BertForTokenClassification (transformers), 2 layers of width 32, 5 tags:
  logits [batch, sequence, 5] over token ids with an attention mask (one padded row).
- ctc_conv_tiny: a CTC-style text-line recogniser without recurrence: convolutions over a
  1x16x48 grey image, the height pooled away, then convolutions over the width and a 1x1
  head: logits [batch, 12 time steps, 11 classes] (blank + 10 symbols).
- segment_fcn_tiny: a fully convolutional segmenter over 3x24x24 images (a stride-2 encoder,
  a transposed-convolution decoder): logits [batch, 4 classes, 24, 24].
"""

from __future__ import annotations

from .hf_models import _logits_wrapper, _seeded
from .hf_models import export_image_model as export_image_model  # re-exported for the zoo
from .hf_models import export_text_model as export_text_model

TAGS, SYMBOLS, SEGMENT_CLASSES = 5, 10, 4


def token_tagger_architecture():
    from transformers import BertConfig, BertForTokenClassification

    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, num_labels=TAGS,
                        attn_implementation="eager")
    return _logits_wrapper(BertForTokenClassification(config),
                           ("input_ids", "attention_mask"))


def make_token_tagger():
    import torch

    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 200, (2, 9), generator=generator)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # a padded row: its last 3 positions are not explained
    return _seeded(token_tagger_architecture), {"input_ids": ids * mask,
                                                "attention_mask": mask}


def ctc_conv_architecture():
    import torch
    from torch import nn

    class ConvRecogniser(nn.Module):
        """Image [N, 1, 16, W] -> logits [N, W / 4, classes]: time runs along the width."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.over_width = nn.Sequential(nn.Conv1d(16 * 4, 32, 3, padding=1), nn.ReLU())
            self.head = nn.Conv1d(32, SYMBOLS + 1, 1)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            maps = self.features(image)  # [N, 16, 4, W / 4]
            columns = maps.flatten(1, 2)  # [N, 64, W / 4]: one feature vector per column
            return self.head(self.over_width(columns)).transpose(1, 2)

    return ConvRecogniser()


def make_ctc_conv():
    import torch

    generator = torch.Generator().manual_seed(4)
    return _seeded(ctc_conv_architecture), {
        "image": torch.rand(2, 1, 16, 48, generator=generator)}


def segment_fcn_architecture():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 2, stride=2), nn.ReLU(),
        nn.Conv2d(8, SEGMENT_CLASSES, 1))


def make_segment_fcn():
    import torch

    generator = torch.Generator().manual_seed(5)
    return _seeded(segment_fcn_architecture), {
        "image": torch.rand(2, 3, 24, 24, generator=generator)}

