"""What the loader and the backward rules take for granted, checked once at load so that a
broken model is one ModelError naming the node and attribute, not an error deep in a rule."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from ..errors import ModelError
from .shapes import without_weights

# Dims past this are declarations no tensor can have (2**40 floats is 4 TB).
MAX_DIM = 2**31 - 1
# Element types packed two (or four) to a byte.
_PACKED = {TensorProto.INT4: 2, TensorProto.UINT4: 2, TensorProto.FLOAT4E2M1: 2}
_PACKED.update({getattr(TensorProto, name): 4 for name in ("INT2", "UINT2")
                if hasattr(TensorProto, name)})
# Kernels, strides and dilations past this per axis are declarations, not layers (the rules'
# index arithmetic would allocate them; ONNX Runtime aborts the process on a stride of 10**6
# under auto_pad SAME): refused even where the input's size is unknown.
MAX_KERNEL = 2**16
# Attributes the rules do arithmetic with, and the smallest value each may take.
_POSITIVE = ("strides", "dilations", "kernel_shape", "group", "size")  # size: LRN's window
_NON_NEGATIVE = ("pads",)


def validate(model: onnx.ModelProto, where: str) -> None:
    """Raise ModelError for the first thing the rules could not work with."""
    _check_text(model, where, "model")
    _check_functions(model, where)
    graph = model.graph
    for value in [*graph.input, *graph.output]:
        _check_value(value, where, required=True)
    for value in graph.value_info:
        _check_value(value, where, required=False)
    for init in graph.initializer:
        _check_initializer(init, where)
    versions = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    for node in graph.node:
        _check_attributes(node, versions.get(node.domain or "ai.onnx", 1), where)
    # Inference only where declarations are to be checked: elsewhere the graph inputs'
    # declared shapes size the windows that read them.
    declared = graph.value_info or any(o.type.tensor_type.HasField("shape") for o in graph.output)
    shapes = _inferred_shapes(model) if declared else _shapes_of(graph.input)
    _check_declared_ranks(model, shapes, where)
    for value in graph.output:
        _check_declared_output(value, shapes, where)
    # Inference gives up on the contradictions checked here: the declarations decide then.
    known = {**{init.name: list(init.dims) for init in graph.initializer},
             **_shapes_of(graph.input), **shapes}
    for node in graph.node:
        if _window_key(node) in _WINDOWED:
            _check_windowed(node, known, where)


def _check_text(message, where: str, path: str) -> None:
    """Protobuf hands back a text field that is not UTF-8 as bytes (a flipped bit in a name):
    every name, string attribute and metadata entry is read as text further on."""
    if isinstance(message, TensorProto):  # its data is not text: only the names are read
        fields = [(TensorProto.DESCRIPTOR.fields_by_name["name"], message.name),
                  (TensorProto.DESCRIPTOR.fields_by_name["external_data"],
                   message.external_data)]
    else:
        fields = message.ListFields()
    for field, value in fields:
        single = isinstance(value, str | bytes) or hasattr(value, "ListFields")
        values = [value] if single else value
        if field.type == field.TYPE_STRING and any(isinstance(v, bytes) for v in values):
            raise ModelError(f"{where}: {path}.{field.name} is not UTF-8 text (a corrupt or "
                             "truncated file?)")
        if field.type == field.TYPE_MESSAGE:
            for item in values:
                _check_text(item, where, f"{path}.{field.name}")


def _known_type(dtype: int) -> bool:
    return dtype in TensorProto.DataType.values() and dtype != TensorProto.UNDEFINED


def _check_value(value: onnx.ValueInfoProto, where: str, required: bool) -> None:
    if not value.type.HasField("tensor_type"):
        return
    tensor = value.type.tensor_type
    if (required or tensor.elem_type) and not _known_type(tensor.elem_type):
        raise ModelError(f"{where}: tensor '{value.name}' has element type {tensor.elem_type}, "
                         "which is not an ONNX type")
    for axis, dim in enumerate(tensor.shape.dim):
        # A negative dim is some converters' "unknown" (graph.dims names it on load).
        if dim.HasField("dim_value") and dim.dim_value > MAX_DIM:
            raise ModelError(f"{where}: tensor '{value.name}' declares dim {axis} as "
                             f"{dim.dim_value} (at most {MAX_DIM})")


def _check_initializer(init: onnx.TensorProto, where: str) -> None:
    if not _known_type(init.data_type):
        raise ModelError(f"{where}: initializer '{init.name}' has element type "
                         f"{init.data_type}, which is not an ONNX type")
    if any(not 0 <= d <= MAX_DIM for d in init.dims):
        raise ModelError(f"{where}: initializer '{init.name}' declares dims {list(init.dims)}")
    if init.data_location == TensorProto.EXTERNAL or init.data_type == TensorProto.STRING:
        return  # external data is checked as it is read; strings have no fixed size
    count = math.prod(init.dims)
    have, need, unit = _data_size(init, count)
    if have != need:
        raise ModelError(f"{where}: initializer '{init.name}' of type "
                         f"{TensorProto.DataType.Name(init.data_type)} holds {have} "
                         f"{unit} where its shape {list(init.dims)} needs {need}")


def _data_size(init: onnx.TensorProto, count: int) -> tuple[int, int, str]:
    per_byte = _PACKED.get(init.data_type)
    if init.raw_data:
        if per_byte:
            return len(init.raw_data), -(-count // per_byte), "bytes"
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        return len(init.raw_data), count * itemsize, "bytes"
    typed = len(getattr(init, helper.tensor_dtype_to_field(init.data_type)))
    if per_byte:
        return typed, -(-count // per_byte), "values"
    if init.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        count *= 2  # real and imaginary parts side by side
    return typed, count, "values"


def _check_attributes(node: onnx.NodeProto, opset: int, where: str) -> None:
    known = _schema_attributes(node, opset)
    for attr in node.attribute:
        values = _numbers(attr)
        if values is None or (known is not None and attr.name not in known):
            continue  # an attribute the op does not have is ignored by everything
        bad = None
        if attr.name in _POSITIVE:
            top = MAX_KERNEL if attr.name in ("kernel_shape", "strides", "dilations", "size") \
                else MAX_DIM
            bad = next((v for v in values if not (math.isfinite(v) and 0 < v <= top)), None)
        elif attr.name in _NON_NEGATIVE and node.op_type != "Pad":  # Pad-2 crops with them
            bad = next((v for v in values if not (math.isfinite(v) and 0 <= v <= MAX_DIM)),
                       None)
        elif attr.name in ("axis", "axes", "perm"):
            bad = next((v for v in values if not (math.isfinite(v) and abs(v) <= MAX_DIM)),
                       None)
        if bad is not None:
            raise ModelError(f"{where}: node '{node.name or node.op_type}' ({node.op_type}) "
                             f"has {attr.name}={_shown(attr)}, which {node.op_type} cannot "
                             "take")


def _schema_attributes(node: onnx.NodeProto, opset: int) -> set[str] | None:
    """The attributes the op's schema declares; None for ops onnx does not know."""
    try:
        domain = "" if node.domain == "ai.onnx" else node.domain
        return set(onnx.defs.get_schema(node.op_type, opset, domain).attributes)
    except onnx.defs.SchemaError:
        return None


