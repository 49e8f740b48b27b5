"""An exported explainer stores the model's weights once: the flipped kernels of the
convolutions' adjoints, LRP's modified weights (w+, w-, BatchNormalization merged) and the
Chefer rule's stacked [W+; W-] are computed in the graph from the weights themselves (ONNX
Runtime folds them when the session starts), so the file stays the size of the original."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxplain import Explainer
from onnxplain.exporter import export_explainer


def _new_constants(original, exported: onnx.ModelProto) -> int:
    """Elements of the initializers the export added to the model's own."""
    weights = {init.name for init in onnx.load(str(original)).graph.initializer}
    stored = [init for init in exported.graph.initializer if init.name not in weights]
    return sum(int(np.prod(init.dims)) for init in stored)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "smoothgrad", "lrp"])
def test_exported_file_is_within_a_tenth_of_the_original(zoo, tmp_path, method):
    original = zoo.model_path("resnet18_64")
    exported = export_explainer(str(original), method)
    onnx.save(exported, tmp_path / "explainer.onnx")
    ratio = os.path.getsize(tmp_path / "explainer.onnx") / os.path.getsize(original)
    assert ratio <= 1.1, ratio
    assert _new_constants(original, exported) < 10_000  # constants, no kernels


@pytest.mark.parametrize("composite", ["epsilon-plus-flat", "gamma", "epsilon-alpha2-beta1",
                                       "w-square"])
def test_lrp_composites_store_no_modified_weights(zoo, composite):
    """Every rule's modified weights (w+, w-, w + gamma w+, w^2, ones; BatchNormalization
    merged into the convolutions before them) are graph ops on the model's weights."""
    original = zoo.model_path("resnet18_64")
    exported = export_explainer(str(original), "lrp", composite=composite)
    assert _new_constants(original, exported) < 10_000


@pytest.mark.parametrize("name", ["bert_small", "vit_small"])
def test_chefer_exports_store_no_weight_copies(zoo, name):
    """The Chefer rule's [W+; W-] of every dense layer is computed in the graph. (The tiny
    models' files grow by their extra nodes, 0.15x to 0.3x of 0.6 MB; no weights are added.)"""
    original = zoo.model_path(name)
    exported = export_explainer(str(original), "transformer_attribution")
    assert _new_constants(original, exported) < 1_000


def test_in_graph_flips_equal_the_stored_ones(zoo):
    """The stride-1 adjoint with weights flipped in the graph gives the gradients the stored
    flipped copy gave (the program is otherwise identical)."""
    from onnxplain.autodiff.ops import conv

    path = str(zoo.model_path("resnet18_64"))
    x = zoo.sample("resnet18_64")["pixel_values"][:1]
    in_graph = Explainer(path, "cpu").explain(x, "saliency", target=3, abs=False)["pixel_values"]
    original = conv._flipped_weights
    conv._flipped_weights = lambda b, w, shape, group: b.const(
        conv._flipped(b.static_value(w), group), "flipped_weights")
    try:
        stored = Explainer(path, "cpu").explain(x, "saliency", target=3,
                                                abs=False)["pixel_values"]
    finally:
        conv._flipped_weights = original
    np.testing.assert_allclose(in_graph, stored, rtol=1e-5, atol=1e-6 * np.abs(stored).max())


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_exports_of_a_file_embed_its_weights(zoo, method):
    """A model loaded from a file holds its large weights as file stubs (graph.weights); its
    exported explainer holds their bytes, equal to the file's (Loop bodies' copies too)."""
    from onnxplain.graph.model import Model
    from onnxplain.graph.weights import file_span, nested_graphs

    original = str(zoo.model_path("resnet18_64"))
    model = Model.load(original)
    assert sum(file_span(init) is not None for init in model.proto.graph.initializer) > 5
    assert model.proto.ByteSize() < 0.2 * os.path.getsize(original)  # the rest: < 1 MB each
    exported = export_explainer(model, method)
    values = {init.name: init.raw_data for init in onnx.load(original).graph.initializer}
    embedded = 0
    for graph in nested_graphs(exported.graph):
        for init in graph.initializer:
            assert init.data_location != onnx.TensorProto.EXTERNAL, init.name
            name = init.name.removeprefix("onnxplain/loop/")
            if name in values and len(values[name]) >= 1 << 20:
                assert init.raw_data == values[name], init.name
                embedded += 1
    assert embedded > 5
