"""Exported explainers run from JavaScript: clients/node/run.mjs (onnxruntime-node, CPU) gives
what Python's ONNX Runtime gives on the same exported model, and what the in-process method
gives. Needs node and npm: missing ones fail in CI and skip elsewhere."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.export import ATTRIBUTION, EXPORTS, TARGET, TARGET_USED
from onnxplain.exporter import export_explainer

from ..conftest import in_ci
from .test_standalone import (
    METHODS,
    RTOL,
    assert_matches_method,
    assert_standard,
    digits_case,
    expected_outputs,
    relative_error,
)

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "node"
NPM_CI_TIMEOUT_S = 1200


def _unavailable(message: str):
    if in_ci():
        pytest.fail(message + ": CI must install Node.js 20 and npm", pytrace=False)
    pytest.skip(message)


@contextmanager
def _locked(path: Path):
    """One `npm ci` at a time in the client folder, across concurrent test sessions."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _installed_version() -> str | None:
    manifest = CLIENT / "node_modules" / "onnxruntime-node" / "package.json"
    try:
        return json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with clients/node's dependencies installed (`npm ci` once, when
    node_modules is missing or holds another onnxruntime-node than package.json pins)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed to test the JavaScript client")
    pinned = json.loads((CLIENT / "package.json").read_text())["dependencies"]["onnxruntime-node"]
    with _locked(CLIENT / ".npm-ci.lock"):
        if _installed_version() != pinned:
            # The documented switch (also in clients/node/.npmrc) that stops onnxruntime-node's
            # postinstall from downloading the CUDA provider: the CPU binaries are in the package.
            env = dict(os.environ, ONNXRUNTIME_NODE_INSTALL="skip")
            try:
                done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT,
                                      env=env, capture_output=True, text=True,
                                      timeout=NPM_CI_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _unavailable(f"npm ci in {CLIENT} took over {NPM_CI_TIMEOUT_S} s")
            if done.returncode != 0:
                _unavailable(f"npm ci in {CLIENT} failed:\n{done.stderr[-4000:]}")
            assert _installed_version() == pinned
    return node


# ---- the client's tensor file format ----------------------------------------------------------

def encode(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"type": str(array.dtype), "dims": list(array.shape),
            "data": base64.b64encode(little.tobytes()).decode("ascii")}


def decode(spec: dict) -> np.ndarray:
    if spec["type"] == "string":
        return np.array(spec["data"], dtype=object).reshape(spec["dims"])
    dtype = np.dtype(spec["type"]).newbyteorder("<")
    data = np.frombuffer(base64.b64decode(spec["data"]), dtype=dtype)
    return data.astype(dtype.newbyteorder("="), copy=False).reshape(spec["dims"])


def node_process(node: str, model_file: Path, feeds: dict[str, np.ndarray], tmp: Path,
                 label: str) -> tuple[subprocess.CompletedProcess, Path]:
    inputs, outputs = tmp / f"{label}_inputs.json", tmp / f"{label}_outputs.json"
    inputs.write_text(json.dumps({name: encode(value) for name, value in feeds.items()}))
    done = subprocess.run([node, str(CLIENT / "run.mjs"), str(model_file), str(inputs),
                           str(outputs)], cwd=tmp, capture_output=True, text=True, timeout=300)
    return done, outputs


def run_node(node: str, model_file: Path, feeds: dict[str, np.ndarray], tmp: Path,
             label: str) -> dict[str, np.ndarray]:
    done, outputs = node_process(node, model_file, feeds, tmp, label)
    assert done.returncode == 0, done.stderr[-4000:]
    return {name: decode(spec) for name, spec in json.loads(outputs.read_text()).items()}


def run_python(model_file: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def assert_same_run(from_node: dict, from_python: dict) -> None:
    assert list(from_node) == list(from_python)
    for name, expected in from_python.items():
        got = from_node[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        if np.issubdtype(expected.dtype, np.floating):
            error = relative_error(got, expected)
            assert error < RTOL, f"'{name}': node vs Python relative error {error:.3g}"
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


def export_to(tmp: Path, path: Path, method: str, options: dict,
              target_input: str = "optional") -> Path:
    exported = export_explainer(path, method, target_input=target_input, **options)
    assert_standard(exported, custom_allowed=True)
    model_file = tmp / f"{method}.onnx"
    onnx.save(exported, model_file)
    return model_file


# ---- tests ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(digits_path):
    return digits_case(Path(digits_path))


def test_client_round_trips_tensors(node, tmp_path):
    """Every supported dtype survives the file format both ways (the model is an Identity)."""
    arrays = {"f32": np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3),
              "f64": np.array([[1e-300, -2.5]]), "i64": np.array([-(2**62), 7, -1]),
              "i32": np.array([[-5], [9]], np.int32), "u8": np.arange(4, dtype=np.uint8),
              "b": np.array([True, False, True])}
    types = {"f32": onnx.TensorProto.FLOAT, "f64": onnx.TensorProto.DOUBLE,
             "i64": onnx.TensorProto.INT64, "i32": onnx.TensorProto.INT32,
             "u8": onnx.TensorProto.UINT8, "b": onnx.TensorProto.BOOL}
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], [name + "_out"]) for name in arrays], "identity",
        [helper.make_tensor_value_info(name, types[name], None) for name in arrays],
        [helper.make_tensor_value_info(name + "_out", types[name], None) for name in arrays])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "identity.onnx")
    got = run_node(node, tmp_path / "identity.onnx", arrays, tmp_path, "identity")
    for name, array in arrays.items():
        assert got[name + "_out"].dtype == array.dtype
        np.testing.assert_array_equal(got[name + "_out"], array)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["predicted", "requested"])
