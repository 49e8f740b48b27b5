"""Reverse-mode differentiation of ONNX graphs, emitted as standard ONNX ops.

Importing this package registers every backward rule in `GRADIENT`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo, infer_shapes
from . import ops  # noqa: F401 - registers the rules
from .build import add_gradients, differentiated_region, missing_rules
from .ops.recurrent import finish_gate_forwards
from .registry import GRADIENT, NodeContext, RuleSet, has_no_gradient, rule

SEED_PREFIX = "onnxplain/seed/"
GRAD_PREFIX = "onnxplain/grad/"
POST_PREFIX = "onnxplain/post/"


@dataclass
class Differentiated:
    """A model that also returns gradients; feed one seed per differentiated output."""

    model: onnx.ModelProto
    seeds: dict[str, str]   # output name -> seed input name
    grads: dict[str, str]   # wrt tensor name -> gradient output name


def differentiate(model: onnx.ModelProto, wrt: Sequence[str],
                  outputs: Sequence[str] | None = None, rules: RuleSet = GRADIENT,
                  infos: dict[str, TensorInfo] | None = None) -> Differentiated:
    """Return a copy of `model` that also outputs d(sum_k seed_k * output_k)/d(t) for t in wrt.

    Each differentiated output gets a seed input of the same type and shape, so any weighted
    sum of output elements can be the objective, for every row of a batch in one run.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if infos is None:
        infos = infer_shapes(copy)
    b = GraphBuilder(copy, infos)
    outputs = list(outputs) if outputs is not None else [o.name for o in copy.graph.output]
    seeds = {out: add_input_like(b, SEED_PREFIX + out, out) for out in outputs}
    grads = add_gradients(b, seeds, list(wrt), rules)
    finish_gate_forwards(b)
    named = {name: add_output(b, GRAD_PREFIX + name, grad, like=name)
             for name, grad in grads.items()}
    return Differentiated(copy, {out: seeds[out] for out in outputs}, named)


def add_input_like(b: GraphBuilder, name: str, like: str) -> str:
    info = b.info(like)
    b.graph.input.append(helper.make_tensor_value_info(name, b.dtype(like), _dims(info)))
    b.infos[name] = info
    return name


def add_output(b: GraphBuilder, name: str, tensor: str, like: str | None = None) -> str:
    """Expose `tensor` as graph output `name` (through an Identity so the name is ours)."""
    b.graph.node.append(helper.make_node("Identity", [tensor], [name], name=b.fresh("output")))
    info = b.info(like or tensor)
    b.graph.output.append(helper.make_tensor_value_info(name, b.dtype(like or tensor),
                                                        _dims(info)))
    b.infos[name] = info
    return name


def _dims(info: TensorInfo) -> list | None:
    """Declared dims: known ones kept, unknown ones left open, the rank always stated."""
    return None if info.certain is None else list(info.certain)


__all__ = ["GRADIENT", "Differentiated", "NodeContext", "RuleSet", "add_gradients",
           "differentiate", "differentiated_region", "has_no_gradient", "missing_rules", "rule"]
