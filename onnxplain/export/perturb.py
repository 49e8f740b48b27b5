"""The perturbation methods' forward Loop: the model evaluated on P perturbed copies of each
row, k copies per iteration, so memory stays flat in P; the copies are made inside the body
from the iteration's indices (a method's callback), and the scores of the explained output
on them are summed into per-row totals (another callback: score x mask for RISE), or
stacked into an [N, P] table of every copy's score (Perturbation.table: Kernel SHAP and
LIME regress on it, occlusion spreads each window's drop after the Loop).

The clean rows run once, in iteration 0, alone (a fixed batch axis or coupled rows see the
rows the model would): they give the original outputs (of any type) and the explained score
at x; the model's nodes and weights are the body's only, stored once. The objective is the
graph's (the `target` input, an output seed, a dense objective:
ExplainerGraph.row_weights), so the score is the one the gradient methods explain; a label
output (an ArgMax head) scores whether a copy's label is the explained class. Iteration i >
0 runs copies (i-1)*k .. i*k-1, each over all N rows (block after block, as export.loop
lays them out), with k at most max(1, rows // N), spread evenly over the iterations; `rows`
is the explainer input ROWS_PER_ITERATION (export.loop; exported default LOOP_ROWS), which
in-process runs feed: 1 for a model whose batch axis is fixed or whose rows are coupled,
and after a model failed on more rows than it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import InputError
from ..graph.attention import cached_inputs
from ..graph.builder import GraphBuilder
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..objective import LABELS, output_form
from .graph import FED, TARGET, TARGET_USED, ExplainerGraph, is_fed
from .loop import (
    Chunk,
    _chunk,
    aliases,
    body_on,
    close_body,
    first_or_kept,
    int_max,
    placeholder,
    points_per_iteration,
    repeated,
    rows_per_iteration_input,
    value_infos,
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


def perturbation_loop(eg: ExplainerGraph, perturbation: Perturbation) -> PerturbRun:
    """Run the clean rows and then `perturbation`'s copies through the model in a Loop
    (module docstring); the model's outputs on the clean rows become the explainer's."""
    b = eg.b
    if perturbation.points < 1:
        raise InputError("the number of perturbed copies must be at least 1")
    outputs = [spec.name for spec in eg.model.outputs]
    # Outputs that are no tensors (ZipMap's maps) cannot leave the Loop: the model's nodes
    # then stay in the outer graph too, computing them there (its weights stored twice),
    # and the Loop carries the explained output only (its body's objective reads it).
    carried = all(_is_tensor(eg.model.infos.get(name)) for name in outputs)
    if carried:
        _drop_model_nodes(eg)
    else:
        outputs = [eg.output]
    points = b.ints([perturbation.points])
    from . import LOOP_ROWS  # the package imports the builders

    rows = rows_per_iteration_input(eg, LOOP_ROWS)  # in-process: fed
    k, trips = points_per_iteration(b, points, rows, eg.rows)
    clean = aliases(eg, [spec.name for spec in eg.model.inputs])
    body = _body(eg, perturbation, clean, k, outputs)
    initial = [*perturbation.sums, *(placeholder(b, eg.model.infos.get(name))
                                     for name in outputs),
               placeholder(b, TensorInfo(TensorProto.DOUBLE, (None,)))]  # the clean score
    found = b.node("Loop", [b.reshape(b.op("Add", trips, b.ints([1])), []), "", *initial],
                   len(initial) + perturbation.table, body=body)
    sums = found[:len(perturbation.sums)]
    for total, like in zip(sums, perturbation.sums, strict=True):
        b.infos[total] = b.info(like)
    for value, name in zip(found[len(sums):len(initial) - 1], outputs, strict=True):
        b.infos[value] = eg.model.infos.get(name, TensorInfo(None, None))
        if carried:  # the explainer's original outputs
            eg.proto.graph.node.append(helper.make_node("Identity", [value], [name],
                                                        name=b.fresh("clean_output")))
    score = found[len(initial) - 1]
    b.infos[score] = TensorInfo(TensorProto.DOUBLE, (None,))
    _declare_objective(eg)
    table = None
    if perturbation.table:  # [1 + trips, N, k] -> [N, trips * k], the last columns padding
        b.infos[found[-1]] = TensorInfo(TensorProto.DOUBLE, (None, None, None))
        copies = b.slice(found[-1], [1], [np.iinfo(np.int64).max], [0])  # not iteration 0
        rows = b.op("Transpose", copies, perm=[1, 0, 2])
        table = b.slice(b.reshape(rows, b.concat([eg.rows, b.ints([-1])], 0)), [0],
                        [perturbation.points], [1])
    return PerturbRun(sums, score, table)


def _is_tensor(info: TensorInfo | None) -> bool:
    """A value the Loop can carry: a tensor of known element type and rank."""
    return info is not None and info.dtype is not None and info.rank is not None


def _drop_model_nodes(eg: ExplainerGraph) -> None:
    """Take the model's nodes out of the outer graph (the body runs them): the first ones,
    as ExplainerGraph copied them; what the builders emitted before reads inputs only."""
    graph, model_nodes = eg.proto.graph.node, eg.model.proto.graph.node
    if eg.copies != 1 or [list(node.output) for node in graph[:len(model_nodes)]] != \
            [list(node.output) for node in model_nodes]:
        raise RuntimeError("the model's nodes are taken out of the outer graph once, first")
    del graph[:len(model_nodes)]


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
    """The explained score in the body: `clean` (double [N]) and `of_copies`, emitting the
    scores [N, k] of k blocks of N rows of the explained output."""

    clean: str
    of_copies: Callable[[GraphBuilder, str, Chunk], str]


def _objective(eg: ExplainerGraph, b: GraphBuilder, output: str,
               inputs: dict[str, str] | None = None) -> _Objective:
    """The graph's objective on `output`, the explained output at the clean rows (in the
    body, where `inputs` are the inputs' clean rows), and how copies are scored with it."""
    if output_form(eg.model, eg.output) == LABELS:
        return _label_objective(eg, b, output)
    if not eg.scores:
        raise InputError(f"output '{eg.output}' is not a [batch, classes] float output, "
                         "class labels nor scores per position; explain another output "
                         "(--output) or give an output seed")
    weights = b.op("Cast", eg.row_weights(b, output, inputs), to=TensorProto.DOUBLE)

    def of_copies(bb: GraphBuilder, output: str, chunk: Chunk) -> str:
        flat = bb.reshape(weights, bb.concat([eg.rows, bb.ints([-1])], 0))  # [N, C]
        wide = bb.op("Cast", output, to=TensorProto.DOUBLE)
        blocks = bb.reshape(wide, bb.concat([chunk.k, eg.rows, bb.ints([-1])], 0))
        summed = bb.reduce("ReduceSum", bb.op("Mul", blocks, flat), [2], False)  # [k, N]
        return bb.op("Transpose", summed, perm=[1, 0])

    rank = b.rank(output)
    clean = b.op("Mul", b.op("Cast", output, to=TensorProto.DOUBLE), weights)
    if rank > 1:
        clean = b.reduce("ReduceSum", clean, list(range(1, rank)), False)
    return _Objective(clean, of_copies)


