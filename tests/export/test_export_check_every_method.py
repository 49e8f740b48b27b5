"""`export --check` of every method that exports for an image classifier reports no
difference: explain() runs the program export saves, and the check feeds what explain() fed
(the noise tunnels' per-row seeds included)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.export.methods import ATTRIBUTION, EXPORTS
from onnxplain.export_check import _run_exported, check_export, sample_inputs
from onnxplain.exporter import export_explainer
from onnxplain.graph.model import Model
from onnxplain.methods import METHODS

# Small settings so every method runs in a fraction of a second on digits_cnn.
FAST = {"integrated_gradients": {"n_steps": 4}, "smoothgrad": {"n_samples": 3, "seed": 7},
        "smoothgrad_sq": {"n_samples": 3}, "vargrad": {"n_samples": 3, "seed": 2**32 - 1},
        "rise": {"n_masks": 16}, "kernel_shap": {"n_samples": 16}, "lime": {"n_samples": 16},
        "occlusion": {"window": 4}}
# Attention methods need a transformer; the local head's methods a trained local layer.
IMAGE_METHODS = sorted(name for name, spec in METHODS.items() if spec.family != "attention"
                       and name != "layer_integrated_gradients"
                       and name in EXPORTS)  # xrai runs in process only


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_check_finds_no_difference(method, digits_path):
    model = Model.load(str(digits_path))
    options = FAST.get(method, {})
    exported = export_explainer(model, method, **options)
    result = check_export(model, exported, method, options, sample_inputs(model))
    assert result["max_abs_diff"] == 0, (method, result)


def test_noise_seeds_matter(digits_path):
    """Without the per-row seeds the exported vargrad draws other noise than explain():
    the check's zero above comes from feeding them."""
    model = Model.load(str(digits_path))
    exported = export_explainer(model, "vargrad", n_samples=3)
    inputs = sample_inputs(model)
    name = model.inputs[0].name
    reference = Explainer(model, progress=False).explain(dict(inputs), method="vargrad",
                                                         n_samples=3).attributions[name]
    unfed = _run_exported(exported, ["CPUExecutionProvider"], inputs, 2, None, None)
    unfed = unfed[ATTRIBUTION + name]
    assert not np.allclose(unfed, reference, rtol=1e-3, atol=0)
