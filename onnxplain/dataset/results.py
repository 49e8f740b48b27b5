"""Where a dataset run's results go: Parquet shards written whole or not at all, so a run
stopped at any point (Ctrl-C, a killed process) loses at most the rows not yet in a shard,
and a resumed run knows which rows are done and never writes one twice.

Layout under `out`:
  run.json                    the run's meta (method, options, model, store...), before any
                              shard
  results/part-00000.parquet  one row per explained row, `shard_rows` rows a shard, each
                              attribution kept as the store says (store.py: whole, its map,
                              or its top k entries)
  errors/part-00000.parquet   rows that could not be explained: id, source, reason
  errors.parquet              at close: every error of the run (and of the runs it resumed)
  summary.json                at close: the caller's summary

Each file is written under a temporary name in its folder and renamed into place
(files.atomic_write); a reader only ever sees whole files. Shards reach the disk before
their ids count as written, so a resumed run can trust them after a machine stops too.
pyarrow is imported when a writer or reader is made, so `import onnxplain` never needs it."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..files import atomic_write, save_json
from .rows import RowError, RowResult
from .store import ATTRIBUTION, FULL, TOPK_INDEX, TOPK_VALUE, Kept, Store, stored_columns

if TYPE_CHECKING:
    import pyarrow

RESULTS, ERRORS = "results", "errors"
RUN_FILE, ERRORS_FILE, SUMMARY_FILE = "run.json", "errors.parquet", "summary.json"
META_PREFIX = "onnxplain."
# The layout of the attributions, in the schema metadata beside the run's meta: each row's
# shape in attribution/<name> (full, map), its shape as explained (all stores: what top-k
# scatters back into), and whether the method's maps are signed.
SHAPE_PREFIX = "onnxplain.shape."
EXPLAINED_PREFIX = "onnxplain.attribution_shape."
SIGNED_KEY = "onnxplain.signed"
_PART = re.compile(r"part-(\d{5,})\.parquet")
# atomic_write's temporary names: what a killed writer leaves behind.
_TEMPORARY = ".onnxplain-"
# Attribution dtypes stored as they are (float16 widens to float32 exactly).
_STORED = {np.dtype(np.float16): np.float32, np.dtype(np.float32): np.float32,
           np.dtype(np.float64): np.float64}


def pyarrow_modules():
    """pyarrow and pyarrow.parquet, or the one-line error that says how to get them."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise InputError("explain-dataset writes Parquet: install pyarrow "
                         "(pip install 'onnxplain[dataset]')") from None
    return pyarrow, pyarrow.parquet


