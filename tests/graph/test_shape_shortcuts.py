"""Shape inference runs on a copy without the weights' bytes and skips ONNX Runtime's
symbolic pass when ONNX's own left nothing unknown: the facts must equal the full path's."""

from __future__ import annotations

import pytest

from onnxplain.graph import shapes
from onnxplain.graph.load import load_model


@pytest.mark.parametrize("name", ["resnet18", "digits_bn_cnn", "sentiment_bert", "vit_small"])
def test_shortcuts_give_the_same_facts(name, zoo, monkeypatch):
    model, _ = load_model(str(zoo.model_path(name)))
    fast = shapes.infer_shapes(model)
    monkeypatch.setattr(shapes, "without_weights", lambda m: m)
    monkeypatch.setattr(shapes, "_complete", lambda m, infos: False)
    full = shapes.infer_shapes(model)
    assert fast == full
    assert any(init.name in fast for init in model.graph.initializer)


def test_weights_leave_the_copy_but_not_their_shapes(zoo):
    model, _ = load_model(str(zoo.model_path("resnet18")))
    light = shapes.without_weights(model)
    assert light.ByteSize() < model.ByteSize() / 100
    declared = {value.name for value in light.graph.input}
    big = [init for init in model.graph.initializer if len(init.raw_data) > 1024]
    assert big and all(init.name in declared for init in big)
