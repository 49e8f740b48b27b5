"""Models saved with external data (weights in a data file beside the .onnx, as large
exports are): a loaded model holds no bytes of its large weights, which stay file stubs of
the user's data file (graph.weights.external_weights), read back bit for bit and given to
ONNX Runtime from there; methods give the single-file model's results exactly, an exported
explainer embeds the weights, a data file changed after load is refused, and the user's
files are never modified. A low stub threshold makes the zoo's small digits CNN count as
large (as in test_session_weights)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxplain
from onnxplain.errors import ModelError
from onnxplain.export import ATTRIBUTION
from onnxplain.exporter import export_explainer
from onnxplain.graph import weights as weights_module
from onnxplain.graph.model import Model
from onnxplain.graph.weights import file_span, tensor_value
from onnxplain.runtime import session as session_module

SMALL = 2048  # initializers of this many bytes or more are stubs here (3 of digits_cnn's 8)
STUBS = {"features.2.weight", "features.5.weight", "classifier.weight"}
# method -> options; each compared exactly against the single-file model's result.
METHODS = {"saliency": {}, "integrated_gradients": {"n_steps": 4}, "lrp": {}}


@pytest.fixture(scope="module")
def digits(zoo) -> tuple[Path, dict[str, np.ndarray]]:
    return zoo.model_path("digits_cnn"), zoo.sample("digits_cnn")


@pytest.fixture
def small_stubs(monkeypatch) -> None:
    """Every model counts as large, every initializer of SMALL bytes or more is shared."""
    monkeypatch.setattr(weights_module, "SHARE_FROM", 0)
    monkeypatch.setattr(weights_module, "SHARED_BYTES", SMALL)
    monkeypatch.setattr(session_module, "HAND_OVER_FROM", 0)


def _external_copy(source: Path, folder: Path) -> tuple[Path, Path]:
    """The model at `source` saved with every initializer in one data file beside it."""
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(onnx.load(str(source)), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    return path, folder / "model.onnx.data"


def _contents(*paths: Path) -> list[tuple[bytes, int]]:
    return [(path.read_bytes(), os.stat(path).st_mtime_ns) for path in paths]


def test_large_external_weights_stay_in_the_data_file(digits, tmp_path, small_stubs):
    path, data = _external_copy(digits[0], tmp_path)
    before = _contents(path, data)
    model = Model.load(str(path))
    inits = model.proto.graph.initializer
    assert {init.name for init in inits if file_span(init)} == STUBS
    assert all(len(init.raw_data) < SMALL for init in inits)
    assert {file_span(init).path for init in inits if file_span(init)} == {
        os.path.realpath(data)}
    from_file = {init.name: numpy_helper.to_array(init)
                 for init in onnx.load(str(path)).graph.initializer}
    assert {init.name for init in inits} == set(from_file)
    for init in inits:
        read = tensor_value(init)
        assert read.dtype == from_file[init.name].dtype and read.shape == \
            from_file[init.name].shape
        assert read.tobytes() == from_file[init.name].tobytes(), init.name
    assert _contents(path, data) == before


@pytest.mark.filterwarnings("ignore::onnxplain.methods.integrated_gradients.ConvergenceWarning")
@pytest.mark.parametrize("method", METHODS)
def test_methods_equal_the_single_file_models(method, digits, tmp_path, monkeypatch):
    """Oracle: the same method on the zoo's single-file model, held as bytes (no stubs)."""
    source, sample = digits
    image = sample["image"][:4]
    plain = onnxplain.Explainer(str(source), providers="cpu", progress=False)
    expected = plain.explain(image, method=method, target=3, **METHODS[method])
    path, data = _external_copy(source, tmp_path)
    before = _contents(path, data)
    monkeypatch.setattr(weights_module, "SHARE_FROM", 0)
    monkeypatch.setattr(weights_module, "SHARED_BYTES", SMALL)
    monkeypatch.setattr(session_module, "HAND_OVER_FROM", 0)
    arrays: list[str] = []  # weights handed to ONNX Runtime as arrays instead of by file
    make_array = session_module._array
    monkeypatch.setattr(session_module, "_array",
                        lambda init: arrays.append(init.name) or make_array(init))
    explainer = onnxplain.Explainer(str(path), providers="cpu", progress=False)
    assert {i.name for i in explainer.model.proto.graph.initializer if file_span(i)} == STUBS
    got = explainer.explain(image, method=method, target=3, **METHODS[method])
    for name, value in expected.attributions.items():
        assert np.abs(value).max() > 0, name
        np.testing.assert_array_equal(got.attributions[name], value, err_msg=name)
    assert arrays == []
    assert _contents(path, data) == before


