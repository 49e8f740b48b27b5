"""The perturbation family's one graph (export.perturb's Loop) on opset 9-11 models:
occlusion, RISE, Kernel SHAP and LIME run in process there as they did before their Loop (no
Mod below opset 10: export.perturb.remainder; several copies per iteration without int64
Min/Max, Range or a computed Pad), give the opset-13 model's numbers, and the exported
old-opset program equals Explainer.explain bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.exporter import export_explainer

from ..methods.test_kernel_shap import product_model, shapley_of_rows
from ..tiny_models import mlp
from .test_export import _run

X = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
OPTIONS = {"occlusion": {"window": 2, "stride": 1, "baseline": 0.25},
           "rise": {"n_masks": 24, "seed": 1, "baseline": 0.1},
           "kernel_shap": {"n_samples": 40, "seed": 1},
           "lime": {"n_samples": 40, "seed": 1}}


def _explain(opset: int, method: str, batch_size: int | None = None):
    explainer = Explainer(mlp(opset=opset), "cpu", progress=False)
    return explainer, explainer.explain(X, method, target=[1, 0, 3], batch_size=batch_size,
                                        **OPTIONS[method])


@pytest.mark.parametrize("opset", [9, 10, 11])
@pytest.mark.parametrize("method", list(OPTIONS))
def test_old_opsets_give_the_opset_13_numbers(method, opset):
    _, old = _explain(opset, method)
    _, new = _explain(13, method)
    assert float(np.abs(new["x"]).max()) > 0  # an oracle that can fail
    np.testing.assert_allclose(old["x"], new["x"], rtol=1e-6,
                               atol=1e-6 * float(np.abs(new["x"]).max()))
    np.testing.assert_array_equal(old.target, new.target)


@pytest.mark.parametrize("opset", [9, 11])
@pytest.mark.parametrize("method", list(OPTIONS))
def test_exported_old_opset_program_equals_in_process(method, opset):
    """At export's rows per Loop iteration (LOOP_ROWS: batch_size 16 in process), several
    copies per iteration below opset 12 too (int64 Min/Max, Range, Pad are newer)."""
    explainer, expected = _explain(opset, method, batch_size=16)
    exported = export_explainer(explainer.model, method, **OPTIONS[method])
    assert exported.opset_import[0].version == opset
    got = _run(exported, {"x": X, "target": np.array([1, 0, 3], np.int64)})
    np.testing.assert_array_equal(got["attribution/x"], expected["x"])


def test_opset_9_exact_kernel_shap_is_brute_force_shapley():
    model, weights = product_model(5)
    model.opset_import[0].version = 9  # MatMul, Add, Relu, Mul: the same ops at opset 9
    x = np.random.default_rng(0).standard_normal((3, 5))
    targets = np.array([0, 2, 1])
    result = Explainer(model, "cpu", progress=False).explain(x, "kernel_shap", targets,
                                                             baseline=0.3)
    want = shapley_of_rows(weights, x, targets, np.full((1, 5), 0.3))
    assert result.extras["exact"]
    assert np.abs(result.extras["values"] - want).max() < 1e-9