def _numbers(attr: onnx.AttributeProto) -> list[float] | None:
    if attr.type == AttributeProto.INT:
        return [attr.i]
    if attr.type == AttributeProto.INTS:
        return list(attr.ints)
    if attr.type == AttributeProto.FLOAT:
        return [attr.f]
    if attr.type == AttributeProto.FLOATS:
        return list(attr.floats)
    return None


def _shown(attr: onnx.AttributeProto) -> str:
    value = helper.get_attribute_value(attr)
    return str(list(value) if isinstance(value, (list, tuple)) else value)


def _check_functions(model: onnx.ModelProto, where: str) -> None:
    """Model-local functions that call themselves, directly or through others, never end."""
    local = {(f.domain, f.name): f for f in model.functions}
    state: dict[tuple[str, str], int] = {}  # 1 being visited, 2 done

    def visit(key: tuple[str, str], path: list[str]) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            raise ModelError(f"{where}: model-local function '{key[1]}' calls itself "
                             f"({' -> '.join([*path, key[1]])})")
        state[key] = 1
        for node in local[key].node:
            callee = (node.domain, node.op_type)
            if callee in local:
                visit(callee, [*path, key[1]])
        state[key] = 2

    for key in local:
        visit(key, [])


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Each tensor's shape as ONNX shape inference finds it from the graph inputs alone (the
    model's own value_info left out: it is what is being checked)."""
    bare = onnx.ModelProto()
    bare.CopyFrom(without_weights(model))
    del bare.graph.value_info[:]
    for value in bare.graph.output:
        value.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(bare).graph
    except Exception:  # noqa: BLE001 - inference is a second opinion here, not a check
        return {}
    return _shapes_of([*inferred.input, *inferred.value_info, *inferred.output])