def _declare_objective(eg: ExplainerGraph) -> None:
    """The objective's inputs and outputs in the outer graph (the `target` input, an output
    seed, `target_used`: the classes chosen from the Loop's clean outputs, as the body did)."""
    if output_form(eg.model, eg.output) != LABELS:
        eg.target()
        return
    eg.declare(eg.b.op("Cast", _chosen_labels(eg, eg.b, eg.output)[1], to=TensorProto.INT64),
               TARGET_USED, "int64 [N]: the class each row was explained for",
               TensorInfo(TensorProto.INT64, ("N",)))


def _chosen_labels(eg: ExplainerGraph, b: GraphBuilder, output: str) -> tuple[str, str]:
    """The labels of `output` and the explained class per row: the `target` input where it
    is >= 0, else the label."""
    eg.declare_target()  # the target input, declared as the class methods'
    labels = _decisions(b, output)
    given = b.op("Expand", TARGET, b.shape(labels))
    return labels, b.where(b.op("Less", given, b.ints([0])), labels,
                           b.op("Cast", given, to=b.dtype(labels)))


def _label_objective(eg: ExplainerGraph, b: GraphBuilder, output: str) -> _Objective:
    """Labels [N] (or the first of [N, k]): a copy scores 1 where its label is the
    explained class (the `target` input where >= 0, else the clean row's label)."""
    labels, chosen = _chosen_labels(eg, b, output)

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


