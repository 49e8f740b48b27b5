"""The executor of the perturbation methods: forward runs of many perturbed copies of each
input row, generated chunk by chunk (never all at once), streamed through the engine's one
cached forward session, with a progress bar on long runs.

Chunks are sized by `batch_size`, else by the memory budget (forward activations only), and
may mix perturbations of several input rows, so small runs still fill a batch. Models whose
batch axis is fixed run through the engine in chunks of that size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ..engine import Engine, OutputSeed, target_scores
from ..errors import InputError
from .batching import rows_per_run
from .progress import progress_bar

# make(row, start, stop): model feeds for perturbations start..stop-1 of input row `row`.
MakeFeeds = Callable[[int, int, int], Mapping[str, np.ndarray]]


def perturbed_scores(engine: Engine, feeds: Mapping[str, np.ndarray], target, make: MakeFeeds,
                     count: int, *, batch_size: int | None = None, label: str = "forward"
                     ) -> np.ndarray:
    """[rows, count] float64: the explained score of every perturbed copy of every row.

    The score is the target class's output (`target`: explicit classes per row, see
    methods._common.fixed_target), the output_seed-weighted sum, or the output value for
    one-value outputs. `make` must return every model input with stop - start rows.
    """
    if count < 1:
        raise InputError(f"{label}: the number of perturbations must be at least 1")
    rows = next(iter(feeds.values())).shape[0]
    one_row = {name: value[:1] for name, value in feeds.items()}
    chunk = batch_size or engine.requested_rows or rows_per_run(
        engine.model, one_row, engine.memory_budget_mb, factor=1)
    total = rows * count
    scores = np.empty(total, dtype=np.float64)
    with progress_bar(getattr(engine, "progress", True), total, label) as bar:
        for start in range(0, total, max(1, chunk)):
            stop = min(start + chunk, total)
            batch, owners = _chunk_feeds(make, count, start, stop)
            outputs = engine.forward(batch)
            scores[start:stop] = _scores(outputs[engine.output], target, owners)
            bar.update(stop - start)
    return scores.reshape(rows, count)


def _chunk_feeds(make: MakeFeeds, count: int, start: int, stop: int
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Feeds for flat perturbation indices start..stop-1 (row-major over rows x count) and
    the input row each one belongs to."""
    parts: list[Mapping[str, np.ndarray]] = []
    owners = []
    index = start
    while index < stop:
        row, first = divmod(index, count)
        last = min(count, first + (stop - index))
        made = make(row, first, last)
        _check_rows(made, last - first)
        parts.append(made)
        owners.append(np.full(last - first, row))
        index += last - first
    names = list(parts[0])
    batch = {name: np.concatenate([p[name] for p in parts], axis=0) if len(parts) > 1
             else np.asarray(parts[0][name]) for name in names}
    return batch, np.concatenate(owners)


def _check_rows(made: Mapping[str, np.ndarray], rows: int) -> None:
    for name, value in made.items():
        if value.shape[0] != rows:
            raise AssertionError(f"perturbation feeds for '{name}' have {value.shape[0]} "
                                 f"rows, expected {rows}")


def _scores(output: np.ndarray, target, owners: np.ndarray) -> np.ndarray:
    """The explained score of each perturbed copy, with the target of the row it came from."""
    if isinstance(target, OutputSeed):
        return target_scores(output, OutputSeed(target.values[owners]))
    return target_scores(output, None if target is None else np.asarray(target)[owners])
