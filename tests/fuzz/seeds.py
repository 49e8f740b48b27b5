"""Seed models: single-op models of onnx.backend.test.case.node and tiny CNN/MLP built in code."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class Seed:
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray] = field(default_factory=dict)


# Ops whose single-node test models have a float input and a differentiable path: the rules
# and the loader get to see them, not just the "no float input" refusal.
NODE_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "Gemm", "MatMul", "Flatten",
            "Tile", "Reshape", "Transpose", "Concat", "Softmax", "Relu", "Add", "Mul", "Pad",
            "Slice", "Gather", "ReduceSum", "ReduceMean", "BatchNormalization", "Squeeze",
            "Unsqueeze", "Expand", "Split", "LayerNormalization", "Sigmoid", "Resize",
            "GlobalAveragePool", "LRN", "InstanceNormalization", "Where", "Clip", "Pow")


def node_seeds(ops: tuple[str, ...] = NODE_OPS, per_op: int | None = None) -> list[Seed]:
    """The backend test models of `ops` (at most `per_op` each, in onnx's order)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # collect_testcases gathers every op once per process (an op_type after the first
        # call returns the first list again): take them all and pick by op.
        everything = [c for c in collect_testcases(None) if c.kind == "node" and c.data_sets
                      and len(c.model.graph.node) == 1]
    seeds = []
    for op in ops:
        cases = [c for c in everything if c.model.graph.node[0].op_type == op]
        for case in cases[:per_op]:
            names = [i.name for i in case.model.graph.input]
            values = case.data_sets[0][0]
            inputs = {n: np.asarray(v) for n, v in zip(names, values, strict=False)
                      if isinstance(v, np.ndarray)}
            seeds.append(Seed(case.name, case.model, inputs))
    return seeds


def _value(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)


def tiny_cnn() -> Seed:
    """x [N, 3, 8, 8] -> Conv 3x3/1 pad 1 -> Relu -> MaxPool 2/2 -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", kernel_shape=[3, 3],
                         strides=[1, 1], pads=[1, 1, 1, 1], group=1),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    weights = [_weight("w1", (4, 3, 3, 3), rng), _weight("b1", (4,), rng),
               _weight("w2", (5, 64), rng), _weight("b2", (5,), rng)]
    graph = helper.make_graph(nodes, "tiny_cnn", [_value("x", ["N", 3, 8, 8])],
                              [_value("probs", ["N", 5])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    return Seed("tiny_cnn", model, {"x": x})


def tiny_mlp() -> Seed:
    """x [N, 6] -> MatMul -> Add -> Tanh -> MatMul -> logits [N, 3]."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Tanh", ["h1"], ["h"], name="tanh"),
        helper.make_node("MatMul", ["h", "w2"], ["logits"], name="mm2"),
    ]
    weights = [_weight("w1", (6, 8), rng), _weight("b1", (8,), rng), _weight("w2", (8, 3), rng)]
    graph = helper.make_graph(nodes, "tiny_mlp", [_value("x", ["N", 6])],
                              [_value("logits", ["N", 3])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return Seed("tiny_mlp", model, {"x": rng.normal(size=(3, 6)).astype(np.float32)})


def tiny_attention() -> Seed:
    """x [N, 3, 8, 8] -> 4x4 patches (Conv) -> 4 tokens -> one self-attention head -> Gemm:
    an image model with a patch grid (inspect reads it off the input's declared size)."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "wp"], ["c"], name="patchify", kernel_shape=[4, 4],
                         strides=[4, 4]),
        helper.make_node("Reshape", ["c", "heads"], ["r"], name="to_heads"),
        helper.make_node("Transpose", ["r"], ["t"], name="tokens", perm=[0, 1, 3, 2]),
        helper.make_node("Transpose", ["t"], ["tk"], name="keys", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["t", "tk"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="attn_softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "t"], ["ctx"], name="pv"),
        helper.make_node("Flatten", ["ctx"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "wo"], ["logits"], name="head", transB=1),
    ]
    weights = [_weight("wp", (4, 3, 4, 4), rng), _weight("wo", (3, 16), rng),
               numpy_helper.from_array(np.array([0, 1, 4, 4], np.int64), "heads")]
    graph = helper.make_graph(nodes, "tiny_attention", [_value("x", ["N", 3, 8, 8])],
                              [_value("logits", ["N", 3])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    return Seed("tiny_attention", model, {"x": x})


CODE_SEEDS = 3  # all_seeds() starts with the models built here


def all_seeds(per_op: int | None = None, ops: tuple[str, ...] = NODE_OPS) -> list[Seed]:
    return [tiny_cnn(), tiny_mlp(), tiny_attention(), *node_seeds(ops, per_op)]
