"""Model mutations. Each takes a copy of a seed model and a seeded generator and returns the
bytes to write as model.onnx, plus any side files (external data) beside it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper


@dataclass
class Mutant:
    data: bytes
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> bytes


Mutation = Callable[[onnx.ModelProto, np.random.Generator], "Mutant | onnx.ModelProto"]


def _pick(rng: np.random.Generator, items):
    items = list(items)
    return items[int(rng.integers(len(items)))] if items else None


def _all_values(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    graph = model.graph
    return [*graph.input, *graph.output, *graph.value_info]


def unchanged(model, rng):
    """The seed as it is: a valid model must explain or be refused for a reason of its own."""
    return model


def truncate(model, rng):
    data = model.SerializeToString()
    return Mutant(data[:int(rng.integers(0, max(len(data), 1)))])


def byte_flip(model, rng):
    data = bytearray(model.SerializeToString())
    for _ in range(int(rng.integers(1, 9))):
        if data:
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return Mutant(bytes(data))


def delete_node(model, rng):
    if model.graph.node:
        del model.graph.node[int(rng.integers(len(model.graph.node)))]
    return model


def rewire_input(model, rng):
    node = _pick(rng, model.graph.node)
    if node is None or not node.input:
        return model
    names = [v.name for v in _all_values(model)] + [i.name for i in model.graph.initializer]
    names += [out for n in model.graph.node for out in n.output] + ["no_such_tensor", ""]
    node.input[int(rng.integers(len(node.input)))] = _pick(rng, names)
    return model


DTYPES = (0, 999, TensorProto.FLOAT16, TensorProto.INT32, TensorProto.STRING, TensorProto.BOOL,
          TensorProto.FLOAT8E4M3FN, TensorProto.COMPLEX64, TensorProto.INT4, TensorProto.DOUBLE)


def change_dtype(model, rng):
    dtype = int(_pick(rng, DTYPES))
    targets = [v for v in _all_values(model) if v.type.HasField("tensor_type")]
    if model.graph.initializer and rng.random() < 0.4:
        # The data stays as it was: its size no longer matches what the dtype says.
        _pick(rng, model.graph.initializer).data_type = dtype
    elif targets:
        _pick(rng, targets).type.tensor_type.elem_type = dtype
    return model


# Values the rules do arithmetic with: zero strides, huge or NaN kernels, negative axes.
INT_VALUES = (0, -1, -7, 2**40, 10**6, 3)
SHAPED_ATTRS = {"strides": 0, "kernel_shape": 10**6, "pads": -5, "dilations": 0, "group": 0,
                "axis": -99, "axes": 99, "perm": 7}


def change_attribute(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.attribute] or model.graph.node)
    if node is None:
        return model
    if not node.attribute or rng.random() < 0.3:
        name = _pick(rng, SHAPED_ATTRS)
        node.attribute.append(helper.make_attribute(name, [SHAPED_ATTRS[name]] * 2
                                                    if name.endswith("s") else
                                                    SHAPED_ATTRS[name]))
        return model
    attr = _pick(rng, node.attribute)
    if attr.type == AttributeProto.INT:
        attr.i = int(_pick(rng, INT_VALUES))
    elif attr.type == AttributeProto.INTS:
        value = int(_pick(rng, INT_VALUES))
        attr.ints[:] = [value] * max(len(attr.ints), 1)
    elif attr.type == AttributeProto.FLOAT:
        attr.f = float(_pick(rng, (math.nan, math.inf, -1.0, 0.0, 1e30)))
    elif attr.type == AttributeProto.FLOATS:
        attr.floats[:] = [math.nan] * max(len(attr.floats), 1)
    else:
        attr.type = AttributeProto.INT  # type tag no longer matches the field set
    return model


def stride_zero(model, rng):
    """The attribute the rules divide by, on every windowed node."""
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name in ("strides", "dilations", "kernel_shape"):
                attr.ints[:] = [int(_pick(rng, (0, 10**6, -2)))] * len(attr.ints)
    return model


def opset(model, rng):
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = int(_pick(rng, (1, 99, 0, -3)))
    return model


def duplicate_names(model, rng):
    graph = model.graph
    if len(graph.node) >= 2 and rng.random() < 0.5:
        graph.node[1].output[0] = graph.node[0].output[0]
    elif graph.input:
        graph.input.append(graph.input[0])
    if graph.initializer:
        graph.initializer.append(graph.initializer[0])
    return model


def cycle(model, rng):
    nodes = model.graph.node
    if nodes and nodes[0].input:
        nodes[0].input[0] = nodes[-1].output[0]
    return model


def empty_graph(model, rng):
    del model.graph.node[:]
    if rng.random() < 0.5:
        del model.graph.output[:]
    return model


def _externalise(model, rng, location: str) -> onnx.ModelProto:
    graph = model.graph
    if not graph.initializer:
        graph.initializer.append(onnx.numpy_helper.from_array(np.ones(4, np.float32), "extra"))
    init = _pick(rng, graph.initializer)
    init.ClearField("raw_data")
    for name in ("float_data", "int32_data", "int64_data", "double_data"):
        init.ClearField(name)
    init.data_location = TensorProto.EXTERNAL
    del init.external_data[:]
    init.external_data.add(key="location", value=location)
    return model


def external_missing(model, rng):
    return _externalise(model, rng, "missing_weights.bin")


def external_outside(model, rng):
    location = _pick(rng, ("../outside.bin", "/etc/hostname", "sub/../../escape.bin"))
    return _externalise(model, rng, location)


def external_short(model, rng):
    """External data present but shorter than the tensor."""
    mutated = _externalise(model, rng, "weights.bin")
    return Mutant(mutated.SerializeToString(), {"weights.bin": b"\x00\x01\x02"})


def giant_dim(model, rng):
    value = int(_pick(rng, (2**40, -3, -1, 0)))
    target = _pick(rng, [v for v in _all_values(model) if v.type.tensor_type.shape.dim])
    if target is not None:
        dims = target.type.tensor_type.shape.dim
        dims[int(rng.integers(len(dims)))].dim_value = value
    elif model.graph.initializer:
        _pick(rng, model.graph.initializer).dims.append(value)
    return model


def rank0_value_info(model, rng):
    graph = model.graph
    names = [out for node in graph.node for out in node.output if out]
    outputs = {o.name for o in graph.output}
    inner = [n for n in names if n not in outputs] or [v.name for v in graph.input]
    for name in inner[:3]:
        graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
    if rng.random() < 0.5 and graph.input:
        graph.input[0].type.tensor_type.shape.ClearField("dim")
        graph.input[0].type.tensor_type.shape.SetInParent()
    return model


def recursive_function(model, rng):
    """A model-local function whose body calls itself, used by a node of the graph."""
    body = helper.make_node("Loopy", ["a"], ["b"], domain="local.fuzz")
    function = helper.make_function("local.fuzz", "Loopy", ["a"], ["b"], [body],
                                    [helper.make_opsetid("", 17)])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local.fuzz", 1))
    graph = model.graph
    if graph.node:
        first = graph.node[0]
        wrapped = first.output[0]
        first.output[0] = wrapped + "_pre"
        graph.node.insert(1, helper.make_node("Loopy", [wrapped + "_pre"], [wrapped],
                                              domain="local.fuzz", name="loopy"))
    return model


WINDOWED = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "ConvInteger")


def window_contradiction(model, rng):
    """A windowed node whose attributes disagree with its weight or input: a group that does
    not divide the channels, a per-axis attribute one value short or long, a weight reshaped
    for another group count or kernel."""
    node = _pick(rng, [n for n in model.graph.node if n.op_type in WINDOWED])
    if node is None:
        return change_attribute(model, rng)
    choice = int(rng.integers(3))
    weights = {init.name: init for init in model.graph.initializer}
    weight = weights.get(node.input[1]) if len(node.input) > 1 else None
    if choice == 0:
        _set_attribute(node, "group", int(_pick(rng, (2, 3, 5, 7))))
    elif choice == 1 or weight is None or len(weight.dims) < 3:
        attrs = {a.name: a for a in node.attribute if a.type == AttributeProto.INTS}
        name = _pick(rng, sorted(attrs) or ["pads", "strides", "dilations", "kernel_shape"])
        values = list(attrs[name].ints) if name in attrs else [1, 1]
        values = values[:-1] if values and rng.random() < 0.5 else [*values, 1]
        _set_attribute(node, name, values)
    else:
        # Same values, another shape: channels moved to the kernel, or the kernel grown.
        array = onnx.numpy_helper.to_array(weight)
        dims = list(array.shape)
        if rng.random() < 0.5 and dims[1] % 2 == 0:
            dims[1] //= 2
            dims[2] *= 2
        else:
            dims[-1] += 1
            array = np.concatenate([array, array[..., :1]], axis=-1)
        weight.CopyFrom(onnx.numpy_helper.from_array(array.reshape(dims), weight.name))
    return model


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def integer_output(model, rng):
    """The graph's outputs as integers no ArgMax made: a cast, or the floats' bits (BitCast,
    values like 1065353216), which must not be read as class labels."""
    graph = model.graph
    version = max((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")),
                  default=0)
    bitcast = version >= 26 or rng.random() < 0.5  # else the opset is raised to BitCast's
    for value in graph.output:
        tensor = value.type.tensor_type
        if tensor.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
            continue
        inner = value.name + "_float"
        for node in graph.node:
            node.output[:] = [inner if out == value.name else out for out in node.output]
        to = {TensorProto.FLOAT: TensorProto.INT32, TensorProto.DOUBLE: TensorProto.INT64,
              TensorProto.FLOAT16: TensorProto.INT16}[tensor.elem_type] if bitcast else \
            TensorProto.INT64
        graph.node.append(helper.make_node("BitCast" if bitcast else "Cast", [inner],
                                           [value.name], to=to))
        tensor.elem_type = to
    if bitcast:
        for entry in model.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = max(entry.version, 26)
    return model


MUTATIONS: dict[str, Mutation] = {
    "unchanged": unchanged, "truncate": truncate, "byte_flip": byte_flip,
    "delete_node": delete_node,
    "rewire_input": rewire_input, "dtype": change_dtype, "attribute": change_attribute,
    "stride_zero": stride_zero, "opset": opset, "duplicate_names": duplicate_names,
    "cycle": cycle, "empty_graph": empty_graph, "external_missing": external_missing,
    "external_outside": external_outside, "external_short": external_short,
    "giant_dim": giant_dim, "rank0_value_info": rank0_value_info,
    "recursive_function": recursive_function, "window_contradiction": window_contradiction,
    "integer_output": integer_output,
}


def mutate(model: onnx.ModelProto, name: str, seed: int) -> Mutant:
    """The mutant `name` of a copy of `model` drawn with `seed` (the same every time)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    result = MUTATIONS[name](copy, np.random.default_rng(seed))
    return result if isinstance(result, Mutant) else Mutant(result.SerializeToString())
