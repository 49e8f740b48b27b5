"""Exported Integrated Gradients and noise tunnels run their points in a Loop: the result does
not depend on how many rows an iteration takes, memory does not grow with the number of
points, and the model's nodes and weights are stored once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.export.loop import BODY_PREFIX
from onnxplain.exporter import export_explainer
from onnxplain.graph.model import Model
from onnxplain.graph.stem import affine_stem
from tests.conftest import ROOT
from tests.ops.epsilon_models import run


@pytest.fixture(scope="module")
def digits(zoo):
    from model_zoo.digits import digits_data

    return digits_data()[2][:6]


def _outputs(model, feeds):
    return dict(zip([o.name for o in model.graph.output], run(model, feeds), strict=True))


def _close(got, expected, rtol=1e-5):
    assert float(np.abs(got - expected).max()) <= rtol * float(np.abs(expected).max())


@pytest.mark.parametrize("rows", [1, 13, 100], ids=["one_point", "short_last", "all_at_once"])
def test_integrated_gradients_do_not_depend_on_the_rows_per_iteration(rows, digits_path,
                                                                       digits):
    """6 rows: 1 gives one point per iteration, 13 two (the last iteration takes the one
    left), 100 all seven at once."""
    exported = export_explainer(str(digits_path), "integrated_gradients", n_steps=7,
                                internal_batch_size=rows)
    got = _outputs(exported, {"image": digits})
    expected = Explainer(str(digits_path), "cpu").explain(
        digits, method="integrated_gradients", n_steps=7, delta_tolerance=1e9)
    _close(got["attribution/image"], expected.attributions["image"])
    np.testing.assert_allclose(got["convergence_delta"], expected.extras["convergence_delta"],
                               atol=1e-5)
    np.testing.assert_array_equal(got["logits"], _outputs(onnx.load(str(digits_path)),
                                                          {"image": digits})["logits"])


@pytest.mark.parametrize("rows", [1, 13])
def test_noise_tunnels_do_not_depend_on_the_rows_per_iteration(rows, digits_path, digits):
    """Without noise every copy is the input: SmoothGrad over input x gradient is then that
    method, VarGrad zero, whatever the split."""
    explainer = Explainer(str(digits_path), "cpu")
    plain = explainer.explain(digits, method="input_x_gradient")["image"]
    # E[g^2] - E[g]^2 in float32 cancels to within a few roundings of g^2.
    rounding = 8 * np.finfo(np.float32).eps * float(np.square(plain).max())
    for kind, expected, atol in (("smoothgrad", plain, 1e-6), ("vargrad", 0 * plain, rounding)):
        exported = export_explainer(str(digits_path), kind, n_samples=5, noise_level=0.0,
                                    base="input_x_gradient", internal_batch_size=rows)
        got = _outputs(exported, {"image": digits})["attribution/image"]
        np.testing.assert_allclose(got, expected, atol=atol)
        assert got.min() >= 0 or kind != "vargrad"


def test_model_nodes_and_weights_are_stored_once(digits_path):
    """Outside the Loop only the input's affine stem runs (on [x; x']); the rest of the
    model, with its weights, is the Loop's body."""
    original = onnx.load(str(digits_path))
    exported = export_explainer(str(digits_path), "integrated_gradients", n_steps=4)
    (loop,) = [n for n in exported.graph.node if n.op_type == "Loop"]
    body = loop.attribute[0].g
    model = Model.load(str(digits_path))
    stem = affine_stem(model, "image")
    model_nodes = {node.name for node in original.graph.node}
    outside = {node.name for node in exported.graph.node} & model_nodes
    assert outside == {node.name for node in stem.prefix.proto.graph.node}
    assert {node.name for node in body.node} & model_nodes == model_nodes - outside
    weights = {init.name for init in original.graph.initializer if init.dims
               and np.prod(init.dims) > 64}
    stored = [init.name.removeprefix(BODY_PREFIX + "/") for graph in (exported.graph, body)
              for init in graph.initializer]
    for name in weights:
        assert stored.count(name) == 1, name


