"""The noise tunnels over DeepLIFT, LRP and Integrated Gradients (issue 19): the noise Loop's
body is the base method's own program (export.noise_program), so in process runs the
program `export` saves. Oracle: each noisy copy drawn in numpy from the generator's
reference stream and explained by the base method alone, for the clean row's class, then
averaged (or its variance taken) in float64."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.export import LOOP_ROWS
from onnxplain.export.loop import ROWS_PER_ITERATION
from onnxplain.export.noise import SEED, STREAM, row_seeds
from onnxplain.export.random import reference_normal
from onnxplain.exporter import export_explainer

from .test_export import _run, assert_model_outputs
from .test_fixed_batch_loop import _exported, dense

KINDS = ["smoothgrad", "smoothgrad_sq", "vargrad"]
BASES = ["deeplift", "lrp", "integrated_gradients"]
QUIET = {"deeplift": {"delta_tolerance": 1e9}, "integrated_gradients": {"delta_tolerance": 1e9},
         "lrp": {}}


@pytest.fixture(scope="module")
def explainer(zoo):
    return Explainer(str(zoo.model_path("digits_cnn")), "cpu", progress=False)


@pytest.fixture(scope="module")
def feeds(zoo):
    return {k: v[:3] for k, v in zoo.sample("digits_cnn").items()}


def _seeds(feeds: dict[str, np.ndarray], seed: int) -> np.ndarray:
    return row_seeds([feeds[name] for name in sorted(feeds)], seed)


def _reference(explainer, feeds, kind: str, base: str, samples: int, level: float,
               seed: int) -> np.ndarray:
    """Each copy x + sigma z (z: the generator's reference draws of the row's seed, sigma:
    level times the row's range) explained by `base` alone for the clean class."""
    x = feeds["image"]
    target = explainer.explain(feeds, method="saliency").target
    spread = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    sigma = np.float32(level) * np.where(spread == 0, spread + 1, spread)
    draws = reference_normal(_seeds(feeds, seed), np.arange(samples), x[0].size)
    values = []
    for sample in range(samples):
        noise = draws[sample].astype(np.float32).reshape(x.shape)
        noisy = x + noise * sigma[:, None, None, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values.append(explainer.explain({"image": noisy}, method=base, target=target,
                                            **QUIET[base])["image"].astype(np.float64))
    stack = np.stack(values)
    mean, square = stack.mean(axis=0), np.square(stack).mean(axis=0)
    return {"smoothgrad": mean, "smoothgrad_sq": square,
            "vargrad": np.maximum(square - np.square(mean), 0)}[kind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("base", BASES)
def test_the_mean_of_the_base_over_the_reference_copies(explainer, feeds, kind, base):
    got = explainer.explain(feeds, method=kind, base=base, n_samples=4, noise_level=0.2,
                            seed=7)
    expected = _reference(explainer, feeds, kind, base, 4, 0.2, 7)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got["image"], expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(got.target, explainer.explain(feeds, method="saliency").target)


@pytest.mark.parametrize("base", BASES)
def test_exported_equals_in_process_bit_for_bit(explainer, feeds, base):
    options = {"n_samples": 5, "seed": 3, "noise_level": 0.2, "base": base,
               "internal_batch_size": LOOP_ROWS}
    exported = export_explainer(explainer.model, "vargrad", **options)
    props = {p.key: p.value for p in exported.metadata_props}
    assert '"base_options"' in props["onnxplain.options"]
    got = _run(exported, {**feeds, SEED: _seeds(feeds, 3)})
    expected = explainer.explain(feeds, method="vargrad", **options)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])
    np.testing.assert_array_equal(got["target_used"], expected.target)
    assert_model_outputs(explainer, got, feeds)


@pytest.mark.parametrize("base", BASES)
def test_a_batch_equals_its_rows_for_any_rows_per_iteration(explainer, feeds, base):
    batch = explainer.explain(feeds, method="smoothgrad", base=base, n_samples=5, seed=1,
                              internal_batch_size=4)
    for row in range(3):
        single = explainer.explain({k: v[row:row + 1] for k, v in feeds.items()},
                                   method="smoothgrad", base=base, n_samples=5, seed=1,
                                   target=int(batch.target[row]), internal_batch_size=1)
        np.testing.assert_allclose(single["image"][0], batch["image"][row], rtol=1e-5,
                                   atol=1e-6 * float(np.abs(batch["image"]).max()))


def test_an_output_seed_is_the_objective_of_every_copy(explainer, feeds):
    """Weights on the output (class 2 minus class 5): the copies explain them, as the base
    method explains them on each copy alone."""
    weights = np.zeros((3, 10), np.float32)
    weights[:, [2, 5]] = [1, -1]
    got = explainer.explain(feeds, method="smoothgrad", base="lrp", n_samples=3, seed=4,
                            output_seed=weights)
    x, seeds = feeds["image"], _seeds(feeds, 4)
    spread = x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))
    draws = reference_normal(seeds, np.arange(3), x[0].size)
    alone = [explainer.explain({"image": x + draws[s].astype(np.float32).reshape(x.shape)
                                * (np.float32(0.15) * spread)[:, None, None, None]},
                               method="lrp", output_seed=weights)["image"] for s in range(3)]
    expected = np.mean(np.stack(alone).astype(np.float64), axis=0)
    np.testing.assert_allclose(got["image"], expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("base", ["lrp", "integrated_gradients"])
@pytest.mark.parametrize("size, rows", [(1, 2), (2, 3)])
def test_a_fixed_batch_runs_one_copy_of_its_rows_per_iteration(base, size, rows):
    """The model bakes B into a Reshape: every run inside the Loops sees B rows. In process
    equals the symbolic model, and the export run on B-row chunks equals in process."""
    x = np.random.default_rng(5).standard_normal((rows, 6)).astype(np.float32)
    options = {"n_samples": 3, "seed": 2, "base": base}

    def explain(model):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fixed batch's notice
            return Explainer(model, "cpu", progress=False).explain(
                {"x": x}, "smoothgrad", target=[1] * rows, **options)

    fixed, symbolic = explain(dense(size, True)), explain(dense(None, True))
    assert np.abs(fixed["x"]).max() > 0
    np.testing.assert_allclose(fixed["x"], symbolic["x"], rtol=1e-5, atol=1e-7)
    got = _exported(dense(size, True), "smoothgrad", options, {"x": x},
                    {SEED: row_seeds([x], 2)})
    np.testing.assert_array_equal(got["attribution/x"], fixed["x"])
    np.testing.assert_array_equal(got["logits"], fixed.outputs["logits"])


def test_deeplift_on_a_fixed_batch_is_refused_in_one_line():
    x = np.zeros((2, 6), np.float32)
    with pytest.raises(InputError, match="deeplift runs each row with its reference") as err:
        Explainer(dense(2, True), "cpu", progress=False).explain(
            {"x": x}, "smoothgrad", base="deeplift", n_samples=2)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="deeplift runs each row with its reference"):
        export_explainer(dense(2, True), "smoothgrad", base="deeplift", n_samples=2)