class ResultWriter:
    """Writes one run's results and errors under `out` in atomic Parquet shards.

    `meta` (strings: what a resumed run must share with the run it continues) goes into
    every shard's file metadata and into run.json. A folder that holds an earlier run is
    refused unless `resume`, and then only with the same meta; a resumed writer continues
    the shard numbering and `committed()` says which ids to skip. `store` says what is kept
    of each attribution (store.py); it joins the meta as 'store', so a run is resumed with
    the store it began with. `retry_errors`: a resumed writer leaves the rows that failed
    before out of `committed()` (`retried` holds them), so that they are explained again;
    an error row a later result or error supersedes is left out of read_errors."""

    def __init__(self, out: str | os.PathLike, meta: Mapping[str, str], resume: bool,
                 shard_rows: int = 256, store: Store = FULL, retry_errors: bool = False):
        self._pa, self._pq = pyarrow_modules()
        if shard_rows < 1:
            raise InputError(f"shard_rows must be at least 1, not {shard_rows}")
        for key, value in meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"run meta must map strings to strings: {key!r}: {value!r}")
            if _is_layout_key(META_PREFIX + key):
                raise ValueError(f"run meta key {key!r} names the attributions' layout")
        if "store" in meta:
            raise ValueError("run meta key 'store' is the writer's: pass store=")
        self.out = Path(out)
        self.store = store
        self.meta = {**meta, "store": str(store)}
        self.shard_rows = shard_rows
        _check_folder(self.out)
        if holds_run(self.out) and not resume:
            raise InputError(f"{self.out} holds results of an earlier run: pass --resume to "
                             "continue it, or another --out")
        self._committed: set[str] = set()
        self.retried: set[str] = set()
        self._next = {RESULTS: 0, ERRORS: 0}
        # What is kept of each attributed input, and whether the maps are signed: fixed by
        # the first row of the run.
        self._layout: dict[str, Kept] | None = None
        self._signed: bool | None = None
        if resume:
            self._resume(retry_errors)
        _remove_temporary(self.out)
        self._results: list[RowResult] = []
        self._errors: list[RowError] = []
        self._pending: set[str] = set()
        self._closed = False

    def committed(self) -> set[str]:
        """The ids already in written shards (results and errors): the rows a run skips."""
        return set(self._committed)

    def add(self, results: Sequence[RowResult]) -> None:
        """Queue explained rows; every `shard_rows` of them are written as one shard."""
        self._accept([row.id for row in results])
        layout, signed = self._layout, self._signed
        for row in results:
            layout, signed = _row_layout(row, layout, signed, self.store)
        self._layout, self._signed = layout, signed
        self._pending.update(row.id for row in results)
        self._results.extend(results)
        while len(self._results) >= self.shard_rows:
            self._write_results(self.shard_rows)

    def add_errors(self, errors: Sequence[RowError]) -> None:
        """Queue rows that could not be explained; written like results, in shards."""
        self._accept([row.id for row in errors])
        self._pending.update(row.id for row in errors)
        self._errors.extend(errors)
        while len(self._errors) >= self.shard_rows:
            self._write_errors(self.shard_rows)

    def flush(self) -> None:
        """Write every queued row (a last shard may hold fewer than `shard_rows`)."""
        while self._results:
            self._write_results(self.shard_rows)
        while self._errors:
            self._write_errors(self.shard_rows)

    def close(self, summary: Mapping) -> None:
        """Flush, then write errors.parquet (every error shard in one file) and summary.json:
        the run is complete."""
        self.flush()
        self._write_run_file()
        errors = read_errors(self.out)
        atomic_write(self.out / ERRORS_FILE, lambda stream: self._pq.write_table(
            errors.replace_schema_metadata(self._metadata()), stream))
        save_json(self.out / SUMMARY_FILE, dict(summary))
        self._closed = True

    # -- internals

    def _accept(self, ids: list[str]) -> None:
        """Refuse a row written or queued before: a bug in the caller, never data."""
        if self._closed:
            raise RuntimeError("ResultWriter is closed")
        seen: set[str] = set()
        for row_id in ids:
            if row_id in self._committed or row_id in self._pending or row_id in seen:
                raise RuntimeError(f"row {row_id!r} is already written or queued")
            seen.add(row_id)

    def _resume(self, retry_errors: bool) -> None:
        """Check the earlier run's meta against ours, then learn its ids, shard numbers and
        attribution layout."""
        recorded = _read_run_file(self.out)
        if recorded is not None:
            _same_meta(self.out, _with_store(recorded), self.meta)
        ids: dict[str, set[str]] = {}
        for kind in (RESULTS, ERRORS):
            shards = shard_files(self.out / kind)
            ids[kind] = set()
            for _, path in shards:
                parquet = open_shard(self._pq, path)
                _same_meta(path, _with_store(_file_meta(parquet.schema_arrow)), self.meta)
                ids[kind].update(parquet.read(columns=["id"]).column("id").to_pylist())
            self._next[kind] = shards[-1][0] + 1 if shards else 0
            if kind == RESULTS and shards:
                last = shards[-1][1]
                self._layout, self._signed = _schema_layout(
                    open_shard(self._pq, last).schema_arrow, self.store, str(last))
        failed = ids[ERRORS] - ids[RESULTS]
        self._committed = ids[RESULTS] | (set() if retry_errors else failed)
        self.retried = failed if retry_errors else set()

    def _write_run_file(self) -> None:
        if not (self.out / RUN_FILE).exists():
            self.out.mkdir(parents=True, exist_ok=True)
            save_json(self.out / RUN_FILE, {"meta": self.meta})

    def _metadata(self) -> dict[str, str]:
        metadata = {META_PREFIX + key: value for key, value in self.meta.items()}
        for name, layout in (self._layout or {}).items():
            if self.store.kind != "topk":
                metadata[SHAPE_PREFIX + name] = json.dumps(list(layout.stored))
            metadata[EXPLAINED_PREFIX + name] = json.dumps(list(layout.shape))
        if self._signed is not None:
            metadata[SIGNED_KEY] = json.dumps(self._signed)
        return metadata

    def _write_results(self, count: int) -> None:
        rows = self._results[:count]
        self._write(RESULTS, self._results_table(rows), [row.id for row in rows])
        # Dequeued only once written: a failed write leaves the rows queued, not lost.
        del self._results[:count]

    def _write_errors(self, count: int) -> None:
        rows = self._errors[:count]
        pa = self._pa
        table = pa.table({name: pa.array([getattr(row, name) for row in rows], pa.string())
                          for name in ("id", "source", "reason")})
        self._write(ERRORS, table, [row.id for row in rows])
        del self._errors[:count]

    def _write(self, kind: str, table: pyarrow.Table, ids: list[str]) -> None:
        """One shard, renamed into place whole; only then are its ids committed."""
        self._write_run_file()
        folder = self.out / kind
        folder.mkdir(parents=True, exist_ok=True)
        table = table.replace_schema_metadata(self._metadata())
        path = folder / f"part-{self._next[kind]:05d}.parquet"
        atomic_write(path, lambda stream: self._pq.write_table(table, stream), durable=True)
        self._next[kind] += 1
        self._committed.update(ids)
        self._pending.difference_update(ids)

    def _results_table(self, rows: list[RowResult]) -> pyarrow.Table:
        pa = self._pa
        columns: dict[str, Any] = {
            "id": pa.array([row.id for row in rows], pa.string()),
            "source": pa.array([row.source for row in rows], pa.string()),
            "label": pa.array([row.label for row in rows], pa.string()),
            "target": pa.array([row.target for row in rows], pa.int64()),
            "predicted": pa.array([row.predicted for row in rows], pa.int64()),
            "score": pa.array([row.score for row in rows], pa.float64()),
            "delta": pa.array([row.delta for row in rows], pa.float64()),
            "note": pa.array([row.note for row in rows], pa.string()),
        }
        for name, layout in (self._layout or {}).items():
            values = [row.attributions[name] for row in rows]
            for column, array in stored_columns(self.store, name, values, layout,
                                                bool(self._signed)).items():
                columns[column] = pa.FixedSizeListArray.from_arrays(
                    pa.array(array.reshape(-1)), array.shape[1])
        return pa.table(columns)


