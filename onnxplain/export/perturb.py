"""The perturbation methods' forward Loop: the model evaluated on P perturbed copies of each
row, k copies per iteration, so memory stays flat in P; the copies are made inside the body
from the iteration's indices (a method's callback), and the scores of the explained output
on them are summed into per-row totals (another callback: score x mask for RISE and
occlusion), or stacked into an [N, P] table of every copy's score (Perturbation.table: the
regression methods).

The clean rows run once, in the outer graph, as the model itself: they give the original
outputs (of any type) and the explained score at x. The objective is the graph's (the
`target` input, an output seed, a dense objective: ExplainerGraph.row_weights), so the
score is the one the gradient methods explain; a label output (an ArgMax head) scores
whether a copy's label is the explained class. Iteration i runs copies i*k .. i*k+k-1,
each over all N rows (block after block, as export.loop lays them out), with k at most
max(1, rows // N), spread evenly over the iterations; `rows` is the explainer input
ROWS_PER_ITERATION (export.loop; default rows_per_run), which in-process runs feed: 1 for a
model whose batch axis is fixed or whose rows are coupled, and after a model failed on more
rows than it was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import InputError
from ..graph.attention import cached_inputs
from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from ..graph.walk import ancestors, defined_names, used_initializers
from ..objective import LABELS, output_form
from .graph import FED, TARGET, TARGET_USED, ExplainerGraph, is_fed
from .loop import (
    Chunk,
    _ceil_div,
    _chunk,
    _owned_weights,
    _rename_shadowing,
    aliases,
    body_on,
    int_max,
    int_min,
    repeated,
    rows_per_iteration_input,
)

SCORE = "score"


@dataclass(frozen=True)
class Scores:
    """What a chunk's contributions read: `copies` double [N, k], the explained score of
    each of the chunk's copies of each row (column j: copy chunk.index[j]); `clean` double
    [N], the score at the row itself (an outer tensor: the body reads it as it is)."""

    copies: str
    clean: str


# Emits, inside the body, the perturbed copies of the chunk: {model input: k blocks of N
# rows} for the inputs it changes (the others are repeated), from `clean` (model input ->
# its N clean rows, readable in the body).
Perturb = Callable[[GraphBuilder, Chunk, dict[str, str]], dict[str, str]]
# Emits a chunk's addition to each loop-carried sum, from the scores of its copies.
Contributions = Callable[[GraphBuilder, Chunk, Scores], list[str]]


@dataclass(frozen=True)
class Perturbation:
    """`points` perturbed copies per row made by `perturb`, and `sums`: outer tensors, the
    initial values of the totals `contributions` adds to (zeros(): their type and rank are
    what the Loop carries)."""

    points: int
    perturb: Perturb
    contributions: Contributions
    sums: Sequence[str]
    table: bool = False  # also every copy's score, [N, P] (PerturbRun.table)


@dataclass(frozen=True)
class PerturbRun:
    """The totals after every copy (outer tensors, as `sums`), and the explained score at
    the clean rows, double [N]."""

    sums: list[str]
    clean: str
    table: str | None = None  # with Perturbation.table: the scores of every copy, [N, P]


def perturbation_loop(eg: ExplainerGraph, perturbation: Perturbation, rows_per_run: int
                      ) -> PerturbRun:
    """Run `perturbation`'s copies through the model in a Loop (module docstring); the
    model's own nodes stay in the outer graph, on the clean rows."""
    b = eg.b
    if perturbation.points < 1:
        raise InputError("the number of perturbed copies must be at least 1")
    score = _objective(eg)
    points = b.ints([perturbation.points])
    rows = rows_per_iteration_input(eg, rows_per_run)  # in-process: fed
    most = int_max(b, b.ints([1]), b.op("Div", rows, eg.rows))
    trips = _ceil_div(b, points, int_min(b, most, points))
    k = _ceil_div(b, points, trips)
    clean = aliases(eg, [spec.name for spec in eg.model.inputs])
    initial = list(perturbation.sums)
    if not initial and b.opset < 11:  # Loop-1 carries at least one value: a zero, kept
        perturbation = dataclasses.replace(
            perturbation, sums=[zeros(b, [1])],
            contributions=lambda bb, chunk, scores: [bb.const(np.zeros(1), "zero")])
    body = _body(eg, perturbation, score, clean, k)
    found = b.node("Loop", [b.reshape(trips, []), "", *perturbation.sums],
                   len(perturbation.sums) + perturbation.table, body=body)
    sums = found[:len(initial)]
    for total, like in zip(sums, initial, strict=True):
        b.infos[total] = b.info(like)
    table = None
    if perturbation.table:  # [trips, N, k] -> [N, trips * k], the last columns padding
        b.infos[found[-1]] = TensorInfo(TensorProto.DOUBLE, (None, None, None))
        rows = b.op("Transpose", found[-1], perm=[1, 0, 2])
        table = b.slice(b.reshape(rows, b.concat([eg.rows, b.ints([-1])], 0)), [0],
                        [perturbation.points], [1])
    return PerturbRun(sums, score.clean, table)


