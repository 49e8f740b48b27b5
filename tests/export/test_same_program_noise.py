"""One graph for SmoothGrad, SmoothGrad-squared and VarGrad (issue 19, items 1-2): in-process
runs the program `export` saves, whose noise comes from export.random's counter-based
generator, so the exported model's attributions equal Explainer.explain's bit for bit, on
every run; a batch explains as its rows one by one. The generator itself is checked against
its numpy reference (the integer stream exactly) and for distribution quality."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.export import LOOP_ROWS
from onnxplain.export.noise import SEED, row_seeds
from onnxplain.export.random import (
    normal,
    reference_bits,
    reference_normal,
    reference_uniform,
    uniform,
)
from onnxplain.exporter import export_explainer
from onnxplain.graph.builder import GraphBuilder
from onnxplain.runtime.session import Session

from ..conftest import require
from .test_export import _run, assert_model_outputs

KINDS = ["smoothgrad", "smoothgrad_sq", "vargrad"]
MODELS = ["digits_cnn", "rgb_cnn"]


def _generator(dtype: int, opset: int = 17) -> onnx.ModelProto:
    """A program: seeds [S], samples [k], size [1] -> uniform and normal draws [k, S, size]."""
    graph = helper.make_graph(
        [], "draws",
        [helper.make_tensor_value_info("seeds", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("samples", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("size", TensorProto.INT64, [1])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    b = GraphBuilder(model, {})
    for make in (uniform, normal):
        drawn = make(b, "seeds", "samples", "size", dtype)
        model.graph.output.append(helper.make_tensor_value_info(drawn, dtype, None))
    return model


def _draws(seeds, samples, size: int, dtype: int = TensorProto.FLOAT, opset: int = 17):
    model = _generator(dtype, opset)
    out = Session(model, ["CPUExecutionProvider"]).run(None, {
        "seeds": np.asarray(seeds, np.int64), "samples": np.asarray(samples, np.int64),
        "size": np.array([size], np.int64)})
    return [out[o.name] for o in model.graph.output]


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_the_graph_draws_the_reference_stream(dtype):
    """The uniforms are the integer stream's top bits exactly (24 in float32, 32 in double);
    the normals agree with the float64 reference to the float type's rounding."""
    wide = np.float64 if dtype == TensorProto.DOUBLE else np.float32
    seeds, samples = [0, 7, 2**32 + 5], [0, 1, 49]
    got_uniform, got_normal = _draws(seeds, samples, 1000, dtype)
    assert got_uniform.shape == (3, 3, 1000) and got_uniform.dtype == wide
    np.testing.assert_array_equal(got_uniform, reference_uniform(seeds, samples, 1000, wide))
    np.testing.assert_allclose(got_normal, reference_normal(seeds, samples, 1000, wide),
                               rtol=1e-5 if wide == np.float32 else 1e-12, atol=1e-5)
    # The seed is taken mod 2**32: 2**32 + 5 is seed 5.
    np.testing.assert_array_equal(reference_bits([5], samples, 10)[0],
                                  reference_bits([2**32 + 5], samples, 10)[0])


def test_opset_10_draws_the_same_numbers():
    """Below opset 11 the element indices come from NonZero (no Range): the same draws."""
    new, old = _draws([3], [0, 1], 500), _draws([3], [0, 1], 500, opset=10)
    for a, b in zip(new, old, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_draws_look_normal():
    """Mean, variance and a KS test on 10^6 draws; no correlation between neighbouring
    elements, consecutive samples or consecutive seeds (|r| < 5 / sqrt(n): 5 sigma)."""
    stats = require("scipy.stats")
    z = reference_normal([0, 1], np.arange(50), 10_000)  # [sample, seed, element]
    flat = z.reshape(-1)
    assert abs(flat.mean()) < 5 / np.sqrt(flat.size)
    assert abs(flat.var() - 1) < 5 * np.sqrt(2 / flat.size)
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    pairs = {"neighbours": (z[..., :-1], z[..., 1:]), "samples": (z[:-1], z[1:]),
             "seeds": (z[:, 0], z[:, 1])}
    for what, (a, b) in pairs.items():
        r = np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1]
        assert abs(r) < 5 / np.sqrt(a.size), (what, r)
    u = reference_uniform(np.arange(100), [0], 2000).reshape(-1)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert 0 < u.min() and u.max() < 1
    # Stream by stream: the KS p-values of 200 (seed, sample) streams are uniform, no
    # stream is off (the graph's draws are these: test_the_graph_draws_the_reference_stream).
    streams = reference_normal(np.arange(10), np.arange(20), 5_000).reshape(200, -1)
    pvalues = [stats.kstest(stream, "norm").pvalue for stream in streams]
    assert stats.kstest(pvalues, "uniform").pvalue > 1e-3