def _body(eg: ExplainerGraph, perturbation: Perturbation, clean: dict[str, str], k: str,
          outputs: list[str]) -> onnx.GraphProto:
    outer, model = eg.b, eg.model
    made = body_on(eg, model, perturbation.sums)
    bb, graph, carried = made.bb, made.graph, made.carried
    kept = [bb.fresh("clean") for _ in outputs]
    kept_score = bb.fresh("clean_score")  # carried out only: each iteration recomputes it
    first = bb.op("Equal", made.step, bb.const(np.array(0, np.int64)))
    # Iteration i > 0 runs chunk i - 1; iteration 0 the clean rows instead of a chunk of one
    # copy (made, then left: the copies' ops see no other shapes).
    before = int_max(bb, bb.op("Sub", made.step, bb.const(np.array(1, np.int64))),
                     bb.const(np.array(0, np.int64)))
    chunk = _chunk(bb, before, bb.where(first, bb.ints([1]), k), perturbation.points)
    _feed_model(bb, model, first, chunk, perturbation.perturb(bb, chunk, dict(clean)), clean)
    graph.node.extend(made.model_nodes)
    clean_outputs = [first_or_kept(bb, first, name, previous, name)
                     for name, previous in zip(outputs, kept, strict=True)]
    score = _objective(eg, bb, clean_outputs[outputs.index(eg.output)], clean)
    scores = Scores(score.of_copies(bb, eg.output, chunk), score.clean)
    parts = perturbation.contributions(bb, chunk, scores)
    updated = [bb.where(first, total, bb.op("Add", total, part))  # iteration 0 adds nothing
               for total, part in zip(carried, parts, strict=True)]
    scanned = [_scanned(bb, chunk, scores, k)] if perturbation.table else []
    done = bb.op("Identity", made.cond)
    return close_body(
        eg, made, f"{model.proto.graph.name}_copies",
        [*_carried_infos(outer, carried, perturbation.sums),
         *value_infos(bb, kept, outputs),
         helper.make_tensor_value_info(kept_score, TensorProto.DOUBLE, [None])],
        [helper.make_tensor_value_info(done, TensorProto.BOOL, []),
         *_carried_infos(outer, updated, perturbation.sums),
         *value_infos(bb, clean_outputs, outputs),
         helper.make_tensor_value_info(score.clean, TensorProto.DOUBLE, [None]),
         *(helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None, None])
           for name in scanned)])


def _feed_model(bb: GraphBuilder, model: Model, first: str, chunk: Chunk,
                copies: dict[str, str], clean: dict[str, str]) -> None:
    """Define the model's inputs: the clean rows in iteration 0, else the chunk's copies
    (of the inputs `copies` does not change, the rows repeated)."""
    axes = model.batch.of_inputs
    for spec in model.inputs:
        axis = axes.get(spec.name, 0)
        value = copies[spec.name] if spec.name in copies else \
            _repeated(bb, chunk, clean[spec.name], axis)
        fed = _clean_first(bb, first, clean[spec.name], value, axis)
        bb.graph.node.append(helper.make_node("Identity", [fed], [spec.name],
                                              name=bb.fresh("feed_node")))
        bb.infos[spec.name] = model.infos.get(spec.name, spec.info)


def _clean_first(bb: GraphBuilder, first: str, clean: str, copies: str, axis: int | None
                 ) -> str:
    """The clean rows in iteration 0, else the copies: each tiled once or not at all along
    the rows axis. (Through an If, shape inference at opset 9 gave the copies the clean rows'
    symbolic batch dim, and ONNX Runtime reused a buffer of N rows for k * N.)"""
    rank = bb.rank(clean)
    if axis is None or rank == 0:  # not per row: the copies are the clean value
        return clean
    once = bb.reshape(bb.op("Cast", first, to=TensorProto.INT64), [1])
    times = []
    for count in (once, bb.op("Sub", bb.ints([1]), once)):
        repeats = [bb.ints([1])] * rank
        repeats[axis] = count
        times.append(bb.concat(repeats, 0))
    return bb.concat([bb.op("Tile", clean, times[0]), bb.op("Tile", copies, times[1])], axis)


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

def perturbed_input(model: Model, name: object, ranks: Mapping[str, int] | None = None
                    ) -> str:
    """The input the copies change, in process and exported alike: `name`, else the first
    float input that is no KV cache (graph.attention.cached_inputs), else the first integer
    input of rank 2 (token ids [batch, tokens]; `ranks`: the fed arrays' ranks, for inputs
    declared without one). Perturbed inputs have their rows on axis 0."""
    specs = {spec.name: spec for spec in model.inputs}
    if name is not None:
        if not isinstance(name, str):
            raise InputError(f"option 'input' names an input ({', '.join(specs)}), got a "
                             f"value of type {type(name).__name__}")
        if name not in specs:
            raise InputError(f"unknown input '{name}' (inputs: {', '.join(specs)})")
        axis = model.batch.of_inputs.get(name, 0)
        if axis not in (0, None):
            raise InputError(f"input '{name}' has its rows on axis {axis}; perturbation "
                             "methods perturb inputs batched on axis 0")
        return name
    cached = cached_inputs(model)
    for spec in specs.values():
        if spec.is_float and spec.name not in cached:
            return spec.name
    ranks = ranks or {}
    for spec in specs.values():
        rank = ranks.get(spec.name, None if spec.dims is None else len(spec.dims))
        if not spec.is_float and rank == 2:
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
