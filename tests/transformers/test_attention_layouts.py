"""Attention layouts other than self-attention over one sequence (issue 17, item 5): Swin's
window attention, SegFormer's pooled keys, DETR's and BART's decoders and cross-attention,
CLIP's vision tower. Layers are classified from their maps' shapes and where their keys come
from (graph/attention_layouts.py); the methods read the self-attention layers of the
explained sequence, skipping the others with one warning that names them, or refuse in one
line when none is left. Maps are checked against a float64 rollout of the attention the
torch model returns."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import onnxplain
from onnxplain.graph.attention import find_attention
from onnxplain.graph.attention_layouts import classify

# model -> (layouts of its layers, layers read, query row: None for the mean row)
CASES = {
    "swin_tiny": (["windowed", "windowed", "self", "self"], [2, 3], None),
    "segformer_tiny": (["pooled", "self"], [1], None),
    "detr_tiny": (["self", "decoder", "cross"], [0], None),
    "bart_tiny": (["self", "decoder", "cross"], [0], 0),
    "clip_vision_tiny": (["self", "self"], [0, 1], 0),
}


@pytest.fixture(scope="module")
def models(zoo):
    return {name: (onnxplain.Explainer(str(zoo.model_path(name)), progress=False),
                   zoo.sample(name)) for name in CASES}


def _torch_maps(zoo, name: str, feeds: dict, read: list[int]) -> list[np.ndarray]:
    """The float64 attention probabilities of the torch original's layers `read`, captured
    from every attention module's (output, weights) in the order they run (the export's)."""
    import torch

    hf = zoo.load_torch(name).model.double()
    captured: dict[int, torch.Tensor] = {}

    def keep(module, args, output) -> None:
        if isinstance(output, tuple) and len(output) > 1 and getattr(output[1], "ndim", 0) == 4:
            captured.setdefault(output[1].data_ptr(), output[1])  # nested wrappers: once

    hooks = [m.register_forward_hook(keep) for m in hf.modules()
             if "Attention" in type(m).__name__]
    inputs = {k: torch.from_numpy(v.astype(np.float64) if v.dtype.kind == "f" else v)
              for k, v in feeds.items()}
    with torch.no_grad():
        hf(**inputs, output_attentions=True)
    for hook in hooks:
        hook.remove()
    maps = [m.numpy() for m in captured.values()]
    return [maps[i] for i in read]


def _rollout(maps: list[np.ndarray], query: int | None) -> np.ndarray:
    """Abnar and Zuidema: row `query` (or the mean row) of prod normalise(I + E_h A_l)."""
    product = None
    for a in maps:
        m = a.mean(axis=1) + np.eye(a.shape[-1])
        m = m / m.sum(axis=-1, keepdims=True)
        product = m if product is None else np.einsum("nst,ntu->nsu", m, product)
    return product.mean(axis=1) if query is None else product[:, query]


def _explain(explainer, feeds, method, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = explainer.explain(feeds, method, **options)
    notes = [str(w.message) for w in caught if method in str(w.message)]
    return result, notes


@pytest.mark.parametrize("name", CASES)
def test_layouts_are_read_from_shapes_and_key_sources(models, name):
    explainer, feeds = models[name]
    model = explainer.engine.model
    layers = find_attention(model)
    values = explainer.engine.forward({k: v[:1] for k, v in feeds.items()},
                                      taps=[layer.probabilities for layer in layers])
    shapes = [values[layer.probabilities].shape for layer in layers]
    assert [lay.kind for lay in classify(model, layers, shapes)] == CASES[name][0]


@pytest.mark.parametrize("method", ["raw_attention", "rollout"])
@pytest.mark.parametrize("name", CASES)
def test_maps_match_the_torch_attention_of_the_layers_read(zoo, models, name, method):
    explainer, feeds = models[name]
    kinds, read, query = CASES[name]
    result, notes = _explain(explainer, feeds, method)
    maps = _torch_maps(zoo, name, feeds, read)
    if method == "raw_attention":
        last = maps[-1].mean(axis=1)
        expected = last.mean(axis=1) if query is None else last[:, query]
    else:
        expected = _rollout(maps, query)
    if query is not None:
        expected[:, query] = 0.0
    tokens = result.tensors["tokens"]
    # float32 maps against float64: measured at most 2.7e-7 relative, 1.9e-8 absolute.
    np.testing.assert_allclose(tokens, expected, rtol=1e-5, atol=1e-8)
    assert np.abs(tokens).max() > 0
    _check_notice(notes, method, kinds, read)


def _check_notice(notes: list[str], method: str, kinds: list[str], read: list[int]) -> None:
    """One line naming the layers read and each skipped layer with its reason, or none."""
    skipped = [i for i, kind in enumerate(kinds) if i not in read]
    if not skipped:
        assert notes == []
        return
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith(f"{method}: reads attention layers "
                               f"{', '.join(map(str, read))} (")
    named = [int(i) for i in re.findall(r"(\d+) \('", notes[0])]
    assert named == skipped


@pytest.mark.parametrize("method", ["transformer_attribution", "partial_lrp"])
@pytest.mark.parametrize("name", CASES)
def test_relevance_methods_read_the_same_layers(models, name, method):
    """No ONNX Runtime error; the skipped layers named once; the same scores as when the
    layers read are named with attention=... (the skipped maps change nothing)."""
    explainer, feeds = models[name]
    kinds, read, _ = CASES[name]
    options = {"target": 0}
    if name == "detr_tiny":  # per-query class scores: explain class 0 of object query 0
        seed = np.zeros((2, 5, 4), np.float32)
        seed[:, 0, 0] = 1.0
        options = {"output_seed": seed}
    result, notes = _explain(explainer, feeds, method, **options)
    _check_notice(notes, method, kinds, read)
    layers = find_attention(explainer.engine.model)
    named = ",".join(layers[i].probabilities for i in read)
    alone, _ = _explain(explainer, feeds, method, attention=named, **options)
    tokens = result.tensors["tokens"]
    assert np.all(np.isfinite(tokens))
    np.testing.assert_allclose(tokens, alone.tensors["tokens"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["raw_attention", "rollout", "transformer_attribution",
                                    "partial_lrp"])
def test_no_readable_layer_is_refused_in_one_line(models, method):
    """Swin's window layers alone: one line naming both, never an ONNX Runtime error."""
    explainer, feeds = models["swin_tiny"]
    layers = find_attention(explainer.engine.model)
    named = ",".join(layer.probabilities for layer in layers[:2])
    with pytest.raises(onnxplain.InputError) as caught:
        explainer.explain(feeds, method, target=0, attention=named)
    message = str(caught.value)
    assert "\n" not in message and "ONNXRuntimeError" not in message
    assert message.count("window attention: 4 windows of 16 tokens") == 2
    assert f"'{layers[0].probabilities}'" in message and f"'{layers[1].probabilities}'" in message


def test_layers_over_another_sequence_length_are_skipped(models):
    """Self-attention layers whose token count differs from the last layer read (another
    stage of a hierarchical model, another tower) are named and skipped, not chained."""
    from onnxplain.graph.attention_layouts import readable

    explainer, _ = models["clip_vision_tiny"]
    layers = find_attention(explainer.engine.model)
    with pytest.warns(UserWarning) as caught:
        kept = readable(explainer.engine.model, layers, lambda: [(1, 2, 9, 9), (1, 2, 17, 17)],
                        "rollout")
    assert kept == layers[1:]
    (note,) = [str(w.message) for w in caught]
    assert note == (f"rollout: reads attention layers 1 (17 tokens) and skips layers 0 "
                    f"('{layers[0].probabilities}', another sequence length or grid: "
                    "9 queries x 9 keys)")
