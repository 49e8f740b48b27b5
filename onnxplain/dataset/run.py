"""A dataset run on this machine: read the source in batches, explain each batch with one
Explainer (its programs built once, for every batch), write the results in Parquet shards
as they come, and sum up. Memory stays that of one batch whatever the dataset's size; a run
stopped at any point loses at most the shard in flight, and `resume` skips every row
already written (ids are stable: sources.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from queue import Full, Queue
from typing import TypeVar

import numpy as np

from .._version import __version__
from ..attribution import Attribution
from ..errors import InputError
from ..explainer import Explainer, unreadable_rows
from ..graph.model import Model
from ..images import ImagePreprocessing
from ..methods import get_method
from ..runtime.batching import DEFAULT_BUDGET_MB
from ..runtime.progress import progress_bar
from .results import ResultWriter
from .rows import Batch, RowError, RowResult
from .sources import open_source

# Rows read per batch when the caller names no batch size (each batch then runs in as many
# runs as the memory budget needs).
BATCH_ROWS = 32
SHARD_ROWS = 256
# Distinct warning texts kept in the summary (each with its count).
WARNINGS_KEPT = 20
T = TypeVar("T")
# 'in row 3', 'in rows 0, 2 and 5 more' (methods._common.rows_text) within one batch.
_BATCH_ROWS = re.compile(r" in rows? \d+(, \d+)*( and \d+ more)?")
_END = object()  # the reader thread's last item


def explain_dataset(model: str | os.PathLike | Model, data: str | os.PathLike,
                    out: str | os.PathLike, method: str = "saliency", *,
                    target: int | None = None, resume: bool = False,
                    batch_size: int | None = None, shard_rows: int = SHARD_ROWS,
                    preprocessing: Mapping[str, ImagePreprocessing] | None = None,
                    providers=None, memory_budget_mb: float = DEFAULT_BUDGET_MB,
                    progress: bool = True, **options) -> dict:
    """Explain every row of `data` (a folder of images, class sub-folders giving labels,
    .npy/.npz shards or Parquet files) with `method` and write the results under `out`:
    Parquet shards (results/part-*.parquet, one row per input row: id, source, label,
    target, predicted class and score, each attribution, the completeness gap where the
    method has one, a note where the map is no explanation), errors.parquet (rows that could
    not be explained, with the reason) and summary.json, which is also returned.

    `resume` continues a run stopped before its end: rows already written are skipped.
    `target`: the class explained in every row (None: the predicted one). `batch_size`: rows
    read and explained per run (None: BATCH_ROWS read at a time, run as the memory budget
    allows). `preprocessing`: how the image inputs are read (default: from their shapes).
    Method options are keyword arguments, as for Explainer.explain. A model file (or a Model
    loaded from one) is required: resume checks the model is the one the results are of."""
    if (batch_size is not None and batch_size < 1) or shard_rows < 1:
        raise InputError("batch_size and shard_rows must be at least 1")
    get_method(method).resolve_options(dict(options))  # a bad option: refused before any row
    explainer = Explainer(model, providers, memory_budget_mb=memory_budget_mb, progress=False)
    if explainer.model.path is None:
        raise InputError("explain_dataset needs the model's file (a path, or a Model loaded "
                         "from one): resumed runs check it is the same model")
    source = open_source(explainer.model, data, preprocessing)
    meta = _meta(explainer.model.path, method, target, options)
    writer = ResultWriter(out, meta, resume, shard_rows)
    done = writer.committed()
    counts: Counter = Counter()
    unreadable: Counter = Counter()
    notes: Counter = Counter()
    start = time.perf_counter()
    with progress_bar(progress, source.count(), "explain-dataset", "row") as bar:
        for batch, errors in prefetched(source.batches(batch_size or BATCH_ROWS, skip=done)):
            writer.add_errors(errors)
            counts["errors"] += len(errors)
            if len(batch):
                results, failed = _explained(explainer, batch, method, target,
                                             {**options, "batch_size": batch_size}, notes)
                writer.add(results)
                unreadable.update(row.note for row in results if row.note)
                writer.add_errors(failed)
                counts["explained"] += len(results)
                counts["errors"] += len(failed)
            bar.update(len(batch) + len(errors))
    seconds = time.perf_counter() - start
    summary = {
        "model": str(explainer.model.path), "data": str(data), "method": method,
        "options": meta["options"],
        "rows": counts["explained"] + counts["errors"] + len(done),
        "explained": counts["explained"], "errors": counts["errors"],
        "skipped": len(done), "seconds": round(seconds, 3),
        "rows_per_second": round(counts["explained"] / seconds, 2) if seconds > 0 else None,
        "unreadable": dict(unreadable), "warnings": dict(notes.most_common(WARNINGS_KEPT)),
        "onnxplain": __version__}
    writer.close(summary)
    return summary


def prefetched(items: Iterator[T], ahead: int = 2) -> Iterator[T]:
    """`items`, read by a thread of their own up to `ahead` items in advance: the next
    batches decode (PIL and numpy release the GIL) while ONNX Runtime explains this one.
    An exception in the reader is raised here, where the item would have come."""
    queue: Queue = Queue(maxsize=ahead)
    stop = threading.Event()

    def read() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            queue.put((None, err))
            return
        queue.put((_END, None))

    reader = threading.Thread(target=read, name="onnxplain-dataset-reader", daemon=True)
    reader.start()
    try:
        while True:
            item, err = queue.get()
            if err is not None:
                raise err
            if item is _END:
                return
            yield item
    finally:
        stop.set()


def _meta(model, method: str, target, options: Mapping) -> dict[str, str]:
    """What a resumed run must share with the run it continues: the method, its options,
    the target, and the model file (its size and a digest of its first and last MiB: a
    500 MB model is not read whole for it)."""
    return {"method": method, "target": json.dumps(target),
            "options": json.dumps(options, sort_keys=True, default=_plain),
            "model": _model_digest(Path(model))}


def _model_digest(path: Path, part: int = 1 << 20) -> str:
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as file:
        digest.update(file.read(part))
        file.seek(max(size - part, 0))
        digest.update(file.read(part))
    return digest.hexdigest()


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else str(value)


def _explained(explainer: Explainer, batch: Batch, method: str, target, options: Mapping,
               notes: Counter) -> tuple[list[RowResult], list[RowError]]:
    """The batch's results; where the method refuses the batch (an input error), each row
    alone, so that one bad row does not take the others with it."""
    axes = explainer.model.batch.of_inputs
    try:
        return _rows(batch, _explain(explainer, batch.feeds, method, target, options, notes),
                     axes), []
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
        results += _rows(one, attribution, axes)
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


def _rows(batch: Batch, attribution: Attribution, axes) -> list[RowResult]:
    """One RowResult per row of the batch, from the batch's Attribution; a row whose map is
    no explanation (NaN, all 0, constant) says so in its note."""
    delta = attribution.extras.get("convergence_delta")
    kinds = unreadable_rows(attribution.attributions, axes)
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
            _item(delta, index, float), notes[index]))
    return results


def _item(values, index: int, kind):
    """values[index] as a plain int or float, None where the method reports none."""
    if values is None:
        return None
    array = np.asarray(values)
    if array.ndim != 1 or index >= len(array):
        return None
    return kind(array[index])
