"""skl2onnx classifiers: their ZipMap output (a sequence of maps) is read through the
probability tensor it is built from, and perturbation methods explain them (tree ensembles
have no gradient, and need none)."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.errors import UnsupportedOpError

from .conftest import require


@pytest.fixture(scope="module")
def forest():
    require("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    x = data.data.astype(np.float32)
    model = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(x, data.target)
    return model, to_onnx(model, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}), x


def test_zipmap_probabilities_become_the_explained_output(forest):
    model, proto, x = forest
    assert any(node.op_type == "ZipMap" for node in proto.graph.node)
    explainer = onnxplain.Explainer(proto, providers="cpu")
    assert explainer.output not in {o.name for o in proto.graph.output}
    outputs = explainer.forward(x[:5])
    assert np.allclose(outputs[explainer.output], model.predict_proba(x[:5]), atol=1e-5)


def test_occlusion_explains_a_tree_ensemble(forest):
    model, proto, x = forest
    explainer = onnxplain.Explainer(proto, providers="cpu")
    rows = x[:4]
    result = explainer.explain(rows, "occlusion", target=[0, 1, 2, 1], baseline=0.0)
    values = result.attributions[explainer.model.inputs[0].name]
    probabilities = model.predict_proba(rows)
    for row, target in enumerate([0, 1, 2, 1]):
        for column in range(4):
            occluded = rows[row:row + 1].copy()
            occluded[0, column] = 0.0
            drop = probabilities[row, target] - model.predict_proba(occluded)[0, target]
            assert values[row, column] == pytest.approx(drop, abs=1e-5)


def test_gradient_methods_name_the_tree_ops(forest):
    _, proto, x = forest
    explainer = onnxplain.Explainer(proto, providers="cpu")
    with pytest.raises(UnsupportedOpError, match="TreeEnsembleClassifier"):
        explainer.explain(x[:2], "saliency")
