"""Recurrent classifiers, random weights (issue 17, item 1: LSTM/GRU/RNN backward rules).

- lstm_tokens_tiny: token ids [batch, sequence] -> embedding (width 8) -> a 2-layer
  bidirectional LSTM (hidden 6, batch_first) -> the last step's output -> 3 logits.
- gru_features_tiny: float features [batch, sequence, 5] -> a 1-layer bidirectional GRU
  (hidden 6, batch_first) -> mean over time -> 4 logits.
- rnn_features_tiny: float features [batch, sequence, 5] -> a 2-layer tanh RNN (hidden 6,
  time-major input [sequence, batch, 5]) -> the final hidden state -> 3 logits.

Padded batches: torch 2.13's exporters fail on pack_padded_sequence (the legacy one inside
its peephole pass, with sorted or unsorted lengths), so no torch export carries
`sequence_lens`; model_zoo/recurrent_padded.py wires a `lengths` input into the exported graph.
"""

from __future__ import annotations

from pathlib import Path

from .hf_models import _export, _seeded

VOCAB, FEATURES = 30, 5


def lstm_tokens_architecture():
    from torch import nn

    class LstmClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 8)
            self.lstm = nn.LSTM(8, 6, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(12, 3)

        def forward(self, input_ids):
            states, _ = self.lstm(self.embed(input_ids))
            return self.head(states[:, -1])

    return LstmClassifier()


def gru_features_architecture():
    from torch import nn

    class GruClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(FEATURES, 6, bidirectional=True, batch_first=True)
            self.head = nn.Linear(12, 4)

        def forward(self, features):
            states, _ = self.gru(features)
            return self.head(states.mean(1))

    return GruClassifier()


def rnn_features_architecture():
    from torch import nn

    class RnnClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(FEATURES, 6, num_layers=2)
            self.head = nn.Linear(6, 3)

        def forward(self, features):
            _, final = self.rnn(features.transpose(0, 1))
            return self.head(final[-1])

    return RnnClassifier()


def make_lstm_tokens():
    import torch

    generator = torch.Generator().manual_seed(11)
    return _seeded(lstm_tokens_architecture), {
        "input_ids": torch.randint(0, VOCAB, (2, 7), generator=generator)}


def make_gru_features():
    import torch

    generator = torch.Generator().manual_seed(12)
    return _seeded(gru_features_architecture), {
        "features": torch.randn(2, 6, FEATURES, generator=generator)}


def make_rnn_features():
    import torch

    generator = torch.Generator().manual_seed(13)
    return _seeded(rnn_features_architecture), {
        "features": torch.randn(2, 6, FEATURES, generator=generator)}


def export_sequence_model(model, example: dict, path: Path) -> None:
    """Legacy exporter, opset 17, batch and sequence symbolic."""
    _export(model, example, path, {0: "batch", 1: "sequence"})
