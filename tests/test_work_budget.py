"""The work budget (issue 18): every method with a count option (masks, samples, steps,
windows) is refused in one line naming the option, the count and `-O max_runs=N` before it
allocates or runs anything past `max_runs` runs per row or the memory budget; a count under
the budget runs, and a raised `max_runs` allows it."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import METHODS, Explainer
from onnxplain.errors import InputError
from onnxplain.runtime.budget import MAX_RUNS
from tests.cli_helpers import run

HUGE = 10**12


def _model(name: str, shape: list, width: int) -> onnx.ModelProto:
    """x [batch, *shape] -> Flatten -> MatMul -> Tanh -> [batch, 2]: tiny and differentiable."""
    weights = np.random.default_rng(0).standard_normal((width, 2)).astype(np.float32)
    nodes = [helper.make_node("Flatten", [name], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Tanh", ["m"], ["y"])]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


TABLE = _model("x", [4], 4)
IMAGE = _model("x", [3, 8, 8], 192)

# (method, option, value, model): every count option of every method.
COUNTS = [
    ("rise", "n_masks", HUGE, IMAGE),
    ("rise", "grid", 10**6, IMAGE),
    ("rise", "n_masks", HUGE, TABLE),
    ("smoothgrad", "n_samples", HUGE, TABLE),
    ("smoothgrad_sq", "n_samples", HUGE, TABLE),
    ("vargrad", "n_samples", HUGE, TABLE),
    ("integrated_gradients", "n_steps", HUGE, TABLE),
    ("lime", "n_samples", HUGE, TABLE),
    # 16 features: 65,535 coalitions, over max_runs (4 features are 15, whatever n_samples).
    ("kernel_shap", "n_samples", HUGE, _model("x", [16], 16)),
]


def _inputs(model: onnx.ModelProto) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(1).standard_normal((2, *dims)).astype(np.float32)


def test_every_method_with_a_count_declares_the_one_budget():
    """max_runs is declared once (MAX_RUNS) and every method whose options count runs has it."""
    counted = {"n_masks", "n_samples", "n_steps", "window"}
    for spec in METHODS.values():
        if counted & set(spec.defaults):
            assert spec.defaults.get("max_runs") == MAX_RUNS == 10_000, spec.name


@pytest.mark.parametrize("method, option, value, model", COUNTS)
def test_a_huge_count_is_one_line_before_anything_runs(method, option, value, model):
    explainer = Explainer(model, progress=False)
    start = time.perf_counter()
    with pytest.raises(InputError) as error:
        explainer.explain(_inputs(model), method, **{option: value})
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert "\n" not in message and f"{option}={value:,}" in message, message
    assert "max_runs" in message or "memory budget" in message, message


@pytest.mark.parametrize("method, option, value, model", COUNTS[::2])
def test_the_cli_refuses_a_huge_count_with_exit_2(tmp_path, method, option, value, model):
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", _inputs(model))
    start = time.perf_counter()
    result = run("explain", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npy"), "-m",
                 method, "-O", f"{option}={value}", "-q", "-o", str(tmp_path / "out"))
    assert time.perf_counter() - start < 5.0  # the CLI's own start-up included
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        result.stderr
    assert f"{option}={value:,}" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, option", [  # kernel_shap: test_perturbation_leftovers
    ("rise", "n_masks"), ("lime", "n_samples"),
    ("smoothgrad", "n_samples"), ("integrated_gradients", "n_steps")])
def test_the_budget_is_exact_and_max_runs_raises_it(method, option):
    """max_runs + 1 is refused naming `-O max_runs=N`; exactly max_runs runs; a raised
    max_runs lets the larger count run (tiny model and budget, so it is fast)."""
    explainer = Explainer(TABLE, progress=False)
    x = _inputs(TABLE)
    with pytest.raises(InputError, match=f"-O max_runs={41}"):
        explainer.explain(x, method, **{option: 41, "max_runs": 40})
    assert np.all(np.isfinite(explainer.explain(x, method, **{option: 40, "max_runs": 40})
                              .attributions["x"]))
    assert np.all(np.isfinite(explainer.explain(x, method, **{option: 41, "max_runs": 41})
                              .attributions["x"]))


def test_a_count_under_the_default_budget_runs():
    """Just under MAX_RUNS runs on a tiny model (the budget refuses only what is over it)."""
    explainer = Explainer(TABLE, progress=False)
    result = explainer.explain(_inputs(TABLE)[:1], "rise", n_masks=MAX_RUNS - 1)
    values = result.attributions["x"]
    assert values.shape == (1, 4) and np.all(np.isfinite(values))


def test_memory_alone_is_refused_even_when_runs_are_allowed():
    """LIME holds a score per sample and row at once (its regression's table): over the
    memory budget it is refused in one line naming n_samples, even with max_runs raised."""
    explainer = Explainer(TABLE, progress=False, memory_budget_mb=1)
    with pytest.raises(InputError, match="n_samples=50,000 holds about .* memory budget"):
        explainer.explain(_inputs(TABLE), "lime", n_samples=50_000, max_runs=HUGE)


def test_noise_memory_is_flat_in_the_sample_count():
    """The noise Loop draws an iteration's samples at a time and carries two sums per input:
    what it holds does not grow with n_samples (the budget sizes the iterations)."""
    work = METHODS["smoothgrad"].work
    feeds = {"x": _inputs(IMAGE)}
    few, many = (work({"n_samples": n}, feeds) for n in (2, 2000))
    assert few.held == many.held == 2 * feeds["x"].nbytes
    assert many.runs == 2000


def test_max_runs_must_be_positive():
    with pytest.raises(InputError, match="'max_runs' of method 'lime' must be an integer >= 1"):
        Explainer(TABLE, progress=False).explain(_inputs(TABLE), "lime", max_runs=0)


@pytest.mark.parametrize("method", ["rise", "occlusion", "lime", "kernel_shap"])
def test_an_input_option_that_is_not_a_name_is_one_line(method):
    """The perturbed input's name from the API may be any value (the fuzzer passes arrays)."""
    with pytest.raises(InputError, match="^option 'input' of method .* expects an input "
                       "name or None, got a value of type ndarray shaped"):
        Explainer(IMAGE, progress=False).explain(_inputs(IMAGE), method,
                                                 input=np.zeros((2, 2)))
