"""Gradient programs specialised to the feed shapes (runtime/engine.py) against the generic program
with symbolic dims: the same numbers, chunked runs included, and a bounded number of
specialisations per program."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.runtime import engine as engine_module

METHODS = ["transformer_attribution", "partial_lrp", "generic_attention", "saliency"]


def _explainers(zoo, name: str) -> tuple[onnxplain.Explainer, onnxplain.Explainer]:
    generic = onnxplain.Explainer(zoo.model_path(name), providers="cpu")
    generic.engine._shared.small = False  # never specialised
    return generic, onnxplain.Explainer(zoo.model_path(name), providers="cpu")


def _specialised(explainer: onnxplain.Explainer) -> list:
    return [built for variants in explainer.engine._specialised.values()
            for built in variants.values() if built is not None]


@pytest.mark.parametrize("method", METHODS)
def test_specialised_program_matches_the_generic_one(zoo, method):
    generic, static = _explainers(zoo, "sentiment_bert")
    sample = zoo.sample("sentiment_bert")
    ours = static.explain(sample, method)
    assert _specialised(static), "the program should have been built for the feed shapes"
    assert not static.engine._programs, "the generic program should not have been needed"
    expected = generic.explain(sample, method)
    np.testing.assert_array_equal(ours.target, expected.target)
    np.testing.assert_allclose(ours.tensors.get("tokens", ours.attributions["input_ids"]),
                               expected.tensors.get("tokens",
                                                    expected.attributions["input_ids"]),
                               rtol=1e-6, atol=1e-12)


def test_chunked_rows_use_one_program_per_chunk_shape(zoo):
    generic, static = _explainers(zoo, "sentiment_bert")
    sample = zoo.sample("sentiment_bert")
    rows = len(next(iter(sample.values())))
    whole = generic.explain(sample, "transformer_attribution").tensors["tokens"]
    chunked = static.explain(sample, "transformer_attribution",
                             batch_size=rows - 1).tensors["tokens"]
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-12)
    shapes = {shape for variants in static.engine._specialised.values() for shape in variants}
    assert {dict(shape)["input_ids"][0] for shape in shapes} == {rows - 1, 1}


def test_only_the_first_shapes_are_specialised(zoo, monkeypatch):
    monkeypatch.setattr(engine_module, "SPECIALISED_SHAPES", 2)
    generic, static = _explainers(zoo, "sentiment_bert")
    sample = zoo.sample("sentiment_bert")
    for length in (5, 6, 7):
        cut = {name: value[:, :length] for name, value in sample.items()}
        ours = static.explain(cut, "transformer_attribution").tensors["tokens"]
        expected = generic.explain(cut, "transformer_attribution").tensors["tokens"]
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-12)
    assert len(_specialised(static)) == 2
    assert len(static.engine._programs) == 1  # the third shape ran the generic program
