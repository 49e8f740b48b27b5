"""Methods that evaluate the model at many points per row (Integrated Gradients' path,
SmoothGrad's noisy copies) run those points in an ONNX Loop, a few per iteration, so an
explainer needs the memory of one gradient run over about `rows_per_iteration` rows however
many points there are.

The Loop's body is a model (the original one, or the part after its input's affine stem)
with onnxplain's gradient pass, and it holds that model's weights: ONNX Runtime lays out
convolutions for speed (NCHWc) only where the weights are the graph's own. Models of
OUTER_WEIGHTS_FROM bytes or more leave them in the outer graph, which the body reads: in
process the session then reads them from the user's file (file stubs of the main graph)
instead of getting a copy (VGG-19, IG at 8 steps: peak 2.9 GB and 8.5 s with the copy). Iteration i
evaluates points i*k .. i*k+k-1, each over all N rows (block after block, as ExplainerGraph
lays out copies), with k decided at run time: at most max(1, rows_per_iteration // N), spread
evenly over the iterations that needs (the last one takes what is left). rows_per_iteration
is an input of the explainer (ROWS_PER_ITERATION, its default given at export), so in-process
runs feed the memory budget's value and a new value is a new feed, not a new program.
Iteration 0 also runs the clean rows (x, and x' for a path), whose outputs leave the Loop
as the explainer's original outputs, so the model's nodes appear once. Below opset 12 the
int64 Min and Max are Where(Less) (int_min, int_max): the same Loop.

A model whose batch axis is fixed to B (then N = B: the engine runs the rows in padded
chunks of B, and the exported explainer takes exactly B rows) sees B rows in every run: the
clean blocks run in iterations of their own (x in iteration 0, x' in iteration 1 for a
path), then one point per iteration (k = 1; no ROWS_PER_ITERATION input), as
export.perturb runs its clean rows alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..autodiff.build import add_gradients
from ..autodiff.ops.recurrent import finish_gate_forwards
from ..autodiff.registry import GRADIENT, RuleSet
from ..errors import InputError, ModelError
from ..graph.builder import GraphBuilder
from ..graph.ir import defined, onnx_ir, remove_unused, subgraph_to_ir
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..graph.walk import defined_names, node_inputs
from ..graph.weights import payload_bytes
from .graph import ExplainerGraph

BODY_PREFIX = "onnxplain/loop"
ROWS_PER_ITERATION = "rows_per_iteration"

# Models this large keep their weights in the Loop's outer graph (see the module docstring).
OUTER_WEIGHTS_FROM = 1 << 27


@dataclass(frozen=True)
class Chunk:
    """One iteration's points: `index` [k] into the point tables and their count `k` (int64
    [1]; the last iteration may take fewer); `state`: what the iteration before left
    (Walk.state_like)."""

    index: str
    k: str
    state: tuple[str, ...] = ()


# Emits, inside the body, the values of the body model's inputs at a chunk's points: k
# blocks of N rows each.
Feeds = Callable[[GraphBuilder, Chunk], dict[str, str]]
# Emits a chunk's contribution to each loop-carried sum (N rows) from the gradients at the
# points (k blocks of N rows), then the new values of the walk's state (Walk.state_like).
Contributions = Callable[[GraphBuilder, Chunk, dict[str, str]], list[str]]


@dataclass(frozen=True)
class Walk:
    """What the Loop evaluates: `model` at `points` points per row (`feeds`), plus once the
    clean rows `clean` (per input of `model`, an outer tensor of `clean_blocks` blocks of N
    rows: [x; x'] for a path from x', [x] for noise)."""

    model: Model
    points: int | str  # or an outer int64 [1] (a count that depends on N)
    clean: dict[str, str]
    clean_blocks: int
    wrt: Sequence[str]  # the inputs of `model` whose gradients the contributions read
    feeds: Feeds
    contributions: Contributions
    sums_like: Sequence[str]  # outer tensors shaped like the sums
    # Outer tensors shaped like what each iteration leaves the next (Chunk.state, zeros in
    # the first): a point's values that the next chunk's first point pairs with.
    state_like: Sequence[str] = ()


def gradient_loop(eg: ExplainerGraph, walk: Walk, rows_per_iteration: int,
                  rules: RuleSet = GRADIENT) -> list[str]:
    """Run the walk with gradients seeded by the one-hot of eg's target at every point, and
    return the sums of its contributions. The model's outputs on the clean rows become the
    explainer's outputs (ExplainerGraph.outputs_from), and its nodes leave the outer graph.
    `rows_per_iteration` is the default of the input of that name (rows_per_iteration); a
    fixed batch axis runs one block of B rows per iteration instead (module docstring)."""
    b = eg.b
    if b.opset < 10:
        raise InputError(f"exported methods that run the model at many points per row "
                         f"(integrated_gradients, the noise tunnels) need opset 10 or newer "
                         f"(computed Slice); the model has opset {b.opset}")
    points = point_count(b, walk.points)
    fixed = not eg.model.batch.symbolic
    if fixed:  # a block of N = B rows per model run: the clean blocks, then a point each
        _unfix_rows(eg.proto.graph)
        k = b.ints([1])
        trips = b.op("Add", points, b.ints([walk.clean_blocks]))
    else:
        k, trips = points_per_iteration(b, points, rows_per_iteration_input(
            eg, rows_per_iteration), eg.rows)
    outputs = [spec.name for spec in eg.model.outputs]
    # The body defines the model's inputs and tensors: it reads such clean rows (a stem's
    # end) via aliases.
    model = walk.model
    defined = {spec.name for spec in model.inputs}
    defined |= {out for node in model.proto.graph.node for out in node.output}
    clean = aliases(eg, [value for value in walk.clean.values() if value in defined])
    clean = {name: clean.get(value, value) for name, value in walk.clean.items()}
    if fixed:
        body = _fixed_body(eg, walk, clean, outputs, rules)
    else:
        clean_rows = b.op("Mul", eg.rows, b.ints([walk.clean_blocks]))
        body = _body(eg, walk, clean, k, clean_rows, outputs, rules)
    blocks = walk.clean_blocks if fixed else 1
    initial = [b.zeros_like(like) for like in carried_like(walk)]
    initial += [placeholder(b, eg.model.infos.get(name)) for _ in range(blocks)
                for name in outputs]
    results = b.node("Loop", [b.reshape(trips, []), "", *initial], len(initial), body=body)
    sums, on_clean = results[:len(walk.sums_like)], results[len(carried_like(walk)):]
    for total, like in zip(sums, walk.sums_like, strict=True):
        b.infos[total] = b.info(like)
    for value, name in zip(on_clean, outputs * blocks, strict=True):
        b.infos[value] = eg.model.infos.get(name, TensorInfo(None, None))
    eg.outputs_from({name: _joined(b, on_clean[index::len(outputs)])
                     for index, name in enumerate(outputs)})
    eg.target()  # the same choice as the body's, from the same outputs
    return sums


def carried_like(walk: Walk) -> list[str]:
    """What the Loop carries, besides the clean outputs: the sums, then the state."""
    return [*walk.sums_like, *walk.state_like]


def carried_on(b: GraphBuilder, walk: Walk, carried: Sequence[str], parts: Sequence[str]
               ) -> list[str]:
    """The sums plus the chunk's parts, then the state the chunk left."""
    sums = len(walk.sums_like)
    return [*(b.op("Add", total, part) for total, part in
              zip(carried[:sums], parts[:sums], strict=True)), *parts[sums:]]


def rows_per_iteration_input(eg: ExplainerGraph, default: int) -> str:
    """The explainer input ROWS_PER_ITERATION (int64 scalar, default `default`): the rows one
    iteration of a Loop over points runs, points times N (at least one point)."""
    if int(default) < 1:
        raise InputError(f"rows per Loop iteration must be at least 1, got {default}")
    return eg.add_input(ROWS_PER_ITERATION, TensorProto.INT64, [],
                        np.array(int(default), np.int64),
                        "rows one Loop iteration runs (its points times the input rows, at "
                        "least one point): lower it to use less memory")


def points_per_iteration(b: GraphBuilder, points: str, rows: str, share: str
                         ) -> tuple[str, str]:
    """(k, trips): k of the `points` per iteration, each `share` rows (int64 [1] each), so
    an iteration runs about `rows` (at least one point); k is as even as the trips allow,
    the last iteration takes the rest."""
    most = int_max(b, b.ints([1]), b.op("Div", rows, share))
    trips = ceil_div(b, points, int_min(b, most, points))
    return ceil_div(b, points, trips), trips


def ceil_div(b: GraphBuilder, a: str, d: str) -> str:
    return b.op("Div", b.op("Add", a, b.op("Sub", d, b.ints([1]))), d)


def aliases(eg: ExplainerGraph, names: Sequence[str]) -> dict[str, str]:
    """Outer Identity copies of `names`: the body defines the model's tensor names itself
    (a model input included), so it reads those outer tensors under other names."""
    made = {}
    for name in names:
        made[name] = eg.b.op("Identity", name)
        eg.b.infos[made[name]] = eg.b.info(name)
    return made


def repeated(bb: GraphBuilder, chunk: Chunk, rows: str) -> str:
    """k blocks of the N `rows`, one per point of the chunk."""
    return bb.op("Tile", rows, bb.concat([chunk.k, bb.ints([1] * (bb.rank(rows) - 1))], 0))


def per_block(bb: GraphBuilder, values: str, like: str) -> str:
    """[k] -> [k, 1, ..., 1], broadcasting over blocks shaped like `like` ([N, ...])."""
    return bb.unsqueeze(values, list(range(1, bb.rank(like) + 1)))


def weighted_blocks(bb: GraphBuilder, chunk: Chunk, value: str, weights: str | None,
                    like: str) -> str:
    """sum_j weights[j] * value[block j] (or the plain sum): k blocks shaped like `like`
    ([N, ...]) summed."""
    blocks = bb.reshape(value, bb.concat([chunk.k, bb.ints([-1]), bb.dims(like, 1)], 0))
    if weights is not None:
        blocks = bb.op("Mul", blocks, per_block(bb, weights, like))
    return bb.reduce("ReduceSum", blocks, [0], False)


@dataclass
class Body:
    """A Loop body being built on a copy of `model`: its builder and graph (the model's
    nodes taken out, to be put back once their inputs are defined), the iteration counter,
    the condition and the carried sums."""

    bb: GraphBuilder
    graph: onnx.GraphProto
    step: str
    cond: str
    carried: list[str]
    model_nodes: list[onnx.NodeProto]
    weights: int  # the model's weight bytes (OUTER_WEIGHTS_FROM)


def body_on(eg: ExplainerGraph, model: Model, sums_like: Sequence[str]) -> Body:
    """A Body over a copy of `model`, one carried sum per tensor of `sums_like` (outer)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    return body_over(eg, proto, model.infos, sums_like)


def body_over(eg: ExplainerGraph, proto: onnx.ModelProto, infos: dict[str, TensorInfo],
              sums_like: Sequence[str], prefix: str = BODY_PREFIX) -> Body:
    """A Body over `proto` (the caller's: its nodes are taken out), whose tensors `infos`
    describes; fresh names start with `prefix` (one a nested body of `proto` does not use)."""
    bb = GraphBuilder(proto, {**infos, **eg.b.infos}, prefix=prefix)
    step, cond = bb.fresh("iteration"), bb.fresh("cond")
    carried = [bb.fresh("sum") for _ in sums_like]
    bb.infos[step] = TensorInfo(TensorProto.INT64, ())
    for name, like in zip(carried, sums_like, strict=True):
        bb.infos[name] = eg.b.info(like)
    model_nodes = list(proto.graph.node)
    del proto.graph.node[:]  # they run after the inputs are defined
    return Body(bb, proto.graph, step, cond, carried, model_nodes, payload_bytes(proto))


def _body(eg: ExplainerGraph, walk: Walk, clean: dict[str, str], k: str, clean_rows: str,
          outputs: list[str], rules: RuleSet) -> onnx.GraphProto:
    outer, model, likes = eg.b, walk.model, carried_like(walk)
    made = body_on(eg, model, likes)
    bb, graph, step, cond, carried = made.bb, made.graph, made.step, made.cond, made.carried
    model_nodes = made.model_nodes
    kept = [bb.fresh("clean") for _ in outputs]
    chunk = replace(_chunk(bb, step, k, walk.points), state=tuple(carried[len(walk.sums_like):]))
    first = bb.op("Equal", step, bb.const(np.array(0, np.int64)))
    # Iteration 0 runs the clean rows before its points, the others none.
    extra = bb.reshape(bb.where(first, bb.reshape(clean_rows, []),
                                bb.const(np.array(0, np.int64))), [1])
    _feed_model(bb, walk, clean, chunk, extra)
    graph.node.extend(model_nodes)
    clean_outputs = [first_or_kept(bb, first, bb.slice(name, [0], extra, [0]), previous,
                                    name) for name, previous in zip(outputs, kept, strict=True)]
    explained = clean_outputs[outputs.index(eg.output)]
    weights = eg.row_weights(bb, bb.slice(explained, [0], eg.rows, [0]), clean)
    # The clean rows are not explained: zero weights; each point its row's weights.
    unseeded = bb.op("Expand", bb.scalar(0.0, weights), bb.concat([extra, bb.dims(weights, 1)],
                                                                  0))
    seed = bb.concat([unseeded, repeated(bb, chunk, weights)], 0)
    grads = add_gradients(bb, {eg.output: seed}, list(walk.wrt), rules)
    at_grads = {name: bb.slice(grads[name], extra, [np.iinfo(np.int64).max], [0])
                for name in walk.wrt}
    updated = carried_on(bb, walk, carried, walk.contributions(bb, chunk, at_grads))
    for name, like in zip(updated, likes, strict=True):
        bb.infos[name] = outer.info(like)
    done = bb.op("Identity", cond)
    finish_gate_forwards(bb)  # the body's own gradient pass: its LSTMs too

    likes = [*likes, *outputs]
    return close_body(eg, made, f"{model.proto.graph.name}_points",
                      value_infos(bb, [*carried, *kept], likes),
                      [helper.make_tensor_value_info(done, TensorProto.BOOL, []),
                       *value_infos(bb, [*updated, *clean_outputs], likes)])


def _unfix_rows(graph: onnx.GraphProto) -> None:
    """Make the rows dim of the outer graph's declared value infos unknown: what the model
    computes there (an input's affine stem, a token lookup) runs on [x; x'], 2B rows, and
    ONNX Runtime would take a declared B for a fact."""
    for info in graph.value_info:
        shape = info.type.tensor_type.shape
        if info.type.HasField("tensor_type") and len(shape.dim):
            shape.dim[0].Clear()


def _joined(b: GraphBuilder, blocks: Sequence[str]) -> str:
    """An output's clean blocks (one per Loop iteration of a fixed batch) as one tensor, rows
    on axis 0 as the Loop's clean rows are."""
    if len(blocks) == 1:
        return blocks[0]
    joined = b.concat(list(blocks), 0)
    info = b.info(blocks[0])
    b.infos[joined] = TensorInfo(info.dtype, None if info.shape is None else
                                 (None, *info.shape[1:]))
    return joined


def _fixed_body(eg: ExplainerGraph, walk: Walk, clean: dict[str, str], outputs: list[str],
                rules: RuleSet) -> onnx.GraphProto:
    """The body for a model whose batch axis is fixed to B = N: every iteration runs the
    model on one block of N rows (iteration j < clean_blocks: clean block j, whose outputs
    it carries out; then one point each), as export.perturb runs its clean rows alone."""
    model, blocks = walk.model, walk.clean_blocks
    made = body_on(eg, model, carried_like(walk))
    bb, step = made.bb, made.step
    kept = [[bb.fresh("clean") for _ in outputs] for _ in range(blocks)]
    at_clean = bb.op("Less", step, bb.const(np.array(blocks, np.int64)))
    # The clean iterations make point 0 too (then leave it): the ops see one shape.
    point = int_max(bb, bb.op("Sub", bb.reshape(step, [1]), bb.ints([blocks])), bb.ints([0]))
    chunk = replace(_chunk(bb, bb.reshape(point, []), bb.ints([1]), walk.points),
                    state=tuple(made.carried[len(walk.sums_like):]))
    start = bb.op("Mul", int_min(bb, bb.reshape(step, [1]), bb.ints([blocks])), eg.rows)
    _feed_block(bb, walk, clean, chunk, start, eg.rows)
    made.graph.node.extend(made.model_nodes)
    on_clean = [[first_or_kept(bb, bb.op("Equal", step, bb.const(np.array(j, np.int64))),
                                name, previous, name)
                 for name, previous in zip(outputs, kept[j], strict=True)]
                for j in range(blocks)]
    weights = eg.row_weights(bb, on_clean[0][outputs.index(eg.output)], clean)
    grads = add_gradients(bb, {eg.output: weights}, list(walk.wrt), rules)
    parts = carried_on(bb, walk, made.carried, walk.contributions(bb, chunk, grads))
    updated = [bb.where(at_clean, before, after)  # no point there
               for before, after in zip(made.carried, parts, strict=True)]
    done = bb.op("Identity", made.cond)
    finish_gate_forwards(bb)  # the body's own gradient pass: its LSTMs too
    likes = [*carried_like(walk), *outputs * blocks]
    flat = [value for block in on_clean for value in block]
    return close_body(eg, made, f"{model.proto.graph.name}_points",
                      value_infos(bb, [*made.carried, *sum(kept, [])], likes),
                      [helper.make_tensor_value_info(done, TensorProto.BOOL, []),
                       *value_infos(bb, [*updated, *flat], likes)])


def _feed_block(bb: GraphBuilder, walk: Walk, clean: dict[str, str], chunk: Chunk,
                start: str, rows: str) -> None:
    """Define the model's inputs: `rows` rows of [clean; the chunk's point] from `start` (a
    clean block, else the point)."""
    at_points = walk.feeds(bb, chunk)
    for spec in walk.model.inputs:
        block = bb.slice(bb.concat([clean[spec.name], at_points[spec.name]], 0), start,
                         bb.op("Add", start, rows), [0])
        bb.graph.node.append(helper.make_node("Identity", [block], [spec.name],
                                              name=bb.fresh("feed_node")))
        bb.infos[spec.name] = walk.model.infos.get(spec.name, spec.info)


def _feed_model(bb: GraphBuilder, walk: Walk, clean: dict[str, str], chunk: Chunk,
                extra: str) -> None:
    """Define the model's inputs: the first `extra` clean rows, then the chunk's points."""
    at_points = walk.feeds(bb, chunk)
    for spec in walk.model.inputs:
        rows = bb.slice(clean[spec.name], [0], extra, [0])
        bb.graph.node.append(helper.make_node("Identity",
                                              [bb.concat([rows, at_points[spec.name]], 0)],
                                              [spec.name], name=bb.fresh("feed_node")))
        bb.infos[spec.name] = walk.model.infos.get(spec.name, spec.info)


def point_count(b: GraphBuilder, points: int | str) -> str:
    """Walk.points as an int64 [1] tensor."""
    return points if isinstance(points, str) else b.ints([points])


def _chunk(b: GraphBuilder, step: str, k: str, points: int | str) -> Chunk:
    """index = step * k + [0 .. count-1], count = min(k, the points left)."""
    from .random import indices  # 0 .. n-1 at any opset (Range from 11)

    first = b.op("Mul", b.reshape(step, [1]), k)
    count = int_min(b, k, b.op("Sub", point_count(b, points), first))
    return Chunk(b.op("Add", first, indices(b, count)), count)


def int_min(b: GraphBuilder, x: str, y: str) -> str:
    """The smaller of two int64 tensors: Min from opset 12, Where(Less) below."""
    if b.opset >= 12:
        return b.op("Min", x, y)
    return b.where(b.op("Less", x, y), x, y)


def int_max(b: GraphBuilder, x: str, y: str) -> str:
    """The larger of two int64 tensors: Max from opset 12, Where(Less) below."""
    if b.opset >= 12:
        return b.op("Max", x, y)
    return b.where(b.op("Less", x, y), y, x)


def first_or_kept(b: GraphBuilder, first: str, fresh: str, kept: str, like: str) -> str:
    """`fresh` in iteration 0, else what the Loop carried (an If: their shapes differ)."""
    branches = {}
    for label, value in (("then", fresh), ("else", kept)):
        out = b.fresh(f"{label}_value")
        branches[label] = helper.make_graph(
            [helper.make_node("Identity", [value], [out], name=b.fresh(f"{label}_node"))],
            b.fresh(f"{label}_branch"), [], [_value_info(b, out, like)])
    result = b.node("If", [first], 1, then_branch=branches["then"],
                    else_branch=branches["else"])[0]
    b.infos[result] = b.info(like)
    return result


def placeholder(b: GraphBuilder, info: TensorInfo | None) -> str:
    """An empty tensor of the output's type and rank: what the Loop carries into
    iteration 0, which replaces it."""
    if info is None or info.dtype is None or info.rank is None:
        raise ModelError("an exported explainer that loops over points needs the element "
                         "type and rank of every model output (shape inference left one "
                         "unknown)")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(info.dtype))
    return b.const(np.zeros((0,) * info.rank, dtype), "placeholder")


def _value_info(b: GraphBuilder, name: str, like: str) -> onnx.ValueInfoProto:
    """`name` typed as `like`, with `like`'s rank and no fixed dims (they change per run)."""
    info = b.info(like)
    rank = info.rank if info.rank is not None else b.rank(name)
    return helper.make_tensor_value_info(name, info.dtype or b.dtype(name), [None] * rank)


def close_body(eg: ExplainerGraph, made: Body, name: str, carried: list[onnx.ValueInfoProto],
               outputs: list[onnx.ValueInfoProto]) -> onnx.GraphProto:
    """The Loop body `made` has built, with inputs (iteration, condition, *`carried`) and
    `outputs`: only the nodes and weights the outputs are computed from (inside subgraphs
    too), a large model's weights left to the outer graph, and the names the outer graph
    defines renamed (a subgraph may not redefine them; the reads follow)."""
    graph = made.graph
    del graph.input[:], graph.output[:], graph.value_info[:]  # the model's, not the body's
    graph.name = name
    graph.input.extend([helper.make_tensor_value_info(made.step, TensorProto.INT64, []),
                        helper.make_tensor_value_info(made.cond, TensorProto.BOOL, []),
                        *carried])
    graph.output.extend(outputs)
    body = subgraph_to_ir(graph)
    remove_unused(body)
    _drop_outer_copies(eg, body)
    if made.weights >= OUTER_WEIGHTS_FROM:
        _weights_outside(eg, body)
    # The outer graph's outputs too: the model's are defined there once the Loop is.
    outer = defined_names(eg.proto.graph) | {value.name for value in eg.proto.graph.output}
    _rename_shadowing(body, outer)
    return onnx_ir.serde.serialize_graph(body)


def _drop_outer_copies(eg: ExplainerGraph, body: onnx_ir.Graph) -> None:
    """Remove the outer graph's initializers that the body holds (the model's weights, its
    nodes gone from there), in a Loop of its own too, where no outer node reads them: each
    weight is stored once."""
    graph = eg.proto.graph
    read = {name for node in graph.node for name in node_inputs(node)}
    read |= {value.name for value in [*graph.input, *graph.output]}
    held = {name for inner in (body, *body.subgraphs()) for name in inner.initializers}
    kept = [init for init in graph.initializer if init.name in read or init.name not in held]
    if len(kept) < len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _weights_outside(eg: ExplainerGraph, body: onnx_ir.Graph) -> None:
    """Move the body's weights to the outer graph (once), which the body then reads."""
    outer = {init.name for init in eg.proto.graph.initializer}
    for name, value in list(body.initializers.items()):
        if name not in outer:
            eg.proto.graph.initializer.append(onnx_ir.serde.serialize_tensor(value.const_value))
        del body.initializers[name]


def value_infos(b: GraphBuilder, names: Sequence[str], likes: Sequence[str]
                 ) -> list[onnx.ValueInfoProto]:
    return [_value_info(b, name, like) for name, like in zip(names, likes, strict=True)]


def _rename_shadowing(body: onnx_ir.Graph, outer: set[str]) -> None:
    """A subgraph may not redefine a name of its enclosing graph: the body computes the
    model's tensors under their own names, so those get a prefix (its reads, in nested
    subgraphs too, are the same values; a nested graph's own definitions keep theirs)."""
    for value in defined(body):
        if value.name in outer:
            value.name = f"{BODY_PREFIX}/{value.name}"