def zeros(b: GraphBuilder, dims: Sequence[int | str], dtype=np.float64) -> str:
    """A zero tensor of `dims` (an int, or a 1-element int64 tensor such as eg.rows):
    the start of a loop-carried sum."""
    parts = [b.ints([d]) if isinstance(d, int | np.integer) else d for d in dims]
    shape = b.concat(parts, 0) if parts else b.ints([])
    out = b.op("Expand", b.const(np.zeros((), dtype), "zero"), shape)
    static = tuple(int(d) if isinstance(d, int | np.integer) else None for d in dims)
    b.infos[out] = TensorInfo(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), static)
    return out


def remainder(b: GraphBuilder, x: str, d: str) -> str:
    """x mod d for int64 x >= 0, d > 0: Mod from opset 10, x - (x / d) * d below (the same
    integers: Div truncates, which is flooring here)."""
    if b.opset >= 10:
        return b.op("Mod", x, d)
    return b.op("Sub", x, b.op("Mul", b.op("Div", x, d), d))


def _scanned(bb: GraphBuilder, chunk: Chunk, scores: Scores, k: str) -> str:
    """The chunk's scores [N, count] padded to k columns (the last iteration may run fewer):
    the Loop stacks them, each copy's score once, with no [N, P] table per iteration."""
    short = bb.op("Sub", k, chunk.k)
    padding = bb.op("Expand", bb.const(np.zeros((), np.float64), "zero"),
                    bb.concat([bb.dims(scores.copies, 0, 1), short], 0))
    return bb.concat([scores.copies, padding], 1)


@dataclass(frozen=True)
class _Objective:
    """The explained score: `clean` (outer, double [N]) and `of_copies`, emitting the
    scores [N, k] of k blocks of N rows of the explained output inside the body."""

    clean: str
    of_copies: Callable[[GraphBuilder, str, Chunk], str]


def _objective(eg: ExplainerGraph) -> _Objective:
    """The graph's objective on the clean rows, and how copies are scored with it."""
    b = eg.b
    if output_form(eg.model, eg.output) == LABELS:
        return _label_objective(eg)
    if not eg.scores:
        raise InputError(f"output '{eg.output}' is not a [batch, classes] float output, "
                         "class labels nor scores per position; explain another output "
                         "(--output) or give an output seed")
    weights = b.op("Cast", eg.row_weights(b, eg.output), to=TensorProto.DOUBLE)
    flat = b.reshape(weights, b.concat([eg.rows, b.ints([-1])], 0))  # [N, C]

    def of_copies(bb: GraphBuilder, output: str, chunk: Chunk) -> str:
        wide = bb.op("Cast", output, to=TensorProto.DOUBLE)
        blocks = bb.reshape(wide, bb.concat([chunk.k, eg.rows, bb.ints([-1])], 0))
        summed = bb.reduce("ReduceSum", bb.op("Mul", blocks, flat), [2], False)  # [k, N]
        return bb.op("Transpose", summed, perm=[1, 0])

    rank = b.rank(eg.output)
    clean = b.op("Mul", b.op("Cast", eg.output, to=TensorProto.DOUBLE), weights)
    if rank > 1:
        clean = b.reduce("ReduceSum", clean, list(range(1, rank)), False)
    return _Objective(clean, of_copies)