def test_the_exported_rows_per_iteration_is_the_one_asked_for(explainer, feeds):
    """Integrated Gradients' own Loop and the noise Loop read one rows_per_iteration input,
    whose saved default is the export's internal_batch_size (not the base's)."""
    options = {"n_samples": 3, "seed": 2, "base": "integrated_gradients",
               "internal_batch_size": 4}
    exported = export_explainer(explainer.model, "smoothgrad", **options)
    defaults = {init.name: init for init in exported.graph.initializer}
    assert int(numpy_helper.to_array(defaults[ROWS_PER_ITERATION])) == 4
    props = {p.key: p.value for p in exported.metadata_props}
    assert props["onnxplain." + ROWS_PER_ITERATION] == "4"
    got = _run(exported, {**feeds, SEED: _seeds(feeds, 2)})
    expected = explainer.explain(feeds, method="smoothgrad", **options)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])


def _two_inputs(opset: int) -> onnx.ModelProto:
    """y = relu(a @ w1 + b @ w2) @ w3: two float inputs, each with its own noise."""
    rng = np.random.default_rng(3)
    weights = {"w1": (4, 5), "w2": (3, 5), "w3": (5, 2)}
    nodes = [helper.make_node("MatMul", ["a", "w1"], ["p"]),
             helper.make_node("MatMul", ["b", "w2"], ["q"]),
             helper.make_node("Add", ["p", "q"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("MatMul", ["r", "w3"], ["y"])]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4]),
                       helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
         for name, shape in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


@pytest.mark.parametrize("opset", [10, 17])
@pytest.mark.parametrize("base", BASES)
def test_two_inputs_draw_their_own_noise_at_old_and_new_opsets(base, opset):
    """Input i's copies draw samples i * STREAM + s: the mean of the base over the reference
    copies of both inputs; the export equals in process bit for bit."""
    model = _two_inputs(opset)
    rng = np.random.default_rng(8)
    feeds = {"a": rng.standard_normal((3, 4)).astype(np.float32),
             "b": rng.standard_normal((3, 3)).astype(np.float32)}
    explainer = Explainer(model, "cpu", progress=False)
    options = {"n_samples": 3, "seed": 5, "noise_level": 0.3, "base": base,
               "internal_batch_size": LOOP_ROWS}
    got = explainer.explain(feeds, method="smoothgrad", **options)
    target, seeds = got.target, _seeds(feeds, 5)
    noisy = {}
    for index, name in enumerate(("a", "b")):
        x = feeds[name]
        sigma = np.float32(0.3) * (x.max(1, keepdims=True) - x.min(1, keepdims=True))
        draws = reference_normal(seeds, index * STREAM + np.arange(3), x.shape[1])
        noisy[name] = x[None] + draws.astype(np.float32) * sigma[None]  # [sample, row, ...]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = [explainer.explain({name: noisy[name][s] for name in feeds}, method=base,
                                   target=target, **QUIET[base]) for s in range(3)]
    for name in feeds:
        expected = np.mean([a[name].astype(np.float64) for a in alone], axis=0)
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(got[name], expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())
    exported = _run(export_explainer(model, "smoothgrad", **options), {**feeds, SEED: seeds})
    for name in feeds:
        np.testing.assert_array_equal(exported["attribution/" + name], got[name])

