"""Types and shapes of every tensor, with symbolic dimension names kept where possible."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

Dim = int | str | None

FLOAT_TYPES = frozenset({
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})


@dataclass(frozen=True)
class TensorInfo:
    """Element type (a TensorProto enum) and shape; a dim is an int, a symbol, or None if unknown."""

    dtype: int | None
    shape: tuple[Dim, ...] | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_TYPES

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.dtype))

    def static_shape(self) -> tuple[int, ...] | None:
        if self.shape is None or any(not isinstance(d, int) for d in self.shape):
            return None
        return tuple(self.shape)


def value_info_to_tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    ttype = value.type.tensor_type
    dtype = ttype.elem_type or None
    if not ttype.HasField("shape"):
        return TensorInfo(dtype, None)
    dims: list[Dim] = []
    for dim in ttype.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return TensorInfo(dtype, tuple(dims))


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run symbolic shape inference (keeps names like `batch`), falling back to ONNX's own."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        # It prints its own progress and warnings; the fallback below covers what it cannot do.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=False)
        if inferred is not None:
            return _complete_with_onnx_inference(inferred)
    except Exception:  # noqa: BLE001 - any failure of the optional pass means: use the fallback
        pass
    return _onnx_inference(model)


def _onnx_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - models over 2 GB or ops ONNX cannot infer: keep what we have
        return model


def _complete_with_onnx_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fill in element types the symbolic pass left out, without overwriting its shapes."""
    known = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type}
    produced = {o for node in model.graph.node for o in node.output if o}
    outputs = {o.name for o in model.graph.output}
    if produced - known - outputs:
        fallback = _onnx_inference(model)
        have = {v.name for v in model.graph.value_info}
        for value in fallback.graph.value_info:
            if value.name not in have:
                model.graph.value_info.append(value)
    return model


def tensor_infos(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Info for every named tensor: inputs, outputs, value_info, initializers, Constant outputs."""
    graph = model.graph
    infos: dict[str, TensorInfo] = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        info = value_info_to_tensor_info(value)
        old = infos.get(value.name)
        if old is None or (old.shape is None and info.shape is not None) or old.dtype is None:
            infos[value.name] = TensorInfo(info.dtype or (old.dtype if old else None),
                                           info.shape if info.shape is not None else
                                           (old.shape if old else None))
    for init in graph.initializer:
        infos[init.name] = TensorInfo(init.data_type, tuple(init.dims))
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_node_value(node)
            if value is not None:
                infos[node.output[0]] = TensorInfo(
                    helper.np_dtype_to_tensor_dtype(value.dtype), tuple(value.shape))
    return infos


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return onnx.numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None