def test_exported_explainer_embeds_the_weights(digits, tmp_path, small_stubs):
    """It runs in a fresh ONNX Runtime session with the data file moved away, and equals
    the in-process saliency."""
    source, sample = digits
    image = sample["image"][:4]
    path, data = _external_copy(source, tmp_path / "model")
    before = _contents(path, data)
    model = Model.load(str(path))
    exported = export_explainer(model, "saliency")
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL
                   for init in exported.graph.initializer)
    expected = onnxplain.Explainer(model, providers="cpu", progress=False).explain(
        image, method="saliency").attributions["image"]
    assert _contents(path, data) == before
    written = tmp_path / "explainer.onnx"
    onnx.save(exported, str(written))
    shutil.move(data, tmp_path / "elsewhere.data")
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {"image": image}), strict=True))
    got = outputs[ATTRIBUTION + "image"]
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert float(np.abs(got - expected).max()) <= 1e-5 * scale


def test_a_data_file_changed_after_load_is_refused(digits, tmp_path, small_stubs):
    """Rewritten in place with zero weights (same inode and size): reads and new sessions
    are refused in one line naming the data file, instead of explaining another model."""
    source, sample = digits
    path, data = _external_copy(source, tmp_path)
    explainer = onnxplain.Explainer(str(path), providers="cpu", progress=False)
    stub = next(i for i in explainer.model.proto.graph.initializer if file_span(i))
    stamp = os.stat(data)
    data.write_bytes(bytes(stamp.st_size))
    os.utime(data, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    for attempt in (lambda: tensor_value(stub),
                    lambda: explainer.explain(sample["image"][:2], method="saliency")):
        with pytest.raises(ModelError, match="changed after it was loaded") as raised:
            attempt()
        assert os.path.realpath(data) in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "missing.bin"])
def test_data_outside_the_folder_or_missing_is_refused(location, digits, tmp_path,
                                                       small_stubs):
    """The stub path checks locations as onnx.load does: one line, nothing read."""
    path, _ = _external_copy(digits[0], tmp_path / "model")
    (tmp_path / "outside.bin").write_bytes(bytes(1 << 20))
    model = onnx.load(str(path), load_external_data=False)
    large = next(i for i in model.graph.initializer if i.name == "features.5.weight")
    del large.external_data[:]
    large.external_data.add(key="location", value=location)
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="external") as raised:
        Model.load(str(path))
    assert "\n" not in str(raised.value)


def test_the_data_file_is_opened_once_for_all_its_stubs(digits, tmp_path, small_stubs,
                                                         monkeypatch):
    """Three stubs in one data file: onnx's checked open runs once for them, not per stub."""
    from onnx import external_data_helper

    path, _ = _external_copy(digits[0], tmp_path)
    opener, opened = external_data_helper._open_external_data_fd, []  # noqa: SLF001

    def counting(folder, location, tensor, read_only):
        opened.append(tensor)
        return opener(folder, location, tensor, read_only)

    monkeypatch.setattr(external_data_helper, "_open_external_data_fd", counting)
    model = Model.load(str(path))
    assert {init.name for init in model.proto.graph.initializer if file_span(init)} == STUBS
    assert len([name for name in opened if name in STUBS]) == 1, opened
