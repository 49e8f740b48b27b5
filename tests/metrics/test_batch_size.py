"""The metrics' batch_size: rows per forward run of that call only (a view of the engine
under a derived RunPolicy), never a change of the explainer's engine."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain import Explainer, InputError, metrics

from .models import linear

W = np.array([[1, -1], [2, 0], [3, 1], [4, 2]], dtype=np.float64)
X = np.array([[4, 1.5, 2 / 3, 0.25], [1, 1, 1, 1]], dtype=np.float32)


@pytest.mark.parametrize("probability", [False, True])
def test_a_curves_batch_size_sizes_its_runs_only(session_rows, probability):
    explainer = Explainer(linear(W, np.zeros(2)), "cpu", progress=False)
    attribution = explainer.explain(X, method="input_x_gradient", target=0)
    policy = explainer.engine.policy
    settings = {"steps": 4, "features": "columns", "probability": probability}
    del session_rows[:]
    whole = metrics.deletion_curve(explainer, X, attribution, **settings)
    assert session_rows == [10]  # 2 rows x 5 steps, one run under the budget
    del session_rows[:]
    chunked = metrics.deletion_curve(explainer, X, attribution, batch_size=3, **settings)
    assert session_rows == [3, 3, 3, 1]
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=1e-6)
    assert explainer.engine.policy is policy
    del session_rows[:]
    metrics.evaluate(explainer, X, attribution, ["deletion"], steps=4, features="columns",
                     random_draws=0, batch_size=4)
    assert session_rows == [4, 4, 2]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_bad_batch_size_is_one_line(bad):
    explainer = Explainer(linear(W, np.zeros(2)), "cpu", progress=False)
    attribution = explainer.explain(X, method="input_x_gradient", target=0)
    with pytest.raises(InputError, match="^batch_size must be") as raised:
        metrics.deletion_curve(explainer, X, attribution, steps=4, batch_size=bad)
    assert "\n" not in str(raised.value)
