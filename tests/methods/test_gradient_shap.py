"""GradientSHAP (expected gradients) against Captum's GradientShap on the zoo's torch
originals: with the very draws fed to Captum (its background rows, alphas and noise
replaced by the numbers onnxplain's generator draws), and in expectation with Captum's own
random draws. Also: the exported program equals in-process, a batch equals its rows, a fixed
batch axis equals a symbolic one, and the convergence delta is sum(phi) - (S(x) - E_b S(b))
with the scores from torch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnxplain
from onnxplain.errors import InputError
from onnxplain.export import LOOP_ROWS
from onnxplain.export.gradient_shap import DRAWS
from onnxplain.export.noise import SEED, STREAM, row_seeds
from onnxplain.export.random import reference_uniform
from onnxplain.exporter import export_explainer

from ..export.test_export import _run
from ..export.test_fixed_batch_loop import _explain, _exported, dense
from ..export.test_same_program_noise import _draws
from .test_captum_oracles import Case, assert_rows_agree_but_for_flips, max_relative_error


@pytest.fixture(scope="module", params=["digits_bn_cnn", "digits_mlp"])
def case(request, zoo):
    return Case(zoo, request.param)


@pytest.fixture(scope="module")
def mlp(zoo):
    return Case(zoo, "digits_mlp")


def _background(case: Case, count: int) -> np.ndarray:
    """Rows of the sample other than the explained ones at the same index."""
    return np.ascontiguousarray(case.x[::-1][:count])


def _our_draws(x: np.ndarray, seed: int, samples: int, count: int, stdev: float):
    """The draws onnxplain's program makes for rows x, rows-major ([N * samples], a row's
    samples adjacent, as Captum lays them out): background rows, alphas, noise."""
    seeds = row_seeds([x], seed)
    u = reference_uniform(seeds, DRAWS * STREAM + np.arange(samples), 2, np.float64)
    u = np.swapaxes(u, 0, 1).reshape(-1, 2)  # [N * samples, 2]
    rows = np.floor(u[:, 1] * count).astype(np.int64)
    row = x.shape[1:]
    z = _draws(seeds, np.arange(samples), int(np.prod(row)))[1]  # the graph's own float32
    noise = np.swapaxes(z, 0, 1).reshape((-1, *row)) * np.float32(stdev)
    return rows, u[:, 0], noise


# 6 draws: far from complete
@pytest.mark.filterwarnings("ignore::onnxplain.methods._common.ConvergenceWarning")
def test_captum_with_the_same_draws(case, monkeypatch):
    from captum.attr import GradientShap

    torch = case.torch
    samples, stdev, count, seed = 6, 0.1, 5, 4
    background = _background(case, count)
    rows, alphas, noise = _our_draws(case.x, seed, samples, count, stdev)
    monkeypatch.setattr(np.random, "choice", lambda *args, **kwargs: rows)
    monkeypatch.setattr(np.random, "uniform", lambda *args, **kwargs: alphas)
    monkeypatch.setattr(torch, "normal", lambda *args, **kwargs: torch.from_numpy(noise))
    want = GradientShap(case.module).attribute(
        case.tensor(), torch.from_numpy(background), n_samples=samples, stdevs=stdev,
        target=case.target_tensor()).detach().numpy()
    monkeypatch.undo()
    got = case.explain("gradient_shap", n_samples=samples, stdevs=stdev, baselines=background,
                       seed=seed)[case.input]
    assert np.abs(want).max() > 0
    # Captum interpolates as a x~ + (1 - a) b, onnxplain as b + a (x~ - b): rounding apart,
    # which on a ReLU network may flip a unit at a point within it of its boundary.
    assert_rows_agree_but_for_flips(got, want)


def _per_draw(case: Case, rows: list[int], background: np.ndarray, samples: int,
              stdev: float, rng) -> np.ndarray:
    """Captum's per-draw values grad(b + a (x~ - b)) * (x~ - b) from torch autograd with
    numpy draws: [rows, samples, *row]."""
    torch = case.torch
    out = []
    for row in rows:
        x = np.repeat(case.x[row:row + 1], samples, axis=0)
        noisy = x + rng.normal(0, stdev, x.shape).astype(np.float32)
        base = background[rng.integers(0, len(background), samples)]
        alpha = rng.uniform(0, 1, (samples,) + (1,) * (x.ndim - 1)).astype(np.float32)
        point = torch.from_numpy(base + alpha * (noisy - base)).requires_grad_(True)
        score = case.module(point)[:, int(case.targets[row])].sum()
        (grad,) = torch.autograd.grad(score, point)
        out.append(grad.numpy() * (noisy - base))
    return np.stack(out)


def test_captum_in_expectation(mlp):
    """Three independent Monte Carlo estimates of the same expectation (onnxplain's, Captum's
    with its own draws, torch autograd with numpy's): each pair differs by less than 6
    standard errors of a difference (sqrt(2) se, se from the per-draw values), for every
    element; the bound is small against the attributions, so a different estimand (another
    interpolation, no noise, another sample count in the mean) fails."""
    from captum.attr import GradientShap

    torch = mlp.torch
    rows, samples, stdev, count = [0, 1, 2, 3], 3000, 0.3, 8
    background = _background(mlp, count)
    x, targets = mlp.x[rows], mlp.targets[rows]
    draws = _per_draw(mlp, rows, background, samples, stdev, np.random.default_rng(0))
    reference = draws.mean(axis=1)
    bound = 6 * np.sqrt(2) * draws.std(axis=1) / np.sqrt(samples) + 1e-6
    assert np.median(bound) < 0.05 * np.abs(reference).max()
    torch.manual_seed(0)
    np.random.seed(0)
    captum = GradientShap(mlp.module).attribute(
        torch.from_numpy(x), torch.from_numpy(background), n_samples=samples, stdevs=stdev,
        target=torch.from_numpy(targets)).detach().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the noise's share of the delta
        ours = mlp.explainer.explain(x, method="gradient_shap", target=targets,
                                     n_samples=samples, stdevs=stdev, baselines=background,
                                     seed=1)[mlp.input]
    for a, b in ((ours, captum), (ours, reference), (captum, reference)):
        assert (np.abs(a - b) < bound).all(), float((np.abs(a - b) / bound).max())


@pytest.mark.filterwarnings("ignore::onnxplain.methods._common.ConvergenceWarning")  # a row or two
def test_convergence_delta_against_torch_scores(mlp):
    """extras and the program's outputs: delta = sum(phi) - (S(x) - mean_b S(b)), S from
    the torch original; E_b S(b) is extras["expected_value"]; with many draws and no noise
    the delta is small (completeness in expectation: at 400 draws its median over the rows
    is 3-5% for seeds 0-3, at 2000 about half that)."""
    torch = mlp.torch
    background = _background(mlp, 6)
    result = mlp.explain("gradient_shap", n_samples=2000, baselines=background, seed=2)
    with torch.no_grad():
        at_x = mlp.module(torch.from_numpy(mlp.x)).numpy()
        at_b = mlp.module(torch.from_numpy(background)).numpy()
    rows = np.arange(len(mlp.x))
    score, expected = at_x[rows, mlp.targets], at_b[:, mlp.targets].mean(axis=0)
    np.testing.assert_allclose(result.extras["expected_value"], expected, rtol=1e-4, atol=1e-5)
    total = result[mlp.input].reshape(len(rows), -1).sum(axis=1)
    np.testing.assert_allclose(result.extras["convergence_delta"], total - (score - expected),
                               rtol=1e-4, atol=1e-4)
    relative = np.abs(result.extras["convergence_delta"]) / np.abs(score - expected)
    assert np.median(relative) < 0.05, relative


def test_exported_equals_in_process(zoo):
    explainer = onnxplain.Explainer(str(zoo.model_path("digits_cnn")), "cpu", progress=False)
    sample = zoo.sample("digits_cnn")["image"]
    x, background = sample[:3], sample[-4:]
    options = {"n_samples": 5, "stdevs": 0.2, "baselines": background, "seed": 3,
               "internal_batch_size": LOOP_ROWS}
    exported = export_explainer(explainer.model, "gradient_shap", **options)
    got = _run(exported, {"image": x, SEED: row_seeds([x], 3)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = explainer.explain(x, method="gradient_shap", **options)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])
    np.testing.assert_array_equal(got["target_used"], expected.target)
    np.testing.assert_allclose(got["convergence_delta"], expected.extras["convergence_delta"],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["baseline_score"], expected.extras["expected_value"])
    # Its defaults: one seed for all rows, the exported background rows.
    alone = _run(exported, {"image": x})["attribution/image"]
    assert np.isfinite(alone).all() and not np.allclose(alone, got["attribution/image"])


def test_a_batch_equals_its_rows(zoo):
    explainer = onnxplain.Explainer(str(zoo.model_path("rgb_cnn")), "cpu", progress=False)
    sample = zoo.sample("rgb_cnn")
    name = next(iter(sample))
    x, background = sample[name][:3], sample[name][-2:]
    options = {"n_samples": 4, "stdevs": 0.1, "baselines": background, "seed": 9}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = explainer.explain(x, method="gradient_shap", **options)
        for row in range(len(x)):
            single = explainer.explain(x[row:row + 1], method="gradient_shap",
                                       target=int(batch.target[row]), **options)
            value = batch[name][row]
            np.testing.assert_allclose(single[name][0], value, rtol=1e-5,
                                       atol=1e-6 * float(np.abs(value).max()))
            np.testing.assert_allclose(single.extras["convergence_delta"][0],
                                       batch.extras["convergence_delta"][row], rtol=1e-4,
                                       atol=1e-5)


@pytest.mark.parametrize("size, rows", [(1, 3), (2, 3)])
def test_a_fixed_batch_equals_a_symbolic_one_and_its_export(size, rows):
    x = np.random.default_rng(5).standard_normal((rows, 6)).astype(np.float32)
    background = np.random.default_rng(6).standard_normal((3, 6)).astype(np.float32)
    options = {"n_samples": 5, "seed": 2, "stdevs": 0.3, "baselines": background}
    fixed = _explain(dense(size, False), {"x": x}, "gradient_shap", options)
    symbolic = _explain(dense(None, False), {"x": x}, "gradient_shap", options)
    assert np.abs(fixed["x"]).max() > 0
    np.testing.assert_allclose(fixed["x"], symbolic["x"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fixed.extras["convergence_delta"],
                               symbolic.extras["convergence_delta"], rtol=1e-5, atol=1e-6)
    got = _exported(dense(size, False), "gradient_shap", options, {"x": x},
                    {SEED: row_seeds([x], 2)})
    np.testing.assert_array_equal(got["attribution/x"], fixed["x"])


def test_background_rows_of_another_shape_are_refused(mlp):
    with pytest.raises(InputError, match=r"background rows for 'features' must be shaped "
                                         r"\[B, 64\] \(or one row\), got \(2, 63\)"):
        mlp.explain("gradient_shap", baselines=np.zeros((2, 63), np.float32))
    with pytest.raises(InputError, match="option 'baselines' of method 'gradient_shap' "
                                         "expects one of zeros, a float, an array"):
        mlp.explain("gradient_shap", baselines="blur")


def test_the_zero_default_is_monte_carlo_integrated_gradients(mlp):
    """No background given: one row of zeros, the same expectation as Integrated Gradients
    from zeros (the path integral), to the Monte Carlo error (2000 draws)."""
    ig = mlp.explain("integrated_gradients", n_steps=64)[mlp.input]
    shap = mlp.explain("gradient_shap", n_samples=2000)[mlp.input]
    assert max_relative_error(shap, ig) < 0.02  # 0.2-0.6% for seeds 0-5


RNG = np.random.default_rng(11)
W1 = RNG.standard_normal((5, 4)).astype(np.float32)
W2 = RNG.standard_normal((4, 3)).astype(np.float32)


def _two_inputs():
    """x [N, 3], y [N, 2] -> Concat -> MatMul -> Tanh -> MatMul -> logits [N, 3]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Concat", ["x", "y"], ["xy"], axis=1),
             helper.make_node("MatMul", ["xy", "w1"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", size])
         for name, size in (("x", 3), ("y", 2))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _numpy_gradient_shap(feeds, background, targets, samples, stdev, seed):
    """The method from its formula in float64 numpy, with the program's draws: one
    background row and alpha per draw for both inputs, each input its own noise stream."""
    names = ["x", "y"]
    seeds = row_seeds([feeds[name] for name in names], seed)
    u = reference_uniform(seeds, DRAWS * STREAM + np.arange(samples), 2, np.float64)
    alpha = u[..., 0].astype(np.float32)[..., None]  # [samples, N, 1]
    rows = np.floor(u[..., 1] * len(background["x"])).astype(np.int64)
    ends, starts = {}, {}
    for index, name in enumerate(names):
        value = feeds[name]
        z = _draws(seeds, index * STREAM + np.arange(samples), value.shape[1])[1]
        ends[name] = value[None] + z * np.float32(stdev)
        starts[name] = background[name][rows]
    points = np.concatenate([starts[n] + alpha * (ends[n] - starts[n]) for n in names], 2)
    hidden = np.tanh(points.astype(np.float64) @ W1)
    grad = (W2[:, targets].T[None] * (1 - hidden ** 2)) @ W1.T  # [samples, N, 5]
    parts = {"x": grad[..., :3], "y": grad[..., 3:]}
    return {name: (parts[name] * (ends[name] - starts[name])).mean(axis=0) for name in names}


def test_two_inputs_against_numpy_with_the_same_draws():
    feeds = {"x": RNG.standard_normal((3, 3)).astype(np.float32),
             "y": RNG.standard_normal((3, 2)).astype(np.float32)}
    background = {"x": RNG.standard_normal((4, 3)).astype(np.float32),
                  "y": RNG.standard_normal((4, 2)).astype(np.float32)}
    targets = np.array([0, 2, 1])
    explainer = onnxplain.Explainer(_two_inputs(), "cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 7 draws: far from complete
        result = explainer.explain(feeds, method="gradient_shap", target=targets, n_samples=7,
                                   stdevs=0.2, baselines=background, seed=5)
    want = _numpy_gradient_shap(feeds, background, targets, 7, 0.2, 5)
    for name in ("x", "y"):
        assert max_relative_error(result[name], want[name]) < 1e-4
    with pytest.raises(InputError, match="need the same number of rows"):
        explainer.explain(feeds, method="gradient_shap",
                          baselines={"x": background["x"], "y": background["y"][:2]})
    with pytest.raises(InputError, match="pass gradient_shap's baselines as a dict"):
        explainer.explain(feeds, method="gradient_shap", baselines=background["x"])


def _scores(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """_two_inputs' score of class targets[i] at points [..., N, 5] (x and y joined)."""
    logits = np.tanh(points.astype(np.float64) @ W1) @ W2
    return np.take_along_axis(logits, np.broadcast_to(targets[:, None], (*logits.shape[:-1],
                                                                          1)), -1)[..., 0]


@pytest.mark.parametrize("rows, count", [(5, 3), (2, 5), (3, 3)])
def test_background_rows_run_packed_into_points(rows, count):
    """The background rows run N to a point (the last one padded when N does not divide
    B): E_b[S(b)] and the delta from numpy's forward pass over the background rows."""
    rng = np.random.default_rng(rows * 10 + count)
    feeds = {name: rng.standard_normal((rows, size)).astype(np.float32)
             for name, size in (("x", 3), ("y", 2))}
    background = {name: rng.standard_normal((count, size)).astype(np.float32)
                  for name, size in (("x", 3), ("y", 2))}
    targets = np.arange(rows) % 3
    explainer = onnxplain.Explainer(_two_inputs(), "cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3 draws: far from complete
        result = explainer.explain(feeds, method="gradient_shap", target=targets, n_samples=3,
                                   baselines=background, internal_batch_size=rows)
    joined = np.concatenate([background["x"], background["y"]], 1)  # [B, 5]
    expected = _scores(np.repeat(joined[:, None], rows, 1), targets).mean(axis=0)
    np.testing.assert_allclose(result.extras["expected_value"], expected, rtol=1e-5, atol=1e-6)
    score = _scores(np.concatenate([feeds["x"], feeds["y"]], 1), targets)
    total = sum(result[name].reshape(rows, -1).sum(axis=1) for name in ("x", "y"))
    np.testing.assert_allclose(result.extras["convergence_delta"], total - (score - expected),
                               rtol=1e-4, atol=1e-5)


W_MASKED = RNG.standard_normal((3, 3)).astype(np.float32)


def _masked():
    """x [N, 3] float, m [N, 3] int64 -> x * m -> MatMul -> Tanh: m is not drawn (an integer
    input), so each row's own m pairs with every background row of x."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "mf"], ["xm"]),
             helper.make_node("MatMul", ["xm", "w"], ["h"]),
             helper.make_node("Tanh", ["h"], ["scores"])]
    graph = helper.make_graph(
        nodes, "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("m", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W_MASKED, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def test_an_input_that_is_not_drawn_pairs_with_every_background_row():
    """E_b[S(b, m_i)] per row, and the attributions from the formula with the program's
    draws, in float64 numpy."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 3)).astype(np.float32)
    m = np.array([[1, 0, 1], [1, 1, 1], [0, 1, 0]], np.int64)
    background = rng.standard_normal((4, 3)).astype(np.float32)
    targets, samples, stdev, seed = np.array([2, 0, 1]), 5, 0.2, 7
    explainer = onnxplain.Explainer(_masked(), "cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5 draws: far from complete
        result = explainer.explain({"x": x, "m": m}, method="gradient_shap", target=targets,
                                   n_samples=samples, stdevs=stdev, baselines=background,
                                   seed=seed)

    def score(points):  # [..., N, 3]
        h = np.tanh((points * m).astype(np.float64) @ W_MASKED)
        return h[..., np.arange(len(x)), targets]

    expected = score(np.repeat(background[:, None], len(x), 1)).mean(axis=0)
    np.testing.assert_allclose(result.extras["expected_value"], expected, rtol=1e-5, atol=1e-6)
    seeds = row_seeds([m, x], seed)  # the rows of all inputs, by name
    u = reference_uniform(seeds, DRAWS * STREAM + np.arange(samples), 2, np.float64)
    alpha = u[..., 0].astype(np.float32)[..., None]  # [samples, N, 1]
    starts = background[np.floor(u[..., 1] * len(background)).astype(np.int64)]
    ends = x[None] + _draws(seeds, np.arange(samples), 3)[1] * np.float32(stdev)
    points = (starts + alpha * (ends - starts)).astype(np.float64)
    hidden = np.tanh((points * m) @ W_MASKED)  # [samples, N, 3]
    grad = ((1 - hidden ** 2)[..., np.arange(len(x)), targets][..., None]
            * W_MASKED[:, targets].T[None]) * m
    want = (grad * (ends - starts)).mean(axis=0)
    assert max_relative_error(result["x"], want) < 1e-4
