"""What the perturbation methods share: how their one graph runs in process
(perturbation_run: export.perturb's Loop; the input they perturb is export.perturb's
perturbed_input), and feeds for a chunk of perturbed copies of one row (the metrics'
curves: runtime.perturb repeats the other inputs)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError, OnnxplainError, SessionLoadError
from ..inputs import batch_size as batch_size_of
from ..inputs import take_rows
from ..objective import DenseObjective, OutputSeed
from ..runtime.engine import BatchNotice, Engine, GradientRun
from ..runtime.perturb import announce
from ..runtime.progress import progress_bar
from ._graph import graph_run


def copies(feeds: Mapping[str, np.ndarray], name: str, values: np.ndarray
           ) -> dict[str, np.ndarray]:
    """Feeds of perturbed copies: input `name` set to `values` ([copies, ...]) in its type;
    perturbed_scores repeats every other input from the row, on its own batch axis."""
    return {name: np.ascontiguousarray(values, dtype=feeds[name].dtype)}


# A long run goes in row chunks, each at least this many iterations' worth of copies at the
# rows per iteration, so the bar moves per chunk and a chunk's run outweighs its overhead.
CHUNK_ITERATIONS = 16


def perturbation_run(engine: Engine, method: str, feeds: Mapping[str, np.ndarray], target,
                     options: Mapping, fed: Mapping[str, np.ndarray], count: int, label: str,
                     read: Sequence[str]) -> GradientRun:
    """Run perturbation method `method`'s graph (export.perturb: `count` copies per row, the
    program `export` saves) over `feeds`, its outputs `read` in GradientRun.post.

    Rows per iteration follow batch_size, else the memory budget for forward runs
    (RunPolicy.loop_rows), fed to the program (export.loop.ROWS_PER_ITERATION), so every
    value runs the same program. A model whose batch axis is fixed, or whose rows are
    coupled, runs one copy of its rows per iteration; one whose symbolic batch axis fails on
    more rows runs so, a row at a time, with a notice. A long run goes in row chunks
    (_row_chunks), the progress bar advancing per chunk."""
    rows = batch_size_of(feeds, engine.model.batch.of_inputs)
    policy = engine.policy
    fixed = None if engine.model.batch.symbolic else engine.model.batch.size
    single = fixed is not None or bool(engine.model.rows_coupled)
    if fixed is not None:  # its chunks of rows are `fixed` rows: the engine says nothing
        warnings.warn(f"the model's batch axis is fixed to {fixed}; its perturbed copies run "
                      f"{fixed} row(s) at a time (slower)", BatchNotice, stacklevel=4)
    if engine.model.rows_coupled and rows > 1:  # its rows run one at a time below
        engine.notice_coupled(stacklevel=4)
    announce(engine, label, rows, count)

    def run(on: Engine, alone: bool, bar) -> GradientRun:
        per_run = 1 if alone else policy.loop_rows(engine.model, feeds, factor=1,
                                                   extra=_copy_bytes(engine, feeds))
        try:
            return _chunked(on, method, feeds, target, options, fed, count, read, per_run,
                            (fixed or 1) if alone else None, bar)
        except OnnxplainError as err:
            if isinstance(err, InputError | SessionLoadError) or not alone:
                raise
            raise _refused(engine, feeds, label, err) from err

    with progress_bar(engine.progress, rows * count, label) as bar:
        try:
            return run(engine, single, bar)
        except OnnxplainError as err:
            if isinstance(err, InputError) or single:
                raise
            engine.forward(feeds)  # the model's own failure on the input, if it is one
            if isinstance(err, SessionLoadError):  # the program, not a copy, failed
                raise
            warnings.warn(f"the model failed on a batch of perturbed copies although its "
                          f"batch axis is symbolic ({err}); running one copy per run (slower)",
                          BatchNotice, stacklevel=4)
            bar.reset()
            return run(engine.with_policy(policy.derive(batch_size=1)), True, bar)


def _chunked(engine: Engine, method: str, feeds: Mapping[str, np.ndarray], target,
             options: Mapping, fed: Mapping[str, np.ndarray], count: int,
             read: Sequence[str], per_run: int, most: int | None, bar) -> GradientRun:
    """The program over the rows in chunks (_row_chunks: at most `most` rows, None: as
    `per_run` allows), joined in row order. Every chunk runs each row's copies k at a time,
    k as one run over all rows would (per_run // rows, at most `count`): a chunk of r rows is
    fed k * r rows per iteration and runs whole (batch_size r), so each row's copies are
    grouped and summed alike however the rows are chunked."""
    axes = engine.model.batch.of_inputs
    rows = batch_size_of(feeds, axes)
    k = min(count, max(1, per_run // max(rows, 1)))
    runs, groups = [], []
    for part in _row_chunks(rows, count, per_run, most or max(1, per_run // k)):
        taken = part.stop - part.start
        index = np.arange(part.start, part.stop)
        whole = taken == rows
        runs.append(graph_run(
            engine.with_policy(engine.policy.derive(batch_size=max(taken, 1))), method,
            feeds if whole else take_rows(feeds, axes, part),
            target if whole else take_target(target, rows, index), [],
            {**options, "internal_batch_size": k * max(taken, 1)},
            fed=fed if whole else {key: value[part] if np.ndim(value) and len(value) == rows
                                   else value for key, value in fed.items()},
            read=read, specialise=False))
        groups.append(index)
        bar.update(taken * count)
    return runs[0] if len(runs) == 1 else stitch(runs, groups, _output_axes(engine))


# Bytes a Loop iteration holds per perturbed copy, per byte of one input row: the copy, its
# mask (float64 in the graph) and the temporaries that blend the two (measured on occlusion
# and RISE of a linear model, where the copies are nearly all the memory).
COPY_BYTES = 10


def _copy_bytes(engine: Engine, feeds: Mapping[str, np.ndarray]) -> int:
    """What one perturbed copy holds in a Loop iteration besides the model's activations."""
    axes = engine.model.batch.of_inputs
    one_row = sum(value.nbytes // max(1, value.shape[axes.get(name, 0)])
                  for name, value in feeds.items()
                  if value.ndim and axes.get(name, 0) is not None)
    return COPY_BYTES * one_row


def _row_chunks(rows: int, count: int, per_run: int, most: int) -> list[slice]:
    """Row slices of about equal size, at most `most` rows each: one when the whole run is
    at most CHUNK_ITERATIONS iterations of `per_run` rows, else as many as such runs fill
    (at most one per row)."""
    pieces = min(rows, max(1, -(-rows * count // (CHUNK_ITERATIONS * max(per_run, 1)))))
    size = max(1, min(-(-rows // max(pieces, 1)), most))
    return [slice(start, min(start + size, rows)) for start in range(0, max(rows, 1), size)]


def _output_axes(engine: Engine) -> dict[str, int | None]:
    """Model output -> its rows axis (None: not per row, one value for all rows)."""
    return {spec.name: engine.model.batch.axis_in(spec.dims) for spec in engine.model.outputs}


def take_target(target, rows: int, index: np.ndarray):
    """The target of rows `index`: per-row values taken, one for all kept (a class, an
    output seed, a dense objective's class)."""
    if isinstance(target, OutputSeed):
        values = target.values
        return OutputSeed(values[index] if values.ndim and len(values) == rows else values)
    if isinstance(target, DenseObjective):
        return dataclasses.replace(target, target=take_target(target.target, rows, index))
    if target is None or np.ndim(target) == 0:
        return target
    values = np.asarray(target)
    return values[index] if len(values) == rows else target


def stitch(runs: list[GradientRun], groups: list[np.ndarray],
           axes: Mapping[str, int | None] | None = None) -> GradientRun:
    """One run in row order from runs over groups of rows (model outputs' rows on `axes`,
    default 0; one not per row: the first run's); per-feature outputs of groups with fewer
    features are padded with NaN."""
    order = np.argsort(np.concatenate(groups), kind="stable")
    axes = axes or {}

    def joined(parts: list[np.ndarray], axis: int | None = 0) -> np.ndarray:
        if axis is None or parts[0].ndim <= axis:
            return parts[0]
        widest = max(part.shape[1] if part.ndim == 2 else 0 for part in parts)
        if all(part.ndim == 2 for part in parts) and any(p.shape[1] < widest for p in parts):
            parts = [np.pad(p.astype(np.float64), ((0, 0), (0, widest - p.shape[1])),
                            constant_values=np.nan) for p in parts]
        return np.take(np.concatenate(parts, axis=axis), order, axis=axis)

    def merged(field: str) -> dict[str, np.ndarray]:
        first = getattr(runs[0], field)
        return {key: joined([getattr(run, field)[key] for run in runs], axes.get(key, 0))
                for key in first}

    target = None if runs[0].target is None else joined([run.target for run in runs])
    return GradientRun(outputs=merged("outputs"), grads=merged("grads"), target=target,
                       objective=runs[0].objective, post=merged("post"))


def _refused(engine, feeds: Mapping[str, np.ndarray], label: str, err: Exception) -> Exception:
    """Where the clean input runs, the perturbation removed something the model cannot run
    without (a token it looks up by position, a required marker): the method does not
    apply to this model, which is not an internal failure. Else the model's own error."""
    try:
        engine.forward(feeds)
    except OnnxplainError:
        return err
    return InputError(f"{label}: the model fails on a perturbed copy of its input although it "
                      f"runs on the input itself ({err}); perturbing this input removes "
                      "something the model needs (such as a required token): use a gradient "
                      "or attention method")
