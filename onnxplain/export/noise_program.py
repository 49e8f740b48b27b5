"""The noise tunnels (export.noise) over a method that has a program of its own: DeepLIFT,
LRP and Integrated Gradients. The noise Loop's body is that method's whole program
(export.emit_explainer), fed noisy copies of the rows, so the base's rules, its baselines
and its own Loop run as they do alone, and `export` saves the very program that in-process
runs read.

Iteration 0 runs the base program on the clean rows. Their outputs leave the Loop as the
explainer's original outputs, and the explained score's weights come from them (the class
chosen on the clean rows, the output seed, the dense objective), which the base program
then takes as its output seed on every noisy copy: each copy explains its row's clean
objective, and the model's weights are stored once (where the base program keeps them: in
the body, in IG's own Loop body inside it, or for models of OUTER_WEIGHTS_FROM bytes in the
outer graph). That run's attributions are not used: one base run of the N rows beyond the
n_samples. Iteration t >= 1 runs copies
(t - 1) k .. t k - 1 of every row, k blocks of the N rows (k from rows_per_iteration, 1 on
a fixed batch axis).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.ir import defined, to_ir, to_proto
from ..graph.shapes import TensorInfo
from .graph import FED, ExplainerGraph
from .loop import (
    body_over,
    ceil_div,
    close_body,
    first_or_kept,
    int_max,
    int_min,
    placeholder,
    points_per_iteration,
    rows_per_iteration_input,
    value_infos,
)
from .methods import ATTRIBUTION
from .random import indices
from .seed import OUTPUT_SEED

# The bases that run this way (the others, gradients with a post-op, run in export.noise's
# own Loop, which needs no extra clean run).
PROGRAM_BASES = ("deeplift", "integrated_gradients", "lrp")
# The base program's own values, renamed so that the noise graph's names stay readable.
BASE_PREFIX = "onnxplain/noise/base/"
# Rows a base program runs at once per row: DeepLIFT each row with its reference (its
# PAIRED_ROWS), Integrated Gradients the row and its baseline with the path's first point.
ROWS_PER_COPY = {"deeplift": 2, "integrated_gradients": 3}

# copies(builder, sample indices [k], input) -> the k noisy copies of the input's N rows,
# block after block ([k * N, ...]).
Copies = Callable[[GraphBuilder, str, str], str]


def program_sums(eg: ExplainerGraph, base: str, base_options: Mapping, inputs: Sequence[str],
                 copies: Copies, samples: int, rows_per_iteration: int,
                 sums_like: Sequence[str]) -> list[str]:
    """The sums over `samples` noisy copies of the base method's attribution of each input
    and of its square (double, like `sums_like`: two per input), from the noise Loop over the
    base's program. The clean rows' outputs become eg's original outputs."""
    from . import PAIRED_ROWS, emit_explainer  # the package imports this module

    model, b = eg.model, eg.b
    fixed = not model.batch.symbolic
    if fixed and base in PAIRED_ROWS:
        raise InputError(f"the model's batch axis is {model.batch.describe()}; {base} runs "
                         f"each row with its reference in one batch (2N rows), so the noise "
                         "tunnels cannot run over it: re-export the model with dynamic axes")
    if b.opset < 10:
        raise InputError(f"the noise tunnels over {base} need opset 10 or newer (computed "
                         f"Slice); the model has opset {b.opset}")
    # A base with a Loop of its own shares the noise Loop's rows per iteration (one input).
    options = {**base_options, **({"internal_batch_size": rows_per_iteration}
                                  if "internal_batch_size" in base_options else {})}
    inner = emit_explainer(model, base, options, eg.output, output_seed=FED,
                           sources=eg.sources)
    proto, infos, per_row = _embeddable(eg, inner)
    rows, outputs = eg.rows, [spec.name for spec in model.outputs]
    points = b.ints([samples])
    if fixed:
        k = b.ints([1])
    else:
        share = b.op("Mul", rows, b.ints([ROWS_PER_COPY.get(base, 1)]))
        k, trips = points_per_iteration(b, points, rows_per_iteration_input(
            eg, rows_per_iteration), share)
    trips = b.op("Add", ceil_div(b, points, k), b.ints([1]))  # + the clean iteration
    body = _body(eg, proto, infos, per_row, inputs, copies, samples, k, sums_like, outputs)
    like = eg.model.infos.get(eg.output)
    initial = [*(b.zeros_like(tensor) for tensor in sums_like), placeholder(b, like),
               *(placeholder(b, eg.model.infos.get(name)) for name in outputs)]
    results = b.node("Loop", [b.reshape(trips, []), "", *initial], len(initial), body=body)
    sums, clean = results[:len(sums_like)], results[len(sums_like) + 1:]
    for total, tensor in zip(sums, sums_like, strict=True):
        b.infos[total] = b.info(tensor)
    for value, name in zip(clean, outputs, strict=True):
        b.infos[value] = eg.model.infos.get(name, TensorInfo(None, None))
    eg.outputs_from(dict(zip(outputs, clean, strict=True)))
    eg.target()  # the class the body chose, from the same outputs
    return sums