def test_a_seed_is_one_of_the_2_32_streams(zoo, explainers):
    """The option's seed is the exported SEED's meaning: 0 .. 2**32 - 1, beyond it a one-line
    error in process and at export (no folding that would send one seed to another stream)."""
    explainer, feeds = explainers["digits_cnn"], _rows(zoo, "digits_cnn", 1)
    for seed in (-1, 2**32):
        with pytest.raises(InputError, match="seed"):
            explainer.explain(feeds, method="smoothgrad", n_samples=2, seed=seed)
        with pytest.raises(InputError, match="seed"):
            export_explainer(explainer.model, "smoothgrad", n_samples=2, seed=seed)
    explainer.explain(feeds, method="smoothgrad", n_samples=2, seed=2**32 - 1)


def _seeds(feeds: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """The seeds in-process feeds: one per row, from the seed and the rows' bytes."""
    return row_seeds([feeds[name] for name in sorted(feeds)], seed)


@pytest.fixture(scope="module")
def explainers(zoo):
    return {name: Explainer(str(zoo.model_path(name)), "cpu", progress=False)
            for name in MODELS}


def _rows(zoo, name: str, count: int = 3) -> dict[str, np.ndarray]:
    return {k: v[:count] for k, v in zoo.sample(name).items()}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", KINDS)
def test_exported_equals_in_process_bit_for_bit(zoo, explainers, name, kind):
    explainer, feeds = explainers[name], _rows(zoo, name)
    # Export's rows per Loop iteration (in process: the memory budget's unless given).
    options = {"n_samples": 6, "seed": 3, "noise_level": 0.2, "internal_batch_size": LOOP_ROWS}
    got = _run(export_explainer(explainer.model, kind, **options),
               {**feeds, SEED: _seeds(feeds, 3)})
    expected = explainer.explain(feeds, method=kind, **options)
    for source in explainer.sources:
        value = expected.attributions[source.input]
        np.testing.assert_array_equal(got["attribution/" + source.input], value)
        assert np.abs(value).max() > 0
    np.testing.assert_array_equal(got["target_used"], expected.target)
    assert_model_outputs(explainer, got, feeds)


@pytest.mark.parametrize("base", ["input_x_gradient", "guided_backprop", "deconvnet"])
def test_every_looping_base_is_the_same_program(zoo, explainers, base):
    explainer, feeds = explainers["digits_cnn"], _rows(zoo, "digits_cnn")
    got = _run(export_explainer(explainer.model, "vargrad", n_samples=4, base=base,
                                internal_batch_size=5), {**feeds, SEED: _seeds(feeds, 0)})
    expected = explainer.explain(feeds, method="vargrad", n_samples=4, base=base,
                                 internal_batch_size=5)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_equals_its_rows(zoo, explainers, kind):
    explainer, feeds = explainers["rgb_cnn"], _rows(zoo, "rgb_cnn", 4)
    batch = explainer.explain(feeds, method=kind, n_samples=5, seed=9)
    for row in range(4):
        single = explainer.explain({k: v[row:row + 1] for k, v in feeds.items()}, method=kind,
                                   n_samples=5, seed=9, target=int(batch.target[row]))
        for key, value in batch.attributions.items():
            np.testing.assert_allclose(single.attributions[key][0], value[row], rtol=1e-5,
                                       atol=1e-6 * float(np.abs(value).max()))


def test_the_same_seed_draws_the_same_noise_every_run(zoo, explainers):
    """Two sessions of the exported model, and a fed seed: the same numbers for the same
    seed (unlike RandomNormalLike, seeded per session), others for another; in process the
    seeds of the rows fed to the export give the export's numbers."""
    explainer, feeds = explainers["digits_cnn"], _rows(zoo, "digits_cnn")
    exported = export_explainer(explainer.model, "smoothgrad", n_samples=4, seed=5)
    first, second = (_run(exported, feeds)["attribution/image"] for _ in range(2))
    np.testing.assert_array_equal(first, second)
    fed = _run(exported, {**feeds, SEED: np.array([5], np.int64)})["attribution/image"]
    np.testing.assert_array_equal(first, fed)
    other = _run(exported, {**feeds, SEED: np.array([6], np.int64)})["attribution/image"]
    assert not np.allclose(first, other)
    for seed in (5, 6):
        in_process = explainer.explain(feeds, method="smoothgrad", n_samples=4, seed=seed,
                                       internal_batch_size=LOOP_ROWS)["image"]
        fed = _run(exported, {**feeds, SEED: _seeds(feeds, seed)})["attribution/image"]
        np.testing.assert_array_equal(in_process, fed)
        assert not np.allclose(in_process, first)


def test_a_seed_per_row_gives_rows_their_own_noise(zoo, explainers):
    """SEED [N]: row r draws as if run alone with seed r."""
    explainer, feeds = explainers["digits_cnn"], _rows(zoo, "digits_cnn", 2)
    exported = export_explainer(explainer.model, "smoothgrad", n_samples=3)
    got = _run(exported, {**feeds, SEED: np.array([4, 8], np.int64)})
    for row, seed in enumerate((4, 8)):
        alone = _run(exported, {**{k: v[row:row + 1] for k, v in feeds.items()},
                                SEED: np.array([seed], np.int64)})
        np.testing.assert_allclose(alone["attribution/image"][0],
                                   got["attribution/image"][row], rtol=1e-5, atol=1e-7)


def test_token_ids_are_refused_in_one_line(zoo):
    """Noise moves input values: token ids (attributed at their embedding) are refused as
    before, naming the methods that explain them."""
    explainer = Explainer(str(zoo.model_path("lstm_tokens_tiny")), "cpu", progress=False)
    with pytest.raises(InputError, match="smoothgrad moves the input values"):
        explainer.explain(_rows(zoo, "lstm_tokens_tiny"), method="smoothgrad", n_samples=2)


@pytest.mark.parametrize("opset", [10, 11])
@pytest.mark.parametrize("kind", ["smoothgrad", "vargrad"])
def test_old_opsets_run_the_program_in_process(opset, kind):
    """Below opset 12 too, in process runs the exported Loop program: its numbers."""
    from .test_loop import _two_input_model

    model = _two_input_model()
    model.opset_import[0].version = opset
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32),
             "m": np.ones((3, 4), np.int64)}
    options = {"n_samples": 7, "noise_level": 0.5, "base": "input_x_gradient", "seed": 12}
    got = _run(export_explainer(model, kind, **options),
               {**feeds, SEED: _seeds(feeds, 12)})["attribution/x"]
    expected = Explainer(model, "cpu").explain(feeds, method=kind, **options)["x"]
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got).max() > 0


