"""Loading: every kind of bad file gets a one-line ModelError; odd but valid models load."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import ModelError
from onnxplain.graph.load import load_model

from .tiny_models import mlp


def _tiny(opset: int = 17, ir: int | None = None) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2) / 5, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir is not None:
        model.ir_version = ir
    return model


def _expected_grad(x: np.ndarray, target: int) -> np.ndarray:
    w = np.arange(6, dtype=np.float64).reshape(3, 2) / 5
    h = x.astype(np.float64) @ w
    return (1 - np.tanh(h[:, target]) ** 2)[:, None] * w[:, target][None, :]


@pytest.mark.parametrize("content, fragment", [
    (b"", "no graph"),
    (b"this is not a protobuf at all \xff\xfe", "not an ONNX model"),
    (b"\x08\x07\x12\x05hello\x1a", "not an ONNX model"),
])
def test_garbage_files_raise_model_error(tmp_path, content, fragment):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=fragment) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_truncated_model_raises_model_error(tmp_path):
    data = _tiny().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not an ONNX model|not a valid ONNX model"):
        load_model(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path)


def test_too_old_opset_is_refused():
    with pytest.raises(ModelError, match="opset 8"):
        load_model(_tiny(opset=8).SerializeToString())


def test_new_ir_version_is_lowered_for_onnxruntime():
    # onnx 1.23 stamps IR 14, which onnxruntime 1.31 refuses.
    explainer = onnxplain.Explainer(_tiny(ir=14), providers="cpu")
    x = np.array([[0.1, 0.2, 0.3]], dtype=np.float32)
    result = explainer.explain(x, target=1, abs=False)
    np.testing.assert_allclose(result["x"], _expected_grad(x, 1), rtol=1e-5)


@pytest.mark.parametrize("ir", [3, 14])
def test_inspect_reports_the_files_ir_version(tmp_path, ir):
    """The file's IR, not the normalised copy's (raised to 4 for IR 3 files, lowered for 14)."""
    from click.testing import CliRunner

    from onnxplain_cli.main import main

    path, model = tmp_path / "m.onnx", _tiny(opset=9, ir=ir)
    if ir < 4:  # IR 3 lists its weights as inputs
        model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2]))
    onnx.save(model, path)
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert json.loads(result.stdout)["ir_version"] == ir
    assert onnxplain.Explainer(str(path), "cpu").model.proto.ir_version != ir
    text = CliRunner().invoke(main, ["inspect", str(path)]).stdout
    assert text.splitlines()[0].split()[2:4] == ["IR", str(ir)]


def test_initializers_listed_as_inputs_are_constants():
    model = _tiny(opset=9, ir=3)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2]))
    explainer = onnxplain.Explainer(model, providers="cpu")
    assert [spec.name for spec in explainer.model.inputs] == ["x"]
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    result = explainer.explain(x, target=0, abs=False)
    np.testing.assert_allclose(result["x"], _expected_grad(x, 0), rtol=1e-5)


def test_external_data_model(tmp_path):
    path = tmp_path / "external.onnx"
    onnx.save(_tiny(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="external.data", size_threshold=0)
    assert (tmp_path / "external.data").exists()
    x = np.array([[0.5, -0.2, 0.1]], dtype=np.float32)
    result = onnxplain.Explainer(path, providers="cpu").explain(x, target=0, abs=False)
    np.testing.assert_allclose(result["x"], _expected_grad(x, 0), rtol=1e-5)


def test_missing_external_data_is_a_model_error(tmp_path):
    path = tmp_path / "external.onnx"
    onnx.save(_tiny(), path, save_as_external_data=True, location="gone.data",
              size_threshold=0)
    (tmp_path / "gone.data").unlink()
    with pytest.raises(ModelError, match="external data"):
        load_model(path)


def test_model_local_functions_are_inlined_and_differentiated():
    # y = tanh(x @ w) computed inside a local function of a custom domain.
    body = [helper.make_node("MatMul", ["a", "b"], ["h"]), helper.make_node("Tanh", ["h"], ["o"])]
    function = helper.make_function("custom", "Dense", ["a", "b"], ["o"], body,
                                    [helper.make_opsetid("", 17)])
    tiny = _tiny()
    del tiny.graph.node[:]
    tiny.graph.node.append(helper.make_node("Dense", ["x", "w"], ["y"], domain="custom"))
    model = helper.make_model(tiny.graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    x = np.array([[0.3, -0.1, 0.7], [0.2, 0.2, 0.2]], dtype=np.float32)
    result = onnxplain.Explainer(model, providers="cpu").explain(x, target=1, abs=False)
    np.testing.assert_allclose(result["x"], _expected_grad(x, 1), rtol=1e-5)


def test_users_model_and_file_are_never_modified(tmp_path):
    model = _tiny()
    before = model.SerializeToString()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    x = np.ones((2, 3), dtype=np.float32)
    onnxplain.Explainer(model, providers="cpu").explain(x)
    onnxplain.Explainer(path, providers="cpu").explain(x)
    assert model.SerializeToString() == before
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("features", [4, 100])  # a small initializer and a large weight
def test_weights_shorter_than_their_shape_are_refused(features):
    """The checker sees the model without its weights' bytes: their sizes are checked apart."""
    model = mlp(features=features)
    weight = model.graph.initializer[0]
    data = numpy_helper.to_array(weight).tobytes()
    weight.ClearField("float_data")
    weight.raw_data = data[:-8]
    with pytest.raises(ModelError, match="w1"):
        load_model(model)


