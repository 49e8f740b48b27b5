"""The recurrent rules emit nothing that no output is computed from: the saliency and
Integrated Gradients programs of the zoo's LSTM/GRU/RNN models reach drop_unread with every
node read (so it skips the onnx-ir conversion), and their results stay torch's
(tests/test_recurrent_models.py, tests/test_recurrent_padded.py). Also: an LSTM output that
only a tap reads is still computed once the kernel gives way to the gate Scans."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain
import onnxplain.export as export_module
from onnxplain.graph.walk import node_inputs

FEATURES = ["gru_features_tiny", "rnn_features_tiny", "gru_features_padded_tiny"]
TOKENS = ["lstm_tokens_tiny", "lstm_tokens_padded_tiny"]


def _dead(proto) -> list[str]:
    """Main-graph nodes none of whose outputs a node (subgraphs included) or an output reads,
    and initializers nothing reads: what drop_unread would have to remove."""
    graph = proto.graph
    read = {name for node in graph.node for name in node_inputs(node)}
    read.update(value.name for value in [*graph.input, *graph.output])
    dead = [f"{node.op_type} {node.name}" for node in graph.node
            if not any(out in read for out in node.output)]
    return dead + [f"initializer {init.name}" for init in graph.initializer
                   if init.name not in read]


def _programs_dead(zoo, monkeypatch, name: str, method: str, **options) -> list[list[str]]:
    seen: list[list[str]] = []
    drop = export_module.drop_unread

    def recording(proto):
        seen.append(_dead(proto))
        drop(proto)

    monkeypatch.setattr(export_module, "drop_unread", recording)
    explainer = onnxplain.Explainer(zoo.model_path(name), providers="cpu", progress=False)
    explainer.explain(zoo.sample(name), method=method, **options)
    assert seen, "no program was built"
    return seen


@pytest.mark.parametrize("name", FEATURES + TOKENS)
def test_saliency_programs_have_no_dead_node(zoo, monkeypatch, name):
    assert _programs_dead(zoo, monkeypatch, name, "saliency") == [[]]


@pytest.mark.parametrize("name", FEATURES)
def test_integrated_gradients_programs_have_no_dead_node(zoo, monkeypatch, name):
    assert _programs_dead(zoo, monkeypatch, name, "integrated_gradients", n_steps=4) == [[]]


@pytest.mark.xfail(strict=True, reason="export/tokens.py (a Concat of the ids per path "
                   "point) and export/loop.py aliases (an Identity of the ids) emit them")
@pytest.mark.parametrize("name", TOKENS)
def test_layer_integrated_gradients_programs_have_no_dead_node(zoo, monkeypatch, name):
    assert _programs_dead(zoo, monkeypatch, name, "layer_integrated_gradients",
                          n_steps=4) == [[]]


def test_a_tapped_lstm_output_nothing_else_reads_is_computed(zoo):
    """lstm_tokens_tiny reads neither LSTM's Y_h nor Y_c: tapped in a gradient run (the
    kernel replaced by Scans), they equal the plain forward's (ONNX Runtime's kernel)."""
    explainer = onnxplain.Explainer(zoo.model_path("lstm_tokens_tiny"), providers="cpu",
                                    progress=False)
    lstm = [node for node in explainer.model.proto.graph.node if node.op_type == "LSTM"]
    taps = [out for node in lstm for out in node.output[1:3] if out]
    read = {name for node in explainer.model.proto.graph.node for name in node.input}
    assert taps and not read & set(taps)
    sample = zoo.sample("lstm_tokens_tiny")
    forward = explainer.forward(sample, taps=taps)
    run = explainer.gradients(sample, target=np.array([1, 2]), taps=taps)
    for tap in taps:
        np.testing.assert_allclose(run.taps[tap], forward[tap], rtol=1e-5, atol=1e-6,
                                   err_msg=tap)
