"""Explaining a dataset's rows, wherever it runs (run.py's local engine, each Ray worker
in ray_engine.py): the job every engine is given, and batches turned into RowResults, a batch
the method refuses retried row by row so one bad row does not take the others with it."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from ..attribution import Attribution
from ..errors import InputError
from ..explainer import Explainer
from ..graph.model import Model
from ..images import ImagePreprocessing
from ..vocab import Vocabulary
from .rows import Batch, Explained, RowError, RowResult
from .sources import Source, open_source

# Rows read per batch when the caller names no batch size (each batch then runs in as many
# runs as the memory budget needs).
BATCH_ROWS = 32
# 'in row 3', 'in rows 0, 2 and 5 more' (methods._common.rows_text) within one batch.
_BATCH_ROWS = re.compile(r" in rows? \d+(, \d+)*( and \d+ more)?")


@dataclass(frozen=True)
class Job:
    """What every engine needs to explain rows of the dataset, wherever it runs (it is
    pickled to Ray workers): the model file, the data, and how to explain them."""

    model: str
    data: str
    method: str
    target: int | None
    options: dict
    batch_size: int | None
    preprocessing: Mapping[str, ImagePreprocessing] | None
    memory_budget_mb: float
    vocab: Vocabulary | None = None
    text_length: int | None = None  # the driver's, so that Ray workers never count again

    @property
    def read_rows(self) -> int:
        return self.batch_size or BATCH_ROWS

    def source(self, model: Model) -> Source:
        return open_source(model, self.data, self.preprocessing, self.vocab,
                           self.text_length)


def explained_batches(explainer: Explainer, job: Job,
                      batches: Iterable[tuple[Batch, list[RowError]]]) -> Iterator[Explained]:
    """Each batch explained (the local engine's loop, and each Ray worker's)."""
    for batch, errors in batches:
        notes: Counter = Counter()
        results, failed = ([], []) if not len(batch) else _explained(
            explainer, batch, job.method, job.target,
            {**job.options, "batch_size": job.batch_size}, notes)
        yield Explained(results, errors + failed, dict(notes))


def _explained(explainer: Explainer, batch: Batch, method: str, target, options: Mapping,
               notes: Counter) -> tuple[list[RowResult], list[RowError]]:
    """The batch's results; where the method refuses the batch (an input error), each row
    alone, so that one bad row does not take the others with it."""
    try:
        return _rows(batch, _explain(explainer, batch.feeds, method, target, options,
                                     notes)), []
    except InputError as err:
        if len(batch) == 1:
            return [], [RowError(batch.ids[0], batch.sources[0], str(err))]
    results, failed = [], []
    for index in range(len(batch)):
        one = _take(batch, index)
        try:
            attribution = _explain(explainer, one.feeds, method, target, options, notes)
        except InputError as err:
            failed.append(RowError(one.ids[0], one.sources[0], str(err)))
            continue
        results += _rows(one, attribution)
    return results, failed


def _explain(explainer: Explainer, feeds, method: str, target, options: Mapping,
             notes: Counter) -> Attribution:
    """Explainer.explain, its warnings counted (one line each in the summary) rather than
    printed once per batch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attribution = explainer.explain(feeds, method=method, target=target, **options)
    for warning in caught:  # the batch's row numbers mean nothing across the dataset
        text = _BATCH_ROWS.sub(" in some rows", str(warning.message).split("\n")[0])
        notes[text[:200]] += 1
    return attribution


def _take(batch: Batch, index: int) -> Batch:
    return Batch([batch.ids[index]], [batch.sources[index]], [batch.labels[index]],
                 {name: value[index:index + 1] for name, value in batch.feeds.items()})


def _rows(batch: Batch, attribution: Attribution) -> list[RowResult]:
    """One RowResult per row of the batch, from the batch's Attribution; a row whose map is
    no explanation (NaN, all 0, constant) says so in its note."""
    delta = attribution.extras.get("convergence_delta")
    kinds = attribution.unreadable  # found (and warned about) by Explainer.explain
    notes = [next((kind for kind, rows in kinds.items() if rows[index]), None)
             for index in range(len(batch))]
    results = []
    for index, (row_id, source, label) in enumerate(zip(batch.ids, batch.sources,
                                                        batch.labels, strict=True)):
        results.append(RowResult(
            row_id, source, label,
            _item(attribution.target, index, int), _item(attribution.predicted, index, int),
            _item(attribution.predicted_score, index, float),
            {name: np.asarray(value[index]) for name, value in attribution.attributions.items()},
            _item(delta, index, float), notes[index], attribution.signed))
    return results


def _item(values, index: int, kind):
    """values[index] as a plain int or float, None where the method reports none."""
    if values is None:
        return None
    array = np.asarray(values)
    if array.ndim != 1 or index >= len(array):
        return None
    return kind(array[index])
