"""Long perturbation runs go in row chunks (methods._perturb._row_chunks) so their progress
bar moves; each row's copies are grouped and summed as in one run over all rows, so the
scores are the whole run's bit for bit (occlusion, RISE, Kernel SHAP, LIME; the regression
methods' float64 solve after the Loop to the last bit)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.methods import _perturb

from ..tiny_models import mlp

X = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
OPTIONS = {"occlusion": {"window": 1, "baseline": 0.25},
           "rise": {"n_masks": 24, "seed": 1, "baseline": 0.1},
           "kernel_shap": {"n_samples": 40, "seed": 1},
           "lime": {"n_samples": 40, "seed": 1}}


def recorded(monkeypatch) -> list[int]:
    """The steps perturbation_run's bar is advanced by."""
    steps: list[int] = []

    class Bar:
        def update(self, n: int) -> None:
            steps.append(n)

        def reset(self, total=None) -> None:
            steps.clear()

    @contextlib.contextmanager
    def bar(enabled, total, label, unit="run"):
        yield Bar()

    monkeypatch.setattr(_perturb, "progress_bar", bar)
    return steps


def _explain(method: str, opset: int = 17):
    explainer = Explainer(mlp(opset=opset), "cpu", progress=False)
    return explainer.explain(X, method, target=[1, 0, 3, 2, 1], batch_size=8,
                             **OPTIONS[method])


@pytest.mark.parametrize("method", list(OPTIONS))
def test_row_chunks_give_the_whole_runs_numbers_bit_for_bit(monkeypatch, method):
    steps = recorded(monkeypatch)
    monkeypatch.setattr(_perturb, "CHUNK_ITERATIONS", 10 ** 9)
    whole = _explain(method)
    assert len(steps) == 1
    steps.clear()
    monkeypatch.setattr(_perturb, "CHUNK_ITERATIONS", 1)
    chunked = _explain(method)
    assert len(steps) > 1, steps  # the case under test: several row chunks
    assert sum(steps) == len(X) * (sum(steps) // len(X))
    assert float(np.abs(whole["x"]).max()) > 0
    np.testing.assert_array_equal(chunked["x"], whole["x"])
    np.testing.assert_array_equal(chunked.target, whole.target)
    for key, value in whole.extras.items():
        if isinstance(value, np.ndarray):  # float64 regression extras: the solve after the
            # Loop is a MatMul over the chunk's rows, whose last bit may follow their count
            np.testing.assert_allclose(chunked.extras[key], value, rtol=1e-13, atol=1e-15)
    for name, value in whole.outputs.items():
        np.testing.assert_array_equal(chunked.outputs[name], value)


def test_chunks_are_about_equal_and_cover_every_row():
    chunks = _perturb._row_chunks(10, 100, 16, 16)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    assert sum(c.stop - c.start for c in chunks) == 10 and len(chunks) > 1
    assert max(c.stop - c.start for c in chunks) <= 16
    assert _perturb._row_chunks(10, 2, 16, 16) == [slice(0, 10)]  # short: one run
    assert _perturb._row_chunks(40, 2, 16, 16) == [slice(0, 16), slice(16, 32),
                                                  slice(32, 40)]  # memory: at most `most`