def _row_layout(row: RowResult, layout: dict[str, Kept] | None, signed: bool | None,
                store: Store) -> tuple[dict[str, Kept], bool]:
    """The run's layout and signedness, checked against this row (or taken from it, for the
    first row): every row stores the same inputs, each in one shape, so a column reshapes
    whole."""
    mine_signed = row.signed
    if signed is not None and mine_signed != signed:
        raise RuntimeError(f"row {row.id!r} is {'un' * (not mine_signed)}signed, earlier rows "
                           f"{'un' * (not signed)}signed")
    mine = {}
    for name, value in row.attributions.items():
        array = np.asarray(value)
        if array.dtype not in _STORED:
            raise RuntimeError(f"row {row.id!r}: attribution of {name!r} is {array.dtype}, "
                               "not a float array")
        mine[name] = (tuple(array.shape), _STORED[array.dtype])
    if layout is None:
        return {name: Kept.of(store, *spec) for name, spec in mine.items()}, mine_signed
    if set(mine) != set(layout):
        raise RuntimeError(f"row {row.id!r} attributes {sorted(mine)}, earlier rows "
                           f"{sorted(layout)}")
    for name, (shape, dtype) in mine.items():
        if shape != layout[name].shape:
            raise InputError(f"row {row.id!r}: the attribution of {name!r} has shape "
                             f"{list(shape)}, earlier rows {list(layout[name].shape)}: a "
                             "dataset run stores one shape per input")
        if not np.can_cast(dtype, layout[name].dtype, "safe"):
            raise RuntimeError(f"row {row.id!r}: attribution of {name!r} is {np.dtype(dtype)}"
                               f", earlier rows {np.dtype(layout[name].dtype)}")
    return layout, mine_signed if signed is None else signed


def _schema_layout(schema, store: Store, where: str) -> tuple[dict[str, Kept], bool | None]:
    """An earlier run's layout and signedness, from the schema of the result shard `where`."""
    metadata = schema.metadata or {}
    layout = {}
    for field in schema:
        for prefix in (ATTRIBUTION, TOPK_VALUE):
            if field.name.startswith(prefix):
                name = field.name[len(prefix):]
                layout[name] = Kept.of(store, explained_shape(schema, name, where),
                                       field.type.value_type.to_pandas_dtype())
    signed = metadata.get(SIGNED_KEY.encode())
    return layout, None if signed is None else json.loads(signed)


