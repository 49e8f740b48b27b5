"""Load an ONNX model from any source and bring it to the canonical form the passes expect."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx.inliner
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from ..errors import ModelError
from .attention_op import decompose_attention_ops, has_attention_ops
from .canonical import canonicalise, needs_canonicalising
from .canonical.ms_common import runtime_ops_aside
from .canonical.newer_ops import lower_to_runtime_opset
from .dims import name_unknown_dims
from .op_kinds import ONNXPLAIN_DOMAIN
from .shapes import ai_onnx_opset, without_weights
from .validate import validate
from .weights import (
    external_weights,
    payload_bytes,  # noqa: F401 - re-exported
    read_light,
    standalone,
)

OLDEST_OPSET = 9
NEWEST_OPSET = 28  # onnx 1.23's; models past ONNX Runtime's newest are restamped on load
# onnxruntime 1.31 refuses IR versions above 13, while onnx 1.23 stamps 14 on new models.
NEWEST_RUNTIME_IR = 10


def load_model(source: str | os.PathLike | bytes | onnx.ModelProto
               ) -> tuple[onnx.ModelProto, str | None]:
    """Return a normalised copy of the model and the path it came from (None for in-memory models).

    The user's file and ModelProto are never modified. The copy holds every weight's bytes
    (Model.load keeps large ones in the user's files instead).
    """
    model, path = read_model(source)
    return standalone(normalize(model)), path


def read_model(source: str | os.PathLike | bytes | onnx.ModelProto
               ) -> tuple[onnx.ModelProto, str | None]:
    """The model as given (a copy), checked, and the path it came from; the large
    initializers of a file are file stubs of it, or of its external data file (graph.weights)."""
    if isinstance(source, onnx.ModelProto):
        model, path = _copy(source), None
    elif isinstance(source, (bytes, bytearray)):
        model, path = _parse(bytes(source), "the given bytes"), None
    elif isinstance(source, (str, os.PathLike)):
        path = str(source)
        model = _read(path)
    else:
        raise ModelError(f"expected a path, bytes or onnx.ModelProto, got {type(source).__name__}")
    _check(model, path)
    return model, path


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _read(path: str) -> onnx.ModelProto:
    file = Path(path)
    if not file.exists():
        raise ModelError(f"model file not found: {path}")
    if file.is_dir():
        raise ModelError(f"model path is a directory, not an ONNX file: {path}")
    try:
        # Large weights stay in the file, as file stubs (graph.weights): those it holds
        # itself are never read (read_light), those of its external data file likewise.
        model = (_binary(path) and read_light(path)) or onnx.load(path, load_external_data=False)
        external_weights(model, os.path.dirname(os.path.abspath(path)))
        return model
    except DecodeError as err:
        raise ModelError(f"{path} is not an ONNX model (truncated or not a protobuf: {err})"
                         ) from None
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        if isinstance(err, FileNotFoundError) or any(
                text in str(err) for text in ("should be stored in", "points outside")):
            raise ModelError(f"external data of {path} is missing or unreadable: "
                             f"{_first_line(err)}") from None
        raise ModelError(f"cannot read {path}: {_first_line(err)}") from None


def _binary(path: str) -> bool:
    """Whether onnx reads the file at `path` as binary protobuf (not a text format)."""
    found = onnx.serialization.registry.get_format_from_file_extension(Path(path).suffix)
    return found in (None, "protobuf")


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    try:
        return onnx.load_model_from_string(data)
    except DecodeError as err:
        raise ModelError(f"{where} are not an ONNX model (truncated or not a protobuf: {err})"
                         ) from None


def _check(model: onnx.ModelProto, path: str | None) -> None:
    where = path or "the model"
    if not model.HasField("graph") or not model.graph.output:
        raise ModelError(f"{where} is not an ONNX model (no graph or no graph outputs)")
    version = ai_onnx_opset(model)
    if version is None:
        raise ModelError(f"{where} does not import the standard ai.onnx opset")
    if version < OLDEST_OPSET:
        raise ModelError(
            f"{where} uses opset {version}; onnxplain supports opsets {OLDEST_OPSET} to "
            f"{NEWEST_OPSET} (upgrade it with onnx.version_converter.convert_version)")
    if version > NEWEST_OPSET:
        raise ModelError(f"{where} uses opset {version}; onnxplain supports opsets "
                         f"{OLDEST_OPSET} to {NEWEST_OPSET}")
    validate(model, where)  # what the rules rely on, named by node and attribute
    try:
        # The checker serialises what it checks: without the weights' bytes that takes
        # milliseconds, not a tenth of a second per 45 MB, and works past protobuf's 2 GB.
        # ONNX Runtime still rejects malformed weights when it loads them.
        onnx.checker.check_model(runtime_ops_aside(without_weights(model)))
    except onnx.checker.ValidationError as err:
        raise ModelError(f"{where} is not a valid ONNX model: {_first_line(err)}") from None
    except ValueError as err:  # protobuf refuses to serialise models over 2 GB without a path
        raise ModelError(f"{where} cannot be checked: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Canonical form: functions inlined, standard Attention ops decomposed (so that autodiff and
    taps see their probabilities), initializers not listed as inputs, every node named, and
    the probability tensor under each ZipMap output exposed as an output of its own."""
    if any(not _has_rule(function) for function in model.functions):
        # Functions without a backward rule of their own are differentiated through their body.
        kept = [(f.domain, f.name) for f in model.functions if _has_rule(f)]
        model = onnx.inliner.inline_selected_functions(model, kept, exclude=True)
    name_unknown_dims(model.graph)
    if needs_canonicalising(model):  # fused, quantized and newer ops as standard ones
        model = canonicalise(model)
    model = lower_to_runtime_opset(model)
    if has_attention_ops(model):
        model = decompose_attention_ops(model)
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    if any(inp.name in initializer_names for inp in graph.input):
        # IR < 4 exports list weights as inputs too; they are constants, not things to explain.
        kept = [inp for inp in graph.input if inp.name not in initializer_names]
        del graph.input[:]
        graph.input.extend(kept)
    _name_nodes(graph)
    _expose_zipmap_inputs(graph)
    set_runtime_ir_version(model)
    return model


def _has_rule(function: onnx.FunctionProto) -> bool:
    return function.domain == ONNXPLAIN_DOMAIN


def _expose_zipmap_inputs(graph: onnx.GraphProto) -> None:
    """skl2onnx classifiers return probabilities as a ZipMap (a sequence of maps, which no
    method can read): add the [batch, classes] tensor it is made from as a graph output, after
    the original ones (which stay as they are)."""
    declared = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "ZipMap" and node.domain == "ai.onnx.ml" and node.input[0] not in \
                declared and any(out in declared for out in node.output):
            graph.output.append(helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT,
                                                              [None, None]))
            declared.add(node.input[0])


def _name_nodes(graph: onnx.GraphProto) -> None:
    taken = {node.name for node in graph.node if node.name}
    for index, node in enumerate(graph.node):
        if node.name:
            continue
        name = f"{node.op_type}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)


def set_runtime_ir_version(model: onnx.ModelProto) -> None:
    """Pick the lowest IR version that the opsets need, never above what ONNX Runtime loads."""
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(needed, min(model.ir_version or needed, NEWEST_RUNTIME_IR))