def _embeddable(eg: ExplainerGraph, inner: ExplainerGraph
                ) -> tuple[onnx.ModelProto, dict[str, TensorInfo], list[str]]:
    """The base's program as the body's start: (proto, infos, per_row). Its
    method inputs become eg's inputs (`adopted`, read from there; `per_row` ones, one row
    per row, are also tiled into the body), and its own values are renamed under
    BASE_PREFIX but the model's weights (stubs shared by name) and the adopted inputs."""
    model_inputs = {spec.name for spec in eg.model.inputs}
    method_inputs = [value for value in inner.proto.graph.input
                     if value.name not in model_inputs and value.name != OUTPUT_SEED]
    adopted = [eg.adopt_input(inner, value.name) for value in method_inputs]
    per_row = [value.name for value in method_inputs if _per_row(value)]
    kept = {init.name for init in eg.model.proto.graph.initializer}
    kept |= set(adopted) - set(per_row)
    view = to_ir(inner.proto)
    renamed = {}
    for value in defined(view.graph):
        if value.name not in kept:
            renamed[value.name] = BASE_PREFIX + value.name
            value.name = renamed[value.name]
    proto = to_proto(view)
    fed = {value.name for value in proto.graph.input}  # their defaults go too
    weights = [init for init in proto.graph.initializer if init.name not in fed]
    del proto.graph.input[:], proto.graph.output[:], proto.graph.value_info[:]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(weights)
    infos = {renamed.get(name, name): info for name, info in inner.b.infos.items()}
    return proto, infos, per_row


def _per_row(value: onnx.ValueInfoProto) -> bool:
    """An explainer input with one row for all rows or one per row ('<...>_rows' first axis,
    ExplainerGraph.add_input)."""
    dims = value.type.tensor_type.shape.dim
    return len(dims) > 0 and dims[0].dim_param.endswith("_rows")


def _body(eg: ExplainerGraph, proto: onnx.ModelProto, infos: dict[str, TensorInfo],
          per_row: Sequence[str], inputs: Sequence[str], copies: Copies, samples: int, k: str,
          sums_like: Sequence[str], outputs: list[str]) -> onnx.GraphProto:
    made = body_over(eg, proto, infos, [*sums_like, eg.output], prefix="onnxplain/noise")
    bb, step, rows = made.bb, made.step, eg.rows
    carried_sums, weights_in = made.carried[:-1], made.carried[-1]
    kept = [bb.fresh("clean") for _ in outputs]
    first = bb.op("Equal", step, bb.const(np.array(0, np.int64)))
    start = bb.op("Mul", int_max(bb, bb.op("Sub", bb.reshape(step, [1]), bb.ints([1])),
                                 bb.ints([0])), k)
    zero = bb.ints([0])
    count = bb.where(first, zero, int_min(bb, k, bb.op("Sub", bb.ints([samples]), start)))
    index = bb.op("Add", start, indices(bb, count))
    extra = bb.where(first, rows, zero)  # the clean rows, in iteration 0 only
    blocks = int_max(bb, count, bb.ints([1]))
    for spec in eg.model.inputs:
        name = spec.name
        made_rows = copies(bb, index, name) if name in inputs else bb.op(
            "Tile", name, bb.concat([count, bb.ints([1] * (bb.rank(name) - 1))], 0))
        _define(bb, BASE_PREFIX + name,
                bb.concat([bb.slice(name, [0], extra, [0]), made_rows], 0))
    for name in per_row:
        times = bb.where(bb.equal(bb.dim(name, 0), rows), blocks, bb.ints([1]))
        _define(bb, BASE_PREFIX + name, bb.op("Tile", name, bb.concat(
            [times, bb.ints([1] * (bb.rank(name) - 1))], 0)))
    rank = bb.rank(eg.output)
    unseeded = bb.const(np.zeros((1,) * rank, bb.np_dtype(eg.output)))
    tiled = bb.op("Tile", weights_in, bb.concat([count, bb.ints([1] * (rank - 1))], 0))
    _define(bb, BASE_PREFIX + OUTPUT_SEED, first_or_kept(bb, first, unseeded, tiled,
                                                         eg.output))
    made.graph.node.extend(made.model_nodes)
    clean = [first_or_kept(bb, first, BASE_PREFIX + name, previous, name)
             for name, previous in zip(outputs, kept, strict=True)]
    weights_out = eg.row_weights(bb, clean[outputs.index(eg.output)])
    updated = []
    for name, (total, square) in zip(inputs, _pairs(carried_sums), strict=True):
        value = bb.op("Cast", bb.slice(BASE_PREFIX + ATTRIBUTION + name, extra,
                                       [np.iinfo(np.int64).max], [0]), to=TensorProto.DOUBLE)
        shape = bb.concat([count, rows, bb.dims(name, 1)], 0)
        for carried, part in ((total, value), (square, bb.op("Mul", value, value))):
            summed = bb.reduce("ReduceSum", bb.reshape(part, shape), [0], False)
            updated.append(bb.op("Add", carried, summed))
    for name, tensor in zip(updated, sums_like, strict=True):
        bb.infos[name] = eg.b.info(tensor)
    done = bb.op("Identity", made.cond)
    likes = [*sums_like, eg.output, *outputs]
    return close_body(eg, made, "noisy_copies",
                      value_infos(bb, [*made.carried, *kept], likes),
                      [helper.make_tensor_value_info(done, TensorProto.BOOL, []),
                       *value_infos(bb, [*updated, weights_out, *clean], likes)])


def _define(bb: GraphBuilder, name: str, value: str) -> None:
    """The body defines `name` (a base program input) as `value`."""
    bb.graph.node.append(helper.make_node("Identity", [value], [name],
                                          name=bb.fresh("feed_node")))
    bb.infos[name] = bb.info(value)


def _pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    return list(zip(items[0::2], items[1::2], strict=True))