def _label_objective(eg: ExplainerGraph) -> _Objective:
    """Labels [N] (or the first of [N, k]): a copy scores 1 where its label is the
    explained class (the `target` input where >= 0, else the clean row's label)."""
    b = eg.b
    eg._declare_target()  # noqa: SLF001 - the target input, declared as the class methods'
    labels = _decisions(b, eg.output)
    given = b.op("Expand", TARGET, b.shape(labels))
    chosen = b.where(b.op("Less", given, b.ints([0])), labels,
                     b.op("Cast", given, to=b.dtype(labels)))
    used = b.op("Cast", chosen, to=TensorProto.INT64)
    eg.declare(used, TARGET_USED, "int64 [N]: the class each row was explained for",
               TensorInfo(TensorProto.INT64, ("N",)))

    def of_copies(bb: GraphBuilder, output: str, chunk: Chunk) -> str:
        found = bb.reshape(_decisions(bb, output), bb.concat([chunk.k, eg.rows], 0))
        hit = bb.op("Cast", bb.op("Equal", found, chosen), to=TensorProto.DOUBLE)
        return bb.op("Transpose", hit, perm=[1, 0])

    clean = b.op("Cast", b.op("Equal", labels, chosen), to=TensorProto.DOUBLE)
    return _Objective(clean, of_copies)


def _decisions(b: GraphBuilder, output: str) -> str:
    """The label per row: the output [N], or the first column of [N, k]."""
    if b.rank(output) == 1:
        return output
    return b.squeeze(b.slice(output, [0], [1], [1]), [1])


def _body(eg: ExplainerGraph, perturbation: Perturbation, score: _Objective,
          clean: dict[str, str], k: str) -> onnx.GraphProto:
    outer, model = eg.b, eg.model
    made = body_on(eg, model, perturbation.sums)
    bb, graph, step, cond, carried = made.bb, made.graph, made.step, made.cond, made.carried
    model_nodes = made.model_nodes
    chunk = _chunk(bb, step, k, perturbation.points)
    made = perturbation.perturb(bb, chunk, dict(clean))
    axes = model.batch.of_inputs
    for spec in model.inputs:
        value = made[spec.name] if spec.name in made else \
            _repeated(bb, chunk, clean[spec.name], axes.get(spec.name, 0))
        graph.node.append(helper.make_node("Identity", [value], [spec.name],
                                           name=bb.fresh("feed_node")))
        bb.infos[spec.name] = model.infos.get(spec.name, spec.info)
    graph.node.extend(model_nodes)
    scores = Scores(score.of_copies(bb, eg.output, chunk), score.clean)
    parts = perturbation.contributions(bb, chunk, scores)
    updated = [bb.op("Add", total, part) for total, part in zip(carried, parts, strict=True)]
    scanned = [_scanned(bb, chunk, scores, k)] if perturbation.table else []
    done = bb.op("Identity", cond)
    nodes = ancestors(graph.node, [done, *updated, *scanned])
    body = helper.make_graph(
        nodes, f"{model.proto.graph.name}_copies",
        [helper.make_tensor_value_info(step, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond, TensorProto.BOOL, []),
         *_carried_infos(outer, carried, perturbation.sums)],
        [helper.make_tensor_value_info(done, TensorProto.BOOL, []),
         *_carried_infos(outer, updated, perturbation.sums),
         *(helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None, None])
           for name in scanned)],
        _owned_weights(eg, model, used_initializers(graph, nodes)))
    _rename_shadowing(body, defined_names(eg.proto.graph))
    return body


