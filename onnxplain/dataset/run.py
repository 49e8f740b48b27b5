"""A dataset run on this machine: read the source in batches, explain each batch with one
Explainer (its programs built once, for every batch), write the results in Parquet shards
as they come, and sum up. Memory stays that of one batch whatever the dataset's size; a run
stopped at any point loses at most the shard in flight, and `resume` skips every row
already written (ids are stable: sources.py)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Full, Queue
from typing import TypeVar

import numpy as np

from .._version import __version__
from ..errors import InputError
from ..explainer import Explainer
from ..graph.model import Model
from ..images import ImagePreprocessing, image_inputs
from ..methods import get_method
from ..runtime.batching import DEFAULT_BUDGET_MB
from ..runtime.progress import progress_bar
from ..vocab import Vocabulary, as_vocabulary
from .job import Job, explained_batches
from .overview import write_overview
from .results import ResultWriter, recorded_meta
from .rows import Explained
from .store import Store, parse_store

ENGINES = ("local", "ray")
SHARD_ROWS = 256
# Distinct warning texts kept in the summary (each with its count).
WARNINGS_KEPT = 20
T = TypeVar("T")
_END = object()  # the reader thread's last item


def explain_dataset(model: str | os.PathLike | Model, data: str | os.PathLike,
                    out: str | os.PathLike, method: str = "saliency", *,
                    target: int | None = None, resume: bool = False,
                    retry_errors: bool = False, batch_size: int | None = None,
                    shard_rows: int = SHARD_ROWS,
                    preprocessing: Mapping[str, ImagePreprocessing] | None = None,
                    providers=None, memory_budget_mb: float = DEFAULT_BUDGET_MB,
                    progress: bool = True, engine: str = "local", address: str | None = None,
                    workers: int | None = None, gpus_per_worker: float = 0,
                    vocab: str | os.PathLike | Vocabulary | None = None,
                    store: str | Store = "full", **options) -> dict:
    """Explain every row of `data` (a folder of images, class sub-folders giving labels,
    .npy/.npz shards or Parquet files) with `method` and write the results under `out`:
    Parquet shards (results/part-*.parquet, one row per input row: id, source, label,
    target, predicted class and score, each attribution, the completeness gap where the
    method has one, a note where the map is no explanation), errors.parquet (rows that could
    not be explained, with the reason) and summary.json, which is also returned.

    `resume` continues a run stopped before its end: rows already written are skipped;
    with `retry_errors`, the rows that failed are explained again (after their data was
    repaired, say), and errors.parquet keeps only what still fails.
    `target`: the class explained in every row (None: the predicted one). `batch_size`: rows
    read and explained per run (None: BATCH_ROWS read at a time, run as the memory budget
    allows). `store`: what is kept of each attribution: "full", "map" (an image's channels
    summed, as the heatmaps draw it) or "topk=K" (the K entries of largest |value|; store.py).
    `preprocessing`: how the image inputs are read (default: from their shapes).
    `vocab` (a vocab.txt, vocab.json or tokenizer.json, or a Vocabulary) turns Parquet text
    columns into token ids (parquet_source.py).
    Method options are keyword arguments, as for Explainer.explain. A model file (or a Model
    loaded from one) is required: resume checks the model is the one the results are of.

    `engine` "ray" explains on a Ray cluster (ray_engine.py: `address`, None for a local
    instance; `workers`, each with one ONNX Runtime session; `gpus_per_worker`); the
    results are written here as with "local", so their layout and the resume rule are one."""
    if retry_errors and not resume:
        raise InputError("retrying the rows that failed continues an earlier run: pass "
                         "resume=True (--resume)")
    if (batch_size is not None and batch_size < 1) or shard_rows < 1:
        raise InputError("batch_size and shard_rows must be at least 1")
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if engine == "local" and (address is not None or workers is not None or gpus_per_worker):
        raise InputError("address, workers and gpus_per_worker are settings of the Ray "
                         "engine: pass engine='ray' (--engine ray)")
    get_method(method).resolve_options(dict(options))  # a bad option: refused before any row
    store = parse_store(store) if isinstance(store, str) else store
    if not isinstance(store, Store):
        raise InputError(f"store must be 'full', 'map' or 'topk=K', not {store!r}")
    if engine == "ray":  # its settings too, before anything is read or written
        from .ray_engine import RayCluster
        cluster = RayCluster(address, workers, gpus_per_worker, providers)
    loaded = model if isinstance(model, Model) else Model.load(model)
    if loaded.path is None:
        raise InputError("explain_dataset needs the model's file (a path, or a Model loaded "
                         "from one): resumed runs check it is the same model")
    vocab = as_vocabulary(vocab)
    # A resumed run pads its texts to the length it began with.
    length = ((recorded_meta(out) or {}) if resume else {}).get("text_length", "")
    # Absolute paths: Ray workers on other machines start elsewhere than this process.
    job = Job(str(Path(loaded.path).resolve()), str(Path(data).resolve()), method, target,
              dict(options), batch_size, preprocessing, memory_budget_mb, vocab,
              int(length) if length.isdigit() else None)
    source = job.source(loaded)
    source.check_unique_ids()
    job = replace(job, text_length=source.text_length)  # workers reuse this length
    meta = _meta(loaded.path, method, target, options)
    if source.uses_text:  # other words, other ids: a resumed run must use the same one
        meta["vocab"] = vocab.digest()
        if source.text_length is not None:
            meta["text_length"] = str(source.text_length)
    writer = ResultWriter(out, meta, resume, shard_rows, store, retry_errors)
    done = writer.committed()
    start = time.perf_counter()
    if engine == "ray":
        with cluster:
            counts = _written(cluster.explain(job, source, done), writer, source.count(),
                              progress)
    else:
        explainer = Explainer(loaded, providers, memory_budget_mb=memory_budget_mb,
                              progress=False)
        batches = prefetched(source.batches(job.read_rows, skip=done))
        counts = _written(explained_batches(explainer, job, batches), writer,
                          source.count(), progress)
    seconds = time.perf_counter() - start
    summary = {
        "model": str(loaded.path), "data": str(data), "method": method,
        "options": meta["options"], "store": str(store), "engine": engine,
        "rows": counts.explained + counts.errors + len(done),
        "explained": counts.explained, "errors": counts.errors,
        "skipped": len(done), "retried": len(writer.retried), "seconds": round(seconds, 3),
        "rows_per_second": round(counts.explained / seconds, 2) if seconds > 0 else None,
        "unreadable": dict(counts.unreadable),
        "warnings": dict(counts.warnings.most_common(WARNINGS_KEPT)),
        "onnxplain": __version__}
    if engine == "ray":
        summary["workers"] = cluster.workers
    writer.close(summary)
    images = list(image_inputs(loaded))
    if images:  # image data: class-mean maps and an index page under overview/
        write_overview(out, images)
    return summary


@dataclass
class _Counts:
    explained: int = 0
    errors: int = 0
    unreadable: Counter = field(default_factory=Counter)  # rows by note
    warnings: Counter = field(default_factory=Counter)  # by text


def _written(chunks: Iterable[Explained], writer: ResultWriter, rows: int,
             progress: bool) -> _Counts:
    """Every chunk handed to the writer (which refuses a row given twice: each window is
    explained once, its results all or nothing), counted, under a progress bar."""
    counts = _Counts()
    with progress_bar(progress, rows, "explain-dataset", "row") as bar:
        for chunk in chunks:
            writer.add(chunk.results)
            writer.add_errors(chunk.errors)
            counts.explained += len(chunk.results)
            counts.errors += len(chunk.errors)
            counts.unreadable.update(row.note for row in chunk.results if row.note)
            counts.warnings.update(chunk.warnings)
            bar.update(chunk.rows)
    return counts


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