def _shapes_of(values) -> dict[str, list[int | None]]:
    shapes = {}
    for value in values:
        tensor = value.type.tensor_type
        if value.type.HasField("tensor_type") and tensor.HasField("shape"):
            # Negative dims are unknown ones (graph.dims), and inference carries them on.
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0
                                  else None for d in tensor.shape.dim]
    return shapes


def _check_declared_ranks(model: onnx.ModelProto, shapes: dict, where: str) -> None:
    """A value_info whose rank differs from the rank its node produces (a rank-0 declaration
    on a 4-D tensor) would send the rules' shape arithmetic astray: refuse it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    for value in model.graph.value_info:
        tensor = value.type.tensor_type
        made = shapes.get(value.name)
        if made is None or not tensor.HasField("shape") or len(tensor.shape.dim) == len(made):
            continue
        node = producers.get(value.name)
        by = f" by node '{node.name or node.op_type}' ({node.op_type})" if node else \
            " as a graph input"
        raise ModelError(f"{where}: value_info declares '{value.name}' of rank "
                         f"{len(tensor.shape.dim)}, but it is made{by} with rank {len(made)}")


def _check_declared_output(value: onnx.ValueInfoProto, shapes: dict, where: str) -> None:
    """A graph output declared with fixed dims the graph does not make: the explainer sizes
    its seeds and rows from the declaration."""
    made = shapes.get(value.name)
    tensor = value.type.tensor_type
    if made is None or not tensor.HasField("shape"):
        return
    said = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None
            for d in tensor.shape.dim]
    clash = len(said) != len(made) or any(a is not None and b is not None and a != b
                                          for a, b in zip(said, made, strict=True))
    if clash:
        shown = ["?" if d is None else d for d in made]
        raise ModelError(f"{where}: output '{value.name}' is declared with shape "
                         f"{['?' if d is None else d for d in said]}, but the graph makes "
                         f"{shown}")


# Ops with a window over the spatial axes of input 0 (NCHW...), by (domain, op), and the
# input that holds the weight (None: no weight). Their attributes and the weight's shape must
# agree with each other and with the input's channels and size: the rules' index arithmetic
# and ONNX Runtime rely on it. ONNX Runtime's FusedConv is a Conv (graph.canonical.ms_fused).
_WINDOWED = {**{("", op): 1 for op in ("Conv", "ConvInteger", "ConvTranspose", "DeformConv")},
             ("", "QLinearConv"): 3, ("com.microsoft", "FusedConv"): 1,
             **{("", op): None for op in ("MaxPool", "AveragePool", "LpPool", "MaxUnpool")}}
# Attributes with one value per spatial axis, and their multiple of it.
_PER_AXIS = {"kernel_shape": 1, "strides": 1, "dilations": 1, "pads": 2, "output_padding": 1}


def _window_key(node: onnx.NodeProto) -> tuple[str, str]:
    return ("" if node.domain == "ai.onnx" else node.domain, node.op_type)


def _check_windowed(node: onnx.NodeProto, known: dict, where: str) -> None:
    """Per-axis attribute lengths against the spatial rank, kernel_shape against the weight
    and the padded input, and group against the input's channels and the weight's, for
    Conv-like and pooling ops."""
    attrs = {a.name: a for a in node.attribute}
    ints = {name: list(a.ints) for name, a in attrs.items() if a.type == AttributeProto.INTS}
    index = _WINDOWED[_window_key(node)]
    weight = known.get(node.input[index]) if index is not None and len(node.input) > index \
        else None
    data = known.get(node.input[0]) if node.input else None
    name = f"node '{node.name or node.op_type}' ({node.op_type})"

    def refuse(attr: str, why: str) -> None:
        shown = _shown(attrs[attr]) if attr in attrs else "1"
        raise ModelError(f"{where}: {name} has {attr}={shown}, {why}")

    spatial = next((len(s) - 2 for s in (weight, data) if s is not None and len(s) >= 2),
                   len(ints["kernel_shape"]) if "kernel_shape" in ints else None)
    if data is not None and weight is not None and len(data) != len(weight):
        raise ModelError(f"{where}: {name} has input '{node.input[0]}' of rank {len(data)} "
                         f"but weight '{node.input[index]}' of rank {len(weight)}")
    for attr, times in _PER_AXIS.items():
        if attr in ints and spatial is not None and len(ints[attr]) != times * spatial:
            refuse(attr, f"but the node has {spatial} spatial axes")
    _check_width(node, ints, data, refuse)
    if weight is not None and "kernel_shape" in ints and \
            any(w is not None and w != k for w, k in zip(weight[2:], ints["kernel_shape"],
                                                         strict=False)):
        refuse("kernel_shape", f"but its weight '{node.input[index]}' has shape "
                               f"{_dims(weight)}")
    given = attrs.get("group")
    # A group of another type is the checker's to refuse: 0 here skips the group checks.
    group = 1 if given is None else given.i if given.type == AttributeProto.INT else 0
    if index is not None and weight is not None and len(weight) >= 2 and group > 0:
        _check_group(node, data, weight, group, refuse)
        _check_bias(node, weight, group, known, name, where)


def _check_width(node: onnx.NodeProto, ints: dict, data, refuse) -> None:
    """A (dilated) kernel wider than its padded input, where the input's size is known
    (auto_pad SAME pads whatever the kernel needs; ConvTranspose widens its input)."""
    kernel = ints.get("kernel_shape")
    same = any(a.name == "auto_pad" and a.s.startswith(b"SAME") for a in node.attribute)
    if not kernel or not data or same or node.op_type == "ConvTranspose" or \
            len(data) != len(kernel) + 2:
        return
    dilations = ints.get("dilations") or [1] * len(kernel)
    pads = ints.get("pads") or [0] * 2 * len(kernel)
    for axis, (k, d, n) in enumerate(zip(kernel, dilations, data[2:], strict=False)):
        if n is not None and (k - 1) * d + 1 > n + pads[axis] + pads[axis + len(kernel)]:
            refuse("kernel_shape", f"wider than its input '{node.input[0]}' (size {n} on "
                                   f"spatial axis {axis}, padded)")


# The input that holds the bias (one value per output channel).
_BIAS = {"Conv": 2, "FusedConv": 2, "ConvTranspose": 2, "QLinearConv": 8, "DeformConv": 3}


def _check_bias(node: onnx.NodeProto, weight, group: int, known: dict, name: str,
                where: str) -> None:
    index = _BIAS.get(node.op_type)
    bias = known.get(node.input[index]) if index is not None and len(node.input) > index \
        and node.input[index] else None
    if bias is None:
        return
    # Conv: weight [M, C/group, k...]; ConvTranspose: weight [C, M/group, k...].
    channels = weight[0] if node.op_type != "ConvTranspose" else \
        None if weight[1] is None else weight[1] * group
    if channels is not None and (len(bias) != 1 or bias[0] not in (None, channels)):
        raise ModelError(f"{where}: {name} has bias '{node.input[index]}' of shape "
                         f"{_dims(bias)}, but it makes {channels} output channels")


def _check_group(node: onnx.NodeProto, data, weight, group: int, refuse) -> None:
    """Conv: weight [M, C/group, k...] with M divisible by group; ConvTranspose: weight
    [C, M/group, k...] with C divisible by group (C: the input's channels)."""
    channels = data[1] if data is not None and len(data) >= 2 else None
    # The input channels the weight takes.
    takes = weight[0] if node.op_type == "ConvTranspose" else \
        None if weight[1] is None else weight[1] * group
    if weight[0] is not None and weight[0] % group:
        refuse("group", f"which does not divide dim 0 ({weight[0]}) of its weight "
                        f"'{node.input[_WINDOWED[_window_key(node)]]}' {_dims(weight)}")
    if channels is not None and channels % group:
        refuse("group", f"which does not divide the {channels} channels of its input "
                        f"'{node.input[0]}'")
    if channels is not None and takes is not None and takes != channels:
        refuse("group", f"so its weight {_dims(weight)} takes {takes} input channels, but "
                        f"input '{node.input[0]}' has {channels}")


def _dims(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
