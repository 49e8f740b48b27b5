"""In-process runs of a method's one graph: the program `export` saves (export.emit_explainer),
run by the engine over the rows in chunks and read back as a GradientRun, so an exported
explainer and Explainer.explain compute the same numbers from the same ONNX program."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from ..export import ATTRIBUTION, EXPORTS, LOOP_ROWS, TARGET, TARGET_USED, emit_explainer
from ..export.graph import FED
from ..export.loop import ROWS_PER_ITERATION
from ..export.seed import OUTPUT_SEED
from ..graph.sources import Source
from ..inputs import batch_size, check_target_range, prepare_target
from ..objective import EVERYWHERE
from ..runtime.engine import Engine, GradientRun


def loop_rows(engine: Engine, feeds: Mapping[str, np.ndarray], internal_batch_size: int) -> int:
    """Rows per iteration of a method's Loop: `internal_batch_size` (0: the engine's policy,
    RunPolicy.loop_rows)."""
    return engine.policy.derive(rows_per_iteration=int(internal_batch_size)).loop_rows(
        engine.model, feeds)


def rows_fed(engine: Engine, feeds: Mapping[str, np.ndarray], options: Mapping
             ) -> tuple[Mapping, dict[str, np.ndarray]]:
    """(the options a program is built and keyed by, the feed that carries the rest): a Loop
    method's `internal_batch_size` becomes its ROWS_PER_ITERATION input (loop_rows). The
    builders read that option only as the input's default (export.loop.gradient_loop; the
    perturbation Loops not at all; a gradient Loop over a fixed batch axis declares no such
    input), and an in-process run feeds it, so the program does not depend on the value: it
    is built with export's LOOP_ROWS, the very program `export` saves for
    internal_batch_size 0 (methods.export_options.exported_options), one program for every value."""
    if "internal_batch_size" not in options:
        return options, {}
    rows = loop_rows(engine, feeds, options["internal_batch_size"])
    return ({**options, "internal_batch_size": LOOP_ROWS},
            {ROWS_PER_ITERATION: np.array(rows, np.int64)})


def options_key(options: Mapping) -> tuple:
    """Resolved options as a cache key: arrays (baselines) by dtype, shape and a digest of
    their bytes, dicts of them by name, so equal options find the program already built."""
    return tuple((name, _hashable(value)) for name, value in sorted(options.items()))


def _hashable(value):
    if isinstance(value, np.ndarray | list):
        array = np.ascontiguousarray(value)
        return ("array", array.dtype.str, array.shape,
                hashlib.blake2b(array.tobytes(), digest_size=16).hexdigest())
    if isinstance(value, Mapping):
        return ("dict", options_key(value))
    return value


def graph_run(engine: Engine, method: str, feeds: Mapping[str, np.ndarray], target,
              sources: Sequence[Source], options: Mapping,
              fed: Mapping[str, np.ndarray] | None = None, read: Sequence[str] = (),
              specialise: bool = True) -> GradientRun:
    """Run `method`'s explainer graph (resolved `options`) on `feeds` for `target` (a class
    per row or None, an OutputSeed, or a DenseObjective), attributing at `sources`. `fed`:
    the method's own program inputs (one row per row: a baseline), so an array option is
    no part of the program's key; `read`: the method's outputs (one row per row: a
    convergence delta) returned in GradientRun.post; `specialise` False: the generic
    program only (a Loop body runs the model on other row counts than the input shapes').
    A Loop method's rows per iteration are fed, one program for every value (rows_fed)."""
    if not EXPORTS[method].any_output:  # activation maps explain no score: labels will do
        engine.check_scores()
    options, rows = rows_fed(engine, feeds, options)
    fed = {**(fed or {}), **rows}
    split = engine.split_target(target)
    seed, dense = split.seed, split.dense
    place = EVERYWHERE if dense is None else dense.place
    at = {source.input: source.tensor for source in sources}
    key = ("graph", method, engine.output, options_key(options), seed is not None,
           place, tuple(at.items()))

    def emit(model):
        return _weights_in_bodies(emit_explainer(
            model, method, dict(options), engine.output,
            output_seed=None if seed is None else FED, place=place, sources=at).proto,
            model)

    chosen = split.classes
    rows = batch_size(feeds, engine.model.batch.of_inputs)
    extra = {TARGET: prepare_target(chosen, rows, split.count)}
    if seed is not None:
        extra[OUTPUT_SEED] = seed
    extra.update(fed)
    model_outputs = list(engine.tensor_outputs)  # as Engine.forward returns them
    wanted = [*model_outputs, *(ATTRIBUTION + name for name in at), TARGET_USED, *read]

    def names(session) -> list[str]:
        return [name for name in wanted if name in session.output_names]

    axes = {ATTRIBUTION + name: engine.model.batch.of_inputs.get(tensor, 0)
            for name, tensor in at.items()}
    results = engine.run_program(key, emit, feeds, extra, names, axes, specialise)
    used = results.get(TARGET_USED)
    scores = results.get(engine.output)
    if used is not None and chosen is not None and scores is not None and scores.ndim >= 2:
        check_target_range(used, scores.shape[1])  # labels ([N]): any class may be asked
    return GradientRun(
        outputs={name: results[name] for name in model_outputs},
        grads={tensor: results[ATTRIBUTION + name] for name, tensor in at.items()},
        target=used,
        objective=(dense.form if dense is not None else "output_seed" if seed is not None
                   else "class" if used is not None else "sum"),
        post={name: results[name] for name in read if name in results})


def _weights_in_bodies(proto, model):
    """The program with the weights its Loop bodies hold (export.loop: ONNX Runtime lays
    out convolutions for speed only in the graph that owns them) as values: a session hands
    over only the main graph's stubs (runtime.session)."""
    from ..graph.weights import file_span, is_stub, nested_graphs, standalone

    nested = [graph for graph in nested_graphs(proto.graph) if graph is not proto.graph]
    if not any(is_stub(init) or file_span(init) for graph in nested
               for init in graph.initializer):
        return proto
    full = standalone(proto, model.weights)  # file stubs, nested ones too
    shared = {} if model.weights is None else {
        init.name: init for init in model.weights.proto.graph.initializer}
    for graph in nested_graphs(full.graph):
        for index, init in enumerate(graph.initializer):
            if is_stub(init) and init.name in shared:
                graph.initializer[index].CopyFrom(shared[init.name])
    return full