def test_node_client_matches_python_and_method(node, method, case, digits, tmp_path):
    """The predicted class through the optional `target` (its default); a requested class
    through a required one (onnxruntime-node cannot feed an input that has a default)."""
    options = METHODS[method]
    target = digits["requested"] if case == "requested" else None
    model_file = export_to(tmp_path, digits["path"], method, options,
                           "optional" if target is None else "required")
    feeds = dict(digits["feeds"], **({} if target is None else {TARGET: target}))
    from_node = run_node(node, model_file, feeds, tmp_path, case)
    assert set(from_node) == expected_outputs(digits, method)
    assert_same_run(from_node, run_python(model_file, feeds))
    assert_matches_method(from_node, digits, method, options, target, exact=False)


def test_node_client_refuses_to_feed_an_input_with_a_default(node, digits, tmp_path):
    """onnxruntime-node lists no input that has an initializer and silently drops such a
    feed (the predicted class would be explained): run.mjs refuses it instead."""
    model_file = export_to(tmp_path, digits["path"], "saliency", {})
    feeds = dict(digits["feeds"], **{TARGET: digits["requested"]})
    done, _ = node_process(node, model_file, feeds, tmp_path, "refused")
    assert done.returncode != 0 and f"cannot feed '{TARGET}'" in done.stderr, done.stderr


def token_batch(explainer: onnxplain.Explainer, rows: int, length: int) -> dict:
    import model_zoo

    return model_zoo.token_batch([spec.name for spec in explainer.model.inputs], rows, length)


def test_node_client_runs_rollout(node, zoo, tmp_path):
    if "rollout" not in EXPORTS:
        pytest.skip("rollout is not exportable yet")
    path = Path(zoo.model_path("sentiment_bert"))
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    feeds = token_batch(explainer, rows=4, length=16)
    model_file = export_to(tmp_path, path, "rollout", {})
    from_node = run_node(node, model_file, feeds, tmp_path, "rollout")
    from_python = run_python(model_file, feeds)
    assert_same_run(from_node, from_python)

    original = run_python(path, feeds)
    for name, value in original.items():
        error = relative_error(from_node[name], value)
        assert error < RTOL, f"original output '{name}': relative error {error:.3g}"
    predicted = original[explainer.output].argmax(axis=1)
    np.testing.assert_array_equal(from_node[TARGET_USED], predicted)
    reference = explainer.explain(feeds, method="rollout")
    compared = [name for name in reference.attributions if ATTRIBUTION + name in from_node]
    assert compared, f"no attribution output among {sorted(from_node)}"
    for name in compared:
        error = relative_error(from_node[ATTRIBUTION + name], reference.attributions[name])
        assert error < RTOL, f"rollout {ATTRIBUTION + name}: relative error {error:.3g}"


def test_node_client_runs_layer_integrated_gradients(node, zoo, tmp_path):
    """Text IG's Loop (a body holding the model, an If keeping the clean outputs, loop-carried
    values whose shape changes after the first iteration) runs in onnxruntime-node too."""
    path = Path(zoo.model_path("sentiment_bert"))
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    feeds = token_batch(explainer, rows=3, length=16)
    options = {"n_steps": 8, "internal_batch_size": 4}
    model_file = export_to(tmp_path, path, "layer_integrated_gradients", options)
    from_node = run_node(node, model_file, feeds, tmp_path, "lig")
    assert_same_run(from_node, run_python(model_file, feeds))
    reference = explainer.explain(feeds, method="layer_integrated_gradients", n_steps=8,
                                  delta_tolerance=1e9)
    error = relative_error(from_node[ATTRIBUTION + "input_ids"],
                           reference.attributions["input_ids"])
    assert error < RTOL, f"layer integrated gradients: relative error {error:.3g}"


def test_node_client_runs_cam(node, digits, tmp_path):
    """CAM, exportable since it is one graph: the map and the layer map from onnxruntime-node
    are Python's, and the in-process method's."""
    model_file = export_to(tmp_path, digits["path"], "cam", {})
    from_node = run_node(node, model_file, digits["feeds"], tmp_path, "cam")
    assert {"attribution/image", "layer_map"} <= set(from_node)
    assert_same_run(from_node, run_python(model_file, digits["feeds"]))
    assert_matches_method(from_node, digits, "cam", {}, None, exact=False)
    reference = digits["explainer"].explain(digits["feeds"], method="cam")
    error = relative_error(from_node["layer_map"], reference.tensors[reference.extras["layer"]])
    assert error < RTOL, f"cam layer_map: relative error {error:.3g}"


def test_node_client_runs_rise(node, digits, tmp_path):
    """RISE, a perturbation method exported as one graph (its masks made in a Loop from the
    seed's draws): onnxruntime-node gives Python's outputs, and the in-process method's."""
    options = {"n_masks": 64, "grid": 4, "seed": 5}
    model_file = export_to(tmp_path, digits["path"], "rise", options)
    from_node = run_node(node, model_file, digits["feeds"], tmp_path, "rise")
    assert {"attribution/image", TARGET_USED} <= set(from_node)
    assert_same_run(from_node, run_python(model_file, digits["feeds"]))
    np.testing.assert_array_equal(from_node[TARGET_USED], digits["predicted"])
    for name, value in digits["original"].items():
        error = relative_error(from_node[name], value)
        assert error < RTOL, f"original output '{name}': relative error {error:.3g}"
    reference = digits["explainer"].explain(digits["feeds"], method="rise", **options)
    assert np.abs(reference["image"]).max() > 0
    error = relative_error(from_node[ATTRIBUTION + "image"], reference["image"])
    assert error < RTOL, f"rise: relative error {error:.3g}"