def _conv(**attrs) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], **attrs}
    attrs = {name: value for name, value in attrs.items() if value is not None}
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", **attrs),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 5, 5])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _with(model: onnx.ModelProto, change) -> onnx.ModelProto:
    change(model)
    return model


def _dim(model: onnx.ModelProto, value: int) -> None:
    _dim_of(model.graph.input[0], 1, value)


def _dim_of(value_info: onnx.ValueInfoProto, axis: int, value: int) -> None:
    value_info.type.tensor_type.shape.dim[axis].dim_value = value


def _recursive(model: onnx.ModelProto) -> None:
    body = helper.make_node("Again", ["a"], ["b"], domain="local")
    model.functions.append(helper.make_function("local", "Again", ["a"], ["b"], [body],
                                                [helper.make_opsetid("", 17)]))
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node[1].op_type, model.graph.node[1].domain = "Again", "local"


def _float8_weight(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].data_type = TensorProto.FLOAT8E4M3FN  # 4-byte floats kept


def _rank0(model: onnx.ModelProto) -> None:
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, []))


# What the rules and the loader rely on, broken one thing at a time (the issue 18 fuzzer's
# classes): each is one ModelError naming the tensor, node or attribute.
@pytest.mark.parametrize("model, fragment", [
    (_with(_conv(), lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 999)),
     "tensor 'x' has element type 999"),
    (_with(_conv(), lambda m: setattr(m.graph.output[0].type.tensor_type, "elem_type", 0)),
     "tensor 'y' has element type 0"),
    (_with(_conv(), lambda m: _dim(m, 2**40)), f"declares dim 1 as {2**40}"),
    (_with(_conv(), lambda m: m.graph.initializer[0].dims.__setitem__(0, -2)),
     "initializer 'w' declares dims [-2, 1, 3, 3]"),
    (_conv(strides=[0, 1]), "node 'conv' (Conv) has strides=[0, 1]"),
    (_conv(kernel_shape=[10**6, 3]), "has kernel_shape=[1000000, 3]"),
    (_conv(pads=[-1, 0, 0, 0]), "has pads=[-1, 0, 0, 0]"),
    (_conv(strides=[10**6, 1], auto_pad="SAME_UPPER", pads=None), "has strides=[1000000, 1]"),
    (_conv(kernel_shape=[9, 3], pads=[1, 1, 1, 1]), "has kernel_shape=[9, 3], wider than its "
                                                    "input 'x' (size 5 on spatial axis 0"),
    (_with(_conv(), lambda m: _dim_of(m.graph.output[0], 2, 4)),
     "output 'y' is declared with shape ['?', 2, 4, 5], but the graph makes ['?', 2, 5, 5]"),
    (_conv(group=0), "has group=0"),
    (_with(_conv(), _float8_weight), "initializer 'w' of type FLOAT8E4M3FN holds 72 bytes"),
    (_with(_conv(), _recursive), "function 'Again' calls itself (Again -> Again)"),
    (_with(_conv(), _rank0), "declares 'c' of rank 0, but it is made by node 'conv' (Conv) "
                             "with rank 4"),
], ids=["dtype-999", "dtype-0", "giant-dim", "negative-weight-dim", "stride-0", "huge-kernel",
        "negative-pad", "huge-stride-same", "kernel-wider-than-input", "output-shape", "group-0",
        "float8-data", "recursive-function", "rank0-value-info"])
def test_what_the_rules_rely_on_is_validated_at_load(model, fragment):
    with pytest.raises(ModelError) as err:
        onnxplain.Explainer(model)
    assert fragment in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_valid_declarations_still_load():
    """Rank-0 value_info on a real scalar, and a dim declared -1 (some converters' unknown),
    are not refused."""
    model = _tiny()
    scale = numpy_helper.from_array(np.array(2.0, np.float32), "s")
    model.graph.initializer.append(scale)
    model.graph.node[1].output[0] = "t"
    model.graph.node.append(helper.make_node("Mul", ["t", "s"], ["y"]))
    model.graph.value_info.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    x = np.ones((2, 3), np.float32)
    grad = onnxplain.Explainer(model).explain(x, target=1).attributions["x"]
    np.testing.assert_allclose(grad, 2 * _expected_grad(x, 1), rtol=1e-5)