def _repeated(bb: GraphBuilder, chunk: Chunk, rows: str, axis: int | None) -> str:
    """k blocks of an input's N rows along its own rows axis (an input not per row, such as
    a scalar, as it is)."""
    rank = bb.rank(rows)
    if axis is None or rank == 0:
        return rows
    if axis == 0:
        return repeated(bb, chunk, rows)
    repeats = [bb.ints([1])] * rank
    repeats[axis] = chunk.k
    return bb.op("Tile", rows, bb.concat(repeats, 0))


def _carried_infos(b: GraphBuilder, names: Sequence[str], likes: Sequence[str]
                   ) -> list[onnx.ValueInfoProto]:
    """Each sum typed as its initial value, of its rank, no fixed dims."""
    return [helper.make_tensor_value_info(name, b.dtype(like), [None] * b.rank(like))
            for name, like in zip(names, likes, strict=True)]


# ---- what the perturbation methods' builders share ----------------------------------------

def perturbed_name(eg: ExplainerGraph, options: dict) -> str:
    """The input the copies change: options["input"] (in-process: the one resolved on the
    feeds, methods._perturb.perturbed_input), else the first float input that is no KV
    cache, else the first integer input shaped [batch, tokens]."""
    specs = {spec.name: spec for spec in eg.model.inputs}
    name = options.get("input")
    if name is not None:
        if name not in specs:
            raise InputError(f"unknown input '{name}' (inputs: {', '.join(specs)})")
        axis = eg.model.batch.of_inputs.get(name, 0)
        if axis not in (0, None):
            raise InputError(f"input '{name}' has its rows on axis {axis}; perturbation "
                             "methods perturb inputs batched on axis 0")
        return name
    cached = cached_inputs(eg.model)
    for spec in specs.values():
        if spec.is_float and spec.name not in cached:
            return spec.name
    for spec in specs.values():
        if not spec.is_float and spec.dims is not None and len(spec.dims) == 2:
            return spec.name
    raise InputError("no float or token-id input to perturb; name one with input=NAME")


def row_shape(eg: ExplainerGraph, name: str, options: dict) -> tuple[int, ...]:
    """The shape of one row of input `name`: in-process the feeds' (options["row_shape"]),
    exported the declared one, which must then be fixed (the copies are built for it)."""
    if options.get("row_shape") is not None:
        return tuple(int(d) for d in options["row_shape"])
    dims = eg.model.inputs[[s.name for s in eg.model.inputs].index(name)].dims
    if dims is None or not all(isinstance(d, int) for d in dims[1:]):
        shown = "unknown" if dims is None else list(dims)
        raise InputError(f"exporting this method needs a fixed row shape of input '{name}' "
                         f"(declared {shown}): its windows or masks are built for one shape; "
                         "re-export the model with fixed dims besides the batch axis")
    return tuple(dims[1:])


def baseline_row(eg: ExplainerGraph, name: str, row: tuple[int, ...], options: dict,
                 broadcast: Callable[[object, np.ndarray], np.ndarray]) -> dict:
    """baseline_input's options: FED in-process (the runs feed it), else the exported
    baseline as one row, checked and broadcast by the method's own `broadcast(baseline,
    one zero row)`."""
    if is_fed(options["baseline"]):
        return {"baseline": FED}
    like = np.zeros((1, *row), eg.b.np_dtype(name))
    return {"baseline": np.ascontiguousarray(broadcast(options["baseline"], like)
                                             ).reshape(like.shape)}


def rows_per_iteration(options: dict) -> int:
    """The default of the rows one iteration runs (the ROWS_PER_ITERATION input, which
    in-process runs feed): options["internal_batch_size"], else export's LOOP_ROWS."""
    from . import LOOP_ROWS  # the package imports the builders

    return int(options.get("internal_batch_size") or LOOP_ROWS)