def _sum_of_two_inputs(width: int = 5) -> onnx.ModelProto:
    """y = sum(a + b) per row: input x gradient is the input itself."""
    nodes = [helper.make_node("Add", ["a", "b"], ["ab"]),
             helper.make_node("ReduceSum", ["ab", "axes"], ["y"], keepdims=1)]
    graph = helper.make_graph(
        nodes, "sum", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", width])
                       for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_copies_carry_the_generators_draws():
    """With one sample, SmoothGrad over input x gradient of sum(a + b) is the noisy copy
    itself, so the draws read back from the exported program are the reference stream's
    (input i from sample i * STREAM: two inputs of one shape get different noise)."""
    from onnxplain.export.noise import STREAM

    rng = np.random.default_rng(2)
    feeds = {name: rng.standard_normal((2, 5)).astype(np.float32) for name in ("a", "b")}
    got = _run(export_explainer(_sum_of_two_inputs(), "smoothgrad", n_samples=1,
                                noise_level=0.5, base="input_x_gradient", seed=21), feeds)
    for index, name in enumerate(("a", "b")):
        x = feeds[name]
        sigma = 0.5 * (x.max(1, keepdims=True) - x.min(1, keepdims=True))
        draws = (got["attribution/" + name] - x) / sigma
        want = reference_normal([21], [index * STREAM], 5)[0]  # [1 seed, 5]: every row's
        np.testing.assert_allclose(draws, np.repeat(want, 2, axis=0), rtol=1e-4, atol=1e-5)


def test_a_fixed_batch_axis_draws_the_same_noise():
    """A model whose batch axis is fixed runs its noisy copies in the Loop, one sample of
    its B rows per iteration: the symbolic model's result, to float32 rounding."""
    symbolic = _sum_of_two_inputs()
    fixed = onnx.ModelProto()
    fixed.CopyFrom(symbolic)
    for value in (*fixed.graph.input, *fixed.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 2
    rng = np.random.default_rng(3)
    feeds = {name: rng.standard_normal((2, 5)).astype(np.float32) for name in ("a", "b")}
    options = {"n_samples": 5, "noise_level": 0.3, "base": "input_x_gradient", "seed": 8}
    for kind in KINDS:
        want = Explainer(symbolic, "cpu").explain(feeds, method=kind, **options)
        got = Explainer(fixed, "cpu").explain(feeds, method=kind, **options)
        for name in ("a", "b"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_an_output_seed_is_the_same_program(zoo, explainers):
    """sum(w * output) explained instead of a class: bit for bit too."""
    explainer, feeds = explainers["rgb_cnn"], _rows(zoo, "rgb_cnn")
    row = np.random.default_rng(1).standard_normal(10).astype(np.float32)
    options = {"n_samples": 4, "internal_batch_size": LOOP_ROWS}
    got = _run(export_explainer(explainer.model, "smoothgrad", output_seed=row, **options),
               {**feeds, SEED: _seeds(feeds, 0)})
    seeds = np.repeat(row[None], len(feeds["image"]), axis=0)
    expected = explainer.explain(feeds, method="smoothgrad", output_seed=seeds, **options)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])


def test_rows_draw_independent_noise_in_process():
    """In process each row's seed is a digest of the seed and its bytes: two different rows
    draw uncorrelated noise (a dataset mean gains precision with rows), identical rows the
    same noise; the draws are the generator's reference for those seeds."""
    rng = np.random.default_rng(5)
    width = 4000
    feeds = {name: rng.standard_normal((3, width)).astype(np.float32) for name in ("a", "b")}
    for values in feeds.values():
        values[2] = values[0]  # row 2 repeats row 0
    options = {"n_samples": 1, "noise_level": 0.5, "base": "input_x_gradient", "seed": 7}
    got = Explainer(_sum_of_two_inputs(width), "cpu").explain(feeds, method="smoothgrad",
                                                              **options)
    seeds = _seeds(feeds, 7)
    assert seeds[0] == seeds[2] and seeds[0] != seeds[1]
    x = feeds["a"]
    sigma = 0.5 * (x.max(1, keepdims=True) - x.min(1, keepdims=True))
    draws = (got["a"] - x) / sigma
    np.testing.assert_array_equal(draws[0], draws[2])
    r = np.corrcoef(draws[0], draws[1])[0, 1]
    assert abs(r) < 5 / np.sqrt(width), r
    want = reference_normal(seeds, [0], width)[0]  # [3 seeds, width]
    np.testing.assert_allclose(draws, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("level", [0.001, 0.1])
def test_vargrad_is_a_float64_variance_of_the_gradients(level):
    """The Loop carries its sums in double: VarGrad's E[g^2] - E[g]^2 matches a float64
    variance of the same gradients (input x gradient of sum(a + b): the noisy copies
    themselves) even where the noise is small against the values (float32 sums lost 1e-3)."""
    from onnxplain.export.noise import STREAM

    rng = np.random.default_rng(6)
    feeds = {name: (10 + rng.standard_normal((2, 300))).astype(np.float32)
             for name in ("a", "b")}
    samples = 25
    options = {"n_samples": samples, "noise_level": level, "base": "input_x_gradient",
               "seed": 4}
    got = Explainer(_sum_of_two_inputs(300), "cpu").explain(feeds, method="vargrad", **options)
    seeds = _seeds(feeds, 4)
    for index, name in enumerate(("a", "b")):
        x = feeds[name]  # its copies from the generator's reference stream, as the Loop's
        sigma = np.float32(level) * (x.max(1, keepdims=True) - x.min(1, keepdims=True))
        draws = reference_normal(seeds, index * STREAM + np.arange(samples), x.shape[1])
        copies = x[None] + draws.astype(np.float32) * sigma[None]  # [sample, row, ...]
        want = copies.astype(np.float64).var(axis=0)
        error = np.abs(got[name] - want).max() / np.abs(want).max()
        assert error < 1e-4, (name, error)
