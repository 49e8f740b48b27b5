"""Padded recurrent classifiers, random weights (issue 17: padded recurrent).

- lstm_tokens_padded_tiny: token ids [batch, sequence] and lengths [batch] -> embedding
  (width 8) -> a 2-layer bidirectional LSTM (hidden 6, batch_first) -> the final state of
  each direction (the last valid step forwards, the first step backwards) -> 3 logits.
- gru_features_padded_tiny: float features [batch, sequence, 5] and lengths [batch] -> a
  1-layer bidirectional GRU (hidden 6, batch_first) -> both final states -> 4 logits.

The torch modules run pack_padded_sequence (the oracle), but torch 2.13's exporters fail on
it, so the unpacked network is exported and the ONNX graph is then given a `lengths` input
(int64 [batch]) that every recurrent node reads as its sequence_lens (cast to int32). ONNX's
LSTM/GRU with sequence_lens are the packed semantics: padded steps are skipped, their Y rows
are zero and Y_h is each direction's state at the row's own end.
"""

from __future__ import annotations

from pathlib import Path

from .hf_models import _export, _seeded
from .recurrent import FEATURES, VOCAB

RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def _final_states(network, steps, lengths):
    """Both directions' final states of the last layer, [batch, 2 * hidden]; packed when
    lengths are given (the torch oracle), unpacked otherwise (the exported network)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    if lengths is not None:
        steps = pack_padded_sequence(steps, lengths.cpu(), batch_first=True,
                                     enforce_sorted=False)
    _, final = network(steps)
    hidden = final[0] if isinstance(final, tuple) else final
    return torch.cat([hidden[-2], hidden[-1]], dim=-1)


def lstm_tokens_padded_architecture():
    from torch import nn

    class PaddedLstmClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 8)
            self.lstm = nn.LSTM(8, 6, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(12, 3)

        def forward(self, input_ids, lengths=None):
            return self.head(_final_states(self.lstm, self.embed(input_ids), lengths))

    return PaddedLstmClassifier()


def gru_features_padded_architecture():
    from torch import nn

    class PaddedGruClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(FEATURES, 6, bidirectional=True, batch_first=True)
            self.head = nn.Linear(12, 4)

        def forward(self, features, lengths=None):
            return self.head(_final_states(self.gru, features, lengths))

    return PaddedGruClassifier()


def make_lstm_tokens_padded():
    import torch

    generator = torch.Generator().manual_seed(21)
    return _seeded(lstm_tokens_padded_architecture), {
        "input_ids": torch.randint(0, VOCAB, (3, 7), generator=generator),
        "lengths": torch.tensor([7, 3, 5])}


def make_gru_features_padded():
    import torch

    generator = torch.Generator().manual_seed(22)
    return _seeded(gru_features_padded_architecture), {
        "features": torch.randn(3, 6, FEATURES, generator=generator),
        "lengths": torch.tensor([4, 6, 2])}


def export_padded_sequence_model(model, example: dict, path: Path) -> None:
    """Legacy exporter (opset 17) on the unpacked network, then `lengths` wired in."""
    import onnx

    inputs = {key: value for key, value in example.items() if key != "lengths"}
    _export(model, inputs, path, {0: "batch", 1: "sequence"})
    proto = onnx.load(str(path))
    _wire_lengths(proto.graph)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def _wire_lengths(graph) -> None:
    """Add the input `lengths` (int64 [batch]) and feed it, as int32, to every recurrent node's
    sequence_lens (input 4)."""
    from onnx import TensorProto, helper

    graph.input.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]))
    cast = helper.make_node("Cast", ["lengths"], ["lengths_int32"], name="lengths_to_int32",
                            to=TensorProto.INT32)
    recurrent = [node for node in graph.node if node.op_type in RECURRENT_OPS]
    if not recurrent:
        raise RuntimeError("the export has no recurrent node to give sequence_lens")
    for node in recurrent:
        while len(node.input) < 5:
            node.input.append("")
        node.input[4] = "lengths_int32"
    graph.node.insert(0, cast)