def _two_input_model():
    """y = (relu(x) * m) @ w with m an int64 mask: IG attributes x, repeats m."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["r", "mf"], ["masked"]),
             helper.make_node("MatMul", ["masked", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                          helper.make_tensor_value_info("m", TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("rows", [1, 4])
def test_an_integer_input_is_repeated_at_every_point(rows):
    model = _two_input_model()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32),
             "m": rng.integers(0, 2, (3, 4)).astype(np.int64)}
    exported = export_explainer(model, "integrated_gradients", n_steps=5,
                                internal_batch_size=rows)
    got = _outputs(exported, feeds)
    expected = Explainer(model, "cpu").explain(feeds, method="integrated_gradients", n_steps=5,
                                               delta_tolerance=1e9)
    _close(got["attribution/x"], expected.attributions["x"])
    np.testing.assert_array_equal(got["y"], _outputs(model, feeds)["y"])


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_rows_per_iteration_must_not_be_negative(method, digits_path):
    with pytest.raises(InputError, match="internal_batch_size"):
        export_explainer(str(digits_path), method, internal_batch_size=-1)


_PEAK = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    import onnxruntime as ort
    sys.path.insert(0, sys.argv[1])
    import model_zoo
    from onnxplain.exporter import export_explainer
    model = export_explainer(str(model_zoo.model_path("resnet18_64")), "integrated_gradients",
                             n_steps=int(sys.argv[2])).SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    session.run(None, {"pixel_values": x})
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before": before, "after": after}))
""")


def _peak_growth_kb(steps: int) -> int:
    done = subprocess.run([sys.executable, "-c", _PEAK, str(ROOT), str(steps)],
                          capture_output=True, text=True, check=True)
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks["after"] - peaks["before"]


def test_memory_does_not_grow_with_the_number_of_points(zoo):
    """4 rows of ResNet-18 at 64x64: 128 steps folded into one batch would hold 512 rows
    (about 1 GB more than 8 steps); in the Loop an iteration holds 16 rows either way."""
    zoo.model_path("resnet18_64")
    few, many = _peak_growth_kb(8), _peak_growth_kb(128)
    assert many < few + 150_000, (few, many)


@pytest.mark.parametrize("opset", [10, 11, 13])
def test_old_opsets_export_the_looping_methods(opset):
    """Below opset 12 an iteration takes one point (no int64 Min/Max); below 11 the
    convergence delta reads the score without GatherElements, and SmoothGrad compares floats
    without Equal."""
    model = _two_input_model()
    model.opset_import[0].version = opset
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32),
             "m": rng.integers(0, 2, (3, 4)).astype(np.int64)}
    explainer = Explainer(model, "cpu")
    got = _outputs(export_explainer(model, "integrated_gradients", n_steps=5), feeds)
    expected = explainer.explain(feeds, method="integrated_gradients", n_steps=5,
                                 delta_tolerance=1e9)
    _close(got["attribution/x"], expected.attributions["x"])
    np.testing.assert_allclose(got["convergence_delta"], expected.extras["convergence_delta"],
                               atol=1e-5)
    silent = export_explainer(model, "smoothgrad", n_samples=3, noise_level=0.0,
                              base="input_x_gradient")
    np.testing.assert_allclose(_outputs(silent, feeds)["attribution/x"],
                               explainer.explain(feeds, method="input_x_gradient")["x"],
                               atol=1e-6)


def test_opset_9_is_refused_with_the_reason():
    model = _two_input_model()
    model.opset_import[0].version = 9
    with pytest.raises(InputError, match="need opset 10 or newer"):
        export_explainer(model, "integrated_gradients")


def test_every_output_leaves_the_loop_unchanged(digits_path, zoo):
    """A local head adds int64 and float outputs and a model-local function: the body runs
    the function, and every output equals the model's own, bit for bit."""
    from model_zoo.digits import digits_data
    from onnxplain.local.head import fit_local_head

    x, y, x_test, _ = digits_data()
    head = fit_local_head(str(digits_path), "/features/features.6/Relu_output_0", x, y,
                          per_class=5).model
    feeds = {"image": x_test[:3]}
    exported = export_explainer(head, "integrated_gradients", n_steps=4)
    got, original = _outputs(exported, feeds), _outputs(head, feeds)
    for name, value in original.items():
        np.testing.assert_array_equal(got[name], value)
    expected = Explainer(head, "cpu").explain(feeds["image"], method="integrated_gradients",
                                              n_steps=4, delta_tolerance=1e9)
    _close(got["attribution/image"], expected.attributions["image"])
