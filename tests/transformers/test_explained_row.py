"""The gradient-based attention methods on causal language models differentiate a copy of
the model's tail (from the last attention's output projection to the logits) at the
explained position alone (export/explained_row.py).

Oracle: the same method with the copy switched off, on the same run's inputs (the programs
without it are checked against float64 torch references in test_kv_cache and
test_torch_reference): every score, the cached block and the reported outputs agree, also
where rows end at different positions (right padding, each row's last real position is
seeded).
"""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain
import onnxplain.export.explained_row as explained
import onnxplain.methods.attention_flow as flow
import onnxplain.runtime.engine as engine_module
from onnxplain.objective import NEXT_TOKEN, Place
from onnxplain.runtime.engine import DenseObjective

from ..test_zoo_coverage import explainer

METHODS = ("transformer_attribution", "generic_attention", "attgrad", "partial_lrp")
# Both programs run in float32; the copy gathers the same numbers it would have read.
TOLERANCE = 1e-5


def _pruned(monkeypatch) -> list[int]:
    """Counts of the copied nodes, one per program built."""
    counts: list[int] = []
    emit = explained._emit

    def counting(b, probabilities, output, seed):
        region, _ = explained._region(b, probabilities, output)
        counts.append(0 if region is None else len(region))
        return emit(b, probabilities, output, seed)

    monkeypatch.setattr(explained, "_emit", counting)
    return counts


def _explain(zoo, name: str, feeds: dict, method: str, **options):
    # A fresh explainer: a shared one may hold the program already built (nothing copied).
    fresh = onnxplain.Explainer(str(zoo.model_path(name)), "cpu", progress=False)
    return fresh.explain(feeds, method, **options)


def _same(a, b) -> None:
    for key, value in b.attributions.items():
        scale = np.abs(value).max()
        assert scale > 0
        assert np.abs(a.attributions[key] - value).max() <= TOLERANCE * scale, key
    if "cached_block" in b.extras:
        np.testing.assert_allclose(a.extras["cached_block"], b.extras["cached_block"],
                                   rtol=TOLERANCE, atol=TOLERANCE * 1e-3)
    for key, value in b.outputs.items():  # float32 rounding: ORT may fuse them otherwise
        np.testing.assert_allclose(a.outputs[key], value, rtol=1e-5,
                                   atol=1e-6 * np.abs(value).max())


@pytest.mark.parametrize("name", ["llama_tiny_kv", "qwen2_tiny_opset18"])
@pytest.mark.parametrize("method", METHODS)
def test_the_explained_row_alone_gives_the_same_scores(zoo, name, method, monkeypatch):
    feeds = zoo.sample(name)
    counts = _pruned(monkeypatch)
    pruned = _explain(zoo, name, feeds, method)
    assert counts and all(c > 0 for c in counts), "the tail was not copied"
    monkeypatch.setattr(explained, "explained_row", lambda *args: None)
    _same(pruned, _explain(zoo, name, feeds, method))


@pytest.mark.parametrize("name", ["llama_tiny_legacy", "gpt2_tiny_kv"])
def test_programs_for_symbolic_shapes_copy_the_tail_too(zoo, name, monkeypatch):
    """Programs of large models are not built for the exact input shapes: their tensors'
    shapes are symbols, the logits' named apart from the hidden states' by the exporter."""
    monkeypatch.setattr(engine_module, "SPECIALISE_MAX_BYTES", 0)
    feeds = zoo.sample(name)

    def run():  # not the shared explainers: their engines would keep the generic programs
        fresh = onnxplain.Explainer(str(zoo.model_path(name)), "cpu", progress=False)
        return fresh.explain(feeds, "transformer_attribution")

    counts = _pruned(monkeypatch)
    pruned = run()
    assert counts and all(c > 0 for c in counts)
    monkeypatch.setattr(explained, "explained_row", lambda *args: None)
    _same(pruned, run())


def test_rows_ending_at_different_positions_each_seed_their_own(zoo, monkeypatch):
    """Right padding: row 1 ends one token early. The explainer has attention methods read
    the explained position's row, the same in every row; called directly with the default
    next-token objective, each row seeds its own last real position."""
    name = "llama_tiny_kv"
    feeds = {k: v.copy() for k, v in zoo.sample(name).items()}
    feeds["attention_mask"][1, -1] = 0
    ex = explainer(zoo.model_path(name))
    objective = DenseObjective(NEXT_TOKEN, Place())

    def run():
        return flow.transformer_attribution(ex.engine, feeds, objective, ex.sources, query=1)

    counts = _pruned(monkeypatch)
    pruned = run()
    assert counts and all(c > 0 for c in counts)
    monkeypatch.setattr(explained, "explained_row", lambda *args: None)
    reference = run().at_inputs["input_ids"]
    assert np.abs(reference).max(axis=1).min() > 0  # every row explained
    assert np.abs(pruned.at_inputs["input_ids"] - reference).max() <= TOLERANCE * np.abs(
        reference).max()


def test_generic_programs_load_where_onnx_runtime_would_fuse_a_read_gelu(zoo, monkeypatch):
    """ONNX Runtime's FastGeluFusion dropped the tanh-GELU's inner product that partial
    LRP's relevance pass reads, so GPT-2's generic program failed to load; it equals the
    program built for the exact shapes."""
    name = "gpt2_tiny_kv"
    feeds = zoo.sample(name)
    exact = _explain(zoo, name, feeds, "partial_lrp")
    monkeypatch.setattr(engine_module, "SPECIALISE_MAX_BYTES", 0)
    _same(_explain(zoo, name, feeds, "partial_lrp"), exact)