def attribution(table: pyarrow.Table, name: str, where: str = "the results") -> np.ndarray:
    """The attribution of input `name` over the table's rows, [rows, *shape], the shape read
    from the table's schema metadata (onnxplain.shape.<name>): the attribution itself with
    --store full, its map with --store map. Results stored as top k are read by topk() or
    dense(). `where` names the table in errors (a shard's path)."""
    if TOPK_VALUE + name in table.column_names:
        raise InputError(f"the results keep the top k of each attribution of {name!r} "
                         f"(--store {_store_of(table)}): read them with topk() or dense()")
    values = _list_column(table, ATTRIBUTION, name)
    return values.reshape(len(table), *_recorded_shape(table.schema, name, where))


def topk(table: pyarrow.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Results stored with --store topk=K: for input `name`, [rows, k] flat indices (int64,
    C order into the attribution's shape, onnxplain.attribution_shape.<name>) and [rows, k]
    signed values, each row's largest |value| first."""
    return _list_column(table, TOPK_INDEX, name), _list_column(table, TOPK_VALUE, name)


def dense(table: pyarrow.Table, name: str, where: str = "the results") -> np.ndarray:
    """The attribution of input `name`, [rows, *shape as explained]: with --store topk=K its
    top k entries scattered into zeros (what the full attribution holds there), otherwise
    as attribution() reads it (with --store map, the map); `where` as there."""
    if TOPK_VALUE + name not in table.column_names:
        return attribution(table, name, where)
    indices, values = topk(table, name)
    shape = explained_shape(table.schema, name, where)
    out = np.zeros((len(table), int(np.prod(shape, dtype=np.int64))), values.dtype)
    np.put_along_axis(out, indices, values, axis=1)
    return out.reshape(len(table), *shape)


def _list_column(table: pyarrow.Table, prefix: str, name: str) -> np.ndarray:
    """A fixed-size list column as [rows, width]."""
    if prefix + name not in table.column_names:
        have = sorted({c.split("/", 1)[1] for c in table.column_names if "/" in c})
        raise InputError(f"the results have no {prefix[:-1]} of {name!r}, only inputs {have}"
                         f" (--store {_store_of(table)})")
    column = table.column(prefix + name)
    dtype = column.type.value_type.to_pandas_dtype()
    parts = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return flat.astype(dtype, copy=False).reshape(len(table), column.type.list_size)


def explained_shape(schema, name: str, where: str = "the results") -> tuple[int, ...]:
    """Input `name`'s attribution shape as explained; shards from before --store record
    only onnxplain.shape.<name>, which then is that shape. `where` names the schema's
    table in errors (a shard's path)."""
    return _recorded_shape(schema, name, where, EXPLAINED_PREFIX)


def _recorded_shape(schema, name: str, where: str, prefix: str = SHAPE_PREFIX
                    ) -> tuple[int, ...]:
    """The shape the metadata records under `prefix`+name (onnxplain.shape.<name> as well,
    the only one before --store), or a one-line error naming `where`."""
    metadata = schema.metadata or {}
    text = metadata.get((prefix + name).encode()) or metadata.get((SHAPE_PREFIX + name).encode())
    try:
        shape = tuple(json.loads(text))
        if all(isinstance(size, int) and size >= 0 for size in shape):
            return shape
    except (TypeError, ValueError):
        pass
    raise InputError(f"no shape of the attribution of {name!r} ({prefix}{name}) in the schema "
                     f"metadata of {where}: not written by explain-dataset")


def _store_of(table: pyarrow.Table) -> str:
    return (table.schema.metadata or {}).get((META_PREFIX + "store").encode(), b"full").decode()


def read_results(out: str | os.PathLike) -> pyarrow.Table:
    """Every committed result row of the run in `out`, in the order written (shards in
    number order), with the run's meta and shapes in the schema metadata."""
    return _read(out, RESULTS)


def read_errors(out: str | os.PathLike) -> pyarrow.Table:
    """Every committed error row of the run in `out` (id, source, reason), in order; of a
    row retried (retry_errors), only its last error, and none once it was explained."""
    errors = _read(out, ERRORS)
    ids = errors.column("id").to_pylist()
    explained = _result_ids(out) & set(ids)
    if not explained and len(set(ids)) == len(ids):
        return errors
    last = {id: index for index, id in enumerate(ids)}
    keep = [index for index, id in enumerate(ids) if last[id] == index and id not in explained]
    return errors.take(keep)


def _result_ids(out: str | os.PathLike) -> set[str]:
    _, pq = pyarrow_modules()
    return {id for _, path in shard_files(Path(out) / RESULTS)
            for id in open_shard(pq, path).read(columns=["id"]).column("id").to_pylist()}


def _read(out: str | os.PathLike, kind: str) -> pyarrow.Table:
    pa, pq = pyarrow_modules()
    out = Path(out)
    if not holds_run(out):
        raise InputError(f"{out} holds no explain-dataset results")
    tables = [open_shard(pq, path, read=True) for _, path in shard_files(out / kind)]
    if tables:
        return pa.concat_tables(tables)
    names = ("id", "source", "reason") if kind == ERRORS else ("id", "source", "label")
    fields = [pa.field(name, pa.string()) for name in names]
    if kind == RESULTS:
        fields += [pa.field("target", pa.int64()), pa.field("predicted", pa.int64()),
                   pa.field("score", pa.float64()), pa.field("delta", pa.float64()),
                   pa.field("note", pa.string())]
    recorded = _read_run_file(out) or {}
    return pa.schema(fields, {META_PREFIX + k: v for k, v in recorded.items()}).empty_table()


# -- the folder


def _check_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")


def holds_run(out: Path) -> bool:
    """Whether `out` holds anything a run writes (a file a killed run leaves counts)."""
    if (out / RUN_FILE).exists() or (out / SUMMARY_FILE).exists() \
            or (out / ERRORS_FILE).exists():
        return True
    return any(shard_files(out / kind) for kind in (RESULTS, ERRORS))


def shard_files(folder: Path) -> list[tuple[int, Path]]:
    """The shards in `folder`, by number; temporary files are not shards."""
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), folder / name) for name in os.listdir(folder)
             if (match := _PART.fullmatch(name))]
    return sorted(found)


