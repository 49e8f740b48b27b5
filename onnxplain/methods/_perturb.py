"""What the perturbation methods share: which input they perturb, how their one graph runs
in process (perturbation_run: export.perturb's Loop), and feeds for a chunk of perturbed
copies of one row (the metrics' curves: runtime.perturb repeats the other inputs)."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from ..engine import BatchNotice, Engine, GradientRun
from ..errors import InputError, OnnxplainError
from ..inputs import batch_size as batch_size_of
from ..runtime.perturb import announce
from ..runtime.progress import progress_bar
from ._graph import graph_run


def perturbed_input(feeds: Mapping[str, np.ndarray], name: str | None,
                    skip: Collection[str] = ()) -> str:
    """The input a perturbation method changes: `name`, else the first float input not in
    `skip` (a KV cache: _tokens.cached_inputs), else the first integer input shaped
    [batch, tokens] (token ids)."""
    if name is not None:
        if not isinstance(name, str):
            raise InputError(f"option 'input' names an input ({', '.join(feeds)}), got a "
                             f"value of type {type(name).__name__}")
        if name not in feeds:
            raise InputError(f"unknown input '{name}' (inputs: {', '.join(feeds)})")
        return name
    for key, value in feeds.items():
        if value.dtype.kind == "f" and key not in skip:
            return key
    for key, value in feeds.items():
        if value.dtype.kind in "iu" and value.ndim == 2:
            return key
    raise InputError("no float or token-id input to perturb; name one with input=NAME")


def copies(feeds: Mapping[str, np.ndarray], name: str, values: np.ndarray
           ) -> dict[str, np.ndarray]:
    """Feeds of perturbed copies: input `name` set to `values` ([copies, ...]) in its type;
    perturbed_scores repeats every other input from the row, on its own batch axis."""
    return {name: np.ascontiguousarray(values, dtype=feeds[name].dtype)}


def perturbation_run(engine: Engine, method: str, feeds: Mapping[str, np.ndarray], target,
                     options: Mapping, fed: Mapping[str, np.ndarray], count: int, label: str,
                     read: Sequence[str]) -> GradientRun:
    """Run perturbation method `method`'s graph (export.perturb: `count` copies per row, the
    program `export` saves) over `feeds`, its outputs `read` in GradientRun.post.

    Rows per iteration follow batch_size, else the memory budget for forward runs (rounded
    down to a power of two), fed to the program (export.loop.ROWS_PER_ITERATION), so every
    value runs the same program. A model whose batch axis is fixed, or whose rows are
    coupled, runs one copy of its rows per iteration; one whose symbolic batch axis fails on
    more rows runs so, a row at a time, with a notice."""
    rows = batch_size_of(feeds, engine.model.batch.of_inputs)
    policy = engine.policy
    per_run = policy.rows_per_iteration or policy.rows_per_run(engine.model, feeds, factor=1)
    per_run = 1 << (max(1, per_run).bit_length() - 1)
    fixed = None if engine.model.batch.symbolic else engine.model.batch.size
    single = fixed is not None or bool(engine.model.rows_coupled)
    if fixed == rows:  # other row counts: the engine says it runs them in chunks of `fixed`
        warnings.warn(f"the model's batch axis is fixed to {fixed}; its perturbed copies run "
                      f"{fixed} row(s) at a time (slower)", BatchNotice, stacklevel=4)
    announce(engine, label, rows, count)

    def run(on: Engine, alone: bool) -> GradientRun:
        try:
            return graph_run(on, method, feeds, target, [],
                             {**options, "internal_batch_size": 1 if alone else per_run},
                             fed=fed, read=read, specialise=False)
        except OnnxplainError as err:
            if isinstance(err, InputError) or not alone:
                raise
            raise _refused(engine, feeds, label, err) from err

    with progress_bar(engine.progress, rows * count, label) as bar:
        try:
            found = run(engine, single)
        except OnnxplainError as err:
            if isinstance(err, InputError) or single:
                raise
            engine.forward(feeds)  # the model's own failure on the input, if it is one
            warnings.warn(f"the model failed on a batch of perturbed copies although its "
                          f"batch axis is symbolic ({err}); running one copy per run (slower)",
                          BatchNotice, stacklevel=4)
            found = run(engine.with_policy(policy.derive(batch_size=1)), True)
        bar.update(rows * count)
    return found


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
