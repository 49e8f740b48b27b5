"""The executor of the perturbation methods: forward runs of many perturbed copies of each
input row, generated chunk by chunk (never all at once), streamed through the engine's one
cached forward session, with a progress bar on long runs.

Chunks are sized by the engine's policy (its batch_size, else the memory budget over the
forward activations only: RunPolicy.rows_per_run with factor 1), and may mix perturbations
of several input rows, so small runs still fill a batch. Models whose batch axis is fixed
run through the engine in chunks of that size. A model whose batch axis
is declared symbolic but that fails at batch > 1 (exports that bake a batch of 1 into a
cache or a Reshape) runs one copy per run from then on, with a notice.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import InputError, OnnxplainError
from ..inputs import RowAxes, join_rows, repeat_row, rows_axis, take_rows
from ..inputs import batch_size as batch_size_of
from ..objective import Objective, check_rows
from .engine import BatchNotice, Engine
from .progress import progress_bar

# make(row, start, stop): feeds of the perturbed input(s) for perturbations start..stop-1 of
# input row `row`, rows on axis 0; inputs left out are repeated from the row.
MakeFeeds = Callable[[int, int, int], Mapping[str, np.ndarray]]


def perturbed_scores(engine: Engine, feeds: Mapping[str, np.ndarray], target, make: MakeFeeds,
                     count: int, *, label: str = "forward") -> np.ndarray:
    """[rows, count] float64: the explained score of every perturbed copy of every row.

    The score is `target`'s (an Objective, see methods._common.fixed_objective, or a target
    explicit per row, see Objective.given), each copy scored with the objective of its row.
    Rows per run: `engine.policy` (engine.with_policy(engine.policy.derive(batch_size=n))).
    """
    if count < 1:
        raise InputError(f"{label}: the number of perturbations must be at least 1")
    axes = engine.model.batch.of_inputs
    rows = batch_size_of(feeds, axes)
    one_row = take_rows(feeds, axes, slice(0, 1))
    chunk = engine.policy.rows_per_run(engine.model, one_row, factor=1)
    total = rows * count
    announce(engine, label, rows, count)
    scores = np.empty(total, dtype=np.float64)
    runner = _Runner(engine, feeds, axes, make, count, label)
    with progress_bar(getattr(engine, "progress", True), total, label) as bar:
        for start in range(0, total, max(1, chunk)):
            stop = min(start + chunk, total)
            scores[start:stop] = runner.scores(start, stop, target)
            bar.update(stop - start)
    return scores.reshape(rows, count)


# From this many forward runs on, say how many before starting (the bar shows only later).
ANNOUNCE_RUNS = 2_000


def announce(engine: Engine, label: str, rows: int, count: int) -> None:
    """One line on stderr, like the progress bar, unless progress is off (-q, --json)."""
    if rows * count >= ANNOUNCE_RUNS and getattr(engine, "progress", True):
        print(f"{label}: {rows * count:,} forward runs ({rows} input rows x {count:,} "
              "perturbed copies)", file=sys.stderr)


class _Runner:
    """Scores of flat perturbation indices (row-major over rows x count), one run per chunk,
    or one per copy once a multi-row run has failed."""

    def __init__(self, engine: Engine, feeds: Mapping[str, np.ndarray], axes: RowAxes,
                 make: MakeFeeds, count: int, label: str):
        self.engine, self.feeds, self.axes, self.make, self.count, self.label = (
            engine, feeds, axes, make, count, label)
        self.one_by_one = False

    def scores(self, start: int, stop: int, target) -> np.ndarray:
        if self.one_by_one:
            return self._singly(start, stop, target)
        batch, owners = self._feeds(start, stop)
        try:
            outputs = self.engine.forward(batch)
        except OnnxplainError as err:
            if isinstance(err, InputError):
                raise
            if stop - start == 1:
                raise self._refused(err) from err
            self._fall_back(stop - start, err)
            return self._singly(start, stop, target)
        return self._scores(outputs, target, owners)

    def _singly(self, start: int, stop: int, target) -> np.ndarray:
        found = [self._one(index, target) for index in range(start, stop)]
        return np.concatenate(found)

    def _one(self, index: int, target) -> np.ndarray:
        batch, owners = self._feeds(index, index + 1)
        try:
            outputs = self.engine.forward(batch)
        except OnnxplainError as err:
            if isinstance(err, InputError):
                raise
            raise self._refused(err) from err
        return self._scores(outputs, target, owners)

    def _scores(self, outputs: Mapping[str, np.ndarray], target, owners: np.ndarray
                ) -> np.ndarray:
        output = outputs[self.engine.output]
        check_rows(self.engine.model, self.engine.output, output.shape, len(owners))
        return Objective.given(target, output).take(owners).score(output)

    def _refused(self, err: Exception) -> InputError:
        # The clean input ran, so the perturbation removed something the model cannot run
        # without (a token it looks up by position, a required marker): the method does
        # not apply to this model, which is not an internal failure.
        return InputError(f"{self.label}: the model fails on a perturbed copy of its input "
                          f"although it runs on the input itself ({err}); perturbing this "
                          "input removes something the model needs (such as a required "
                          "token): use a gradient or attention method")

    def _fall_back(self, rows: int, err: Exception) -> None:
        # Warned once per call: later chunks go one copy per run without trying again.
        self.one_by_one = True
        warnings.warn(f"the model failed on a batch of {rows} perturbed copies although its "
                      f"batch axis is symbolic ({err}); running one copy per run (slower)",
                      BatchNotice, stacklevel=4)

    def _feeds(self, start: int, stop: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Feeds for flat perturbation indices start..stop-1 and the input row each one
        belongs to."""
        parts: list[dict[str, np.ndarray]] = []
        owners = []
        index = start
        while index < stop:
            row, first = divmod(index, self.count)
            last = min(self.count, first + (stop - index))
            parts.append(self._copies(row, first, last))
            owners.append(np.full(last - first, row))
            index += last - first
        batch = {name: join_rows([p[name] for p in parts], rows_axis(self.axes, name, value))
                 for name, value in self.feeds.items()}
        return batch, np.concatenate(owners)

    def _copies(self, row: int, first: int, last: int) -> dict[str, np.ndarray]:
        """Every model input for copies first..last-1 of row `row`: the perturbed ones as
        `make` gives them, the others repeated from the row on their own batch axis."""
        made = dict(self.make(row, first, last))
        for name, value in made.items():
            if self.axes.get(name, 0) != 0:
                raise InputError(f"input '{name}' has its rows on axis {self.axes[name]}; "
                                 "perturbation methods perturb inputs batched on axis 0")
            if value.shape[0] != last - first:
                raise AssertionError(f"perturbation feeds for '{name}' have {value.shape[0]} "
                                     f"rows, expected {last - first}")
        for name, value in self.feeds.items():
            if name not in made:
                made[name] = repeat_row(value, rows_axis(self.axes, name, value), row,
                                        last - first)
        return made