def _remove_temporary(out: Path) -> None:
    """Remove what a killed writer left half-written: it was never renamed into place."""
    for folder in (out, out / RESULTS, out / ERRORS):
        if folder.is_dir():
            for name in os.listdir(folder):
                if name.startswith(_TEMPORARY):
                    (folder / name).unlink(missing_ok=True)


def open_shard(pq, path: Path, read: bool = False):
    """The shard at `path` (its whole table where `read`), or a one-line error."""
    try:
        return pq.ParquetFile(path).read() if read else pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path} is not a readable Parquet shard ({first})") from None


def _read_run_file(out: Path) -> dict[str, str] | None:
    path = out / RUN_FILE
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text())["meta"])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path} is not a run file of explain-dataset") from None


def _file_meta(schema) -> dict[str, str]:
    metadata = schema.metadata or {}
    return {key.decode()[len(META_PREFIX):]: value.decode() for key, value in metadata.items()
            if key.startswith(META_PREFIX.encode()) and not _is_layout_key(key.decode())}


def _is_layout_key(key: str) -> bool:
    """Whether a schema metadata key holds the attributions' layout, not the run's meta."""
    return key == SIGNED_KEY or key.startswith((SHAPE_PREFIX, EXPLAINED_PREFIX))


def _with_store(recorded: Mapping[str, str]) -> dict[str, str]:
    """A recorded meta as today's writer records it: runs from before --store kept the
    attributions whole and did not say so."""
    return {"store": str(FULL), **recorded}


def _same_meta(where: Path, recorded: Mapping[str, str], meta: Mapping[str, str]) -> None:
    """Refuse to resume a run made with other settings, naming the first that differs."""
    for key in [*meta, *(key for key in recorded if key not in meta)]:
        if recorded.get(key) != meta.get(key):
            raise InputError(f"{where} holds a run with another {key} "
                             f"({_short(recorded.get(key))}, now {_short(meta.get(key))}): "
                             "resume it with the same settings, or pass another --out")


def _short(value: str | None, limit: int = 60) -> str:
    if value is None:
        return "none"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def recorded_meta(out: str | os.PathLike) -> dict[str, str] | None:
    """The meta of the run under `out` (its run.json); None when there is none."""
    return _read_run_file(Path(out))
