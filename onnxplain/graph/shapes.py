"""Types and shapes of every tensor, with symbolic dimension names kept where possible."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .weights import copy_into, copy_without, file_span

Dim = int | str | None

FLOAT_TYPES = frozenset({
    TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})


@dataclass(frozen=True)
class TensorInfo:
    """Element type (a TensorProto enum) and shape; a dim is an int, a symbol or None (unknown)."""

    dtype: int | None
    shape: tuple[Dim, ...] | None
    # Positions filled in by ONNX Runtime's symbolic inference, which assumes broadcast dims
    # are equal: good for reports, not proof enough to skip a broadcast reduction.
    guessed: frozenset[int] = frozenset()

    @property
    def certain(self) -> tuple[Dim, ...] | None:
        """The shape with guessed dims replaced by None."""
        if self.shape is None or not self.guessed:
            return self.shape
        return tuple(None if i in self.guessed else d for i, d in enumerate(self.shape))

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


def infer_shapes(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Type and shape of every tensor.

    ONNX's own inference is the ground truth: it only gives two dims the same name when it
    proved them equal. Where it leaves a dim unknown, ONNX Runtime's symbolic inference fills
    in a value or a name (`batch`, `seq`) derived from the graph inputs.
    """
    light = without_weights(model)
    infos = tensor_infos(_onnx_inference(light))
    if _complete(model, infos):
        return infos  # nothing left to fill in (most CNNs): spares 0.7 s of sympy import
    symbolic = _symbolic_inference(light)
    if symbolic is None:
        return infos
    for name, extra in tensor_infos(symbolic).items():
        known = infos.get(name)
        if extra.shape is None:
            continue
        if known is None or known.shape is None:
            infos[name] = TensorInfo(known.dtype if known and known.dtype else extra.dtype,
                                     extra.shape, frozenset(range(len(extra.shape))))
        elif len(extra.shape) == len(known.shape):
            fill = frozenset(i for i, (k, e) in enumerate(zip(known.shape, extra.shape,
                                                              strict=True))
                             if _unknown(k) and e is not None)
            dims = tuple(extra.shape[i] if i in fill else k for i, k in enumerate(known.shape))
            infos[name] = TensorInfo(known.dtype or extra.dtype, dims, fill)
    return infos


# Float initializers above this many elements are weights: inference needs their type and
# shape only. Smaller ones may be shape arithmetic (Resize scales) and keep their values.
_WEIGHT_ELEMENTS = 64


def is_weight(init: onnx.TensorProto) -> bool:
    """A float initializer big enough that only its type and shape matter to inference."""
    return init.data_type in FLOAT_TYPES and int(np.prod(init.dims)) > _WEIGHT_ELEMENTS


def ai_onnx_opset(model: onnx.ModelProto) -> int | None:
    """The version of the standard domain ("" or "ai.onnx") the model imports, if any."""
    return next((entry.version for entry in model.opset_import
                 if entry.domain in ("", "ai.onnx")), None)


def without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its large float initializers declared as graph inputs of their type and
    shape instead: both inferences serialise the model, which with the weights is most of
    their cost (ResNet-18: 0.39 against 0.02 s)."""
    graph = model.graph
    declared = {value.name for value in graph.input}
    kept, inputs = [], list(graph.input)
    for init in graph.initializer:
        if is_weight(init) or file_span(init) is not None:  # a file stub: no bytes here
            if init.name not in declared:
                inputs.append(helper.make_tensor_value_info(init.name, init.data_type,
                                                            list(init.dims)))
        else:
            kept.append(init)
    if len(kept) == len(graph.initializer):
        return model
    light = copy_without(model, "graph")
    copy_into(graph, light.graph, skip="initializer")
    del light.graph.input[:]
    light.graph.input.extend(inputs)
    light.graph.initializer.extend(kept)
    return light


def _complete(model: onnx.ModelProto, infos: dict[str, TensorInfo]) -> bool:
    """Whether every graph input and node output has a type and a shape with no unknown dim."""
    names = [value.name for value in model.graph.input]
    names += [o for node in model.graph.node for o in node.output if o]
    for name in names:
        info = infos.get(name)
        if info is None or info.dtype is None or info.shape is None or \
                any(_unknown(d) for d in info.shape):
            return False
    return True


def _unknown(dim: Dim) -> bool:
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))


@functools.cache
def _symbolic_shape_infer():
    """ONNX Runtime's symbolic_shape_infer module, loaded from its file: importing it the
    usual way runs onnxruntime/tools/__init__.py, which imports torch when it is installed
    (2.5 s, and a library that must not depend on torch)."""
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("onnxplain_symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.onnx = _OnnxWithoutSaving()
    return module


class _OnnxWithoutSaving:
    """The onnx module, minus saving: when some shapes stay unknown (custom ops), the tool
    writes sym_shape_infer_temp.onnx and uuid-named .data files into the current folder,
    which is the user's."""

    def __getattr__(self, name: str):
        return getattr(onnx, name)

    @staticmethod
    def save_model(*args, **kwargs) -> None:
        del args, kwargs


def _symbolic_inference(model: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        SymbolicShapeInference = _symbolic_shape_infer().SymbolicShapeInference  # noqa: N806

        # It prints progress and warnings of its own; failures just mean less information.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - the pass is optional
        return None


def _onnx_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - models over 2 GB or ops ONNX cannot infer: keep what we have
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
