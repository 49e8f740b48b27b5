"""Datasets read lazily in batches for one model: a folder of images (class sub-folders give
labels, as torchvision's ImageFolder), .npy/.npz shards (rows on axis 0, never loaded whole)
or Parquet files (one column per input: parquet_source.py).
Each row is checked alone before it joins a batch, so a bad row becomes a RowError and the
run goes on; memory stays bounded by one batch whatever the dataset size."""

from __future__ import annotations

import bisect
import itertools
import os
import zipfile
import zlib
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import InputError
from ..graph.model import Model
from ..images import (
    IMAGE_SUFFIXES,
    ImagePreprocessing,
    default_preprocessing,
    image_inputs,
    is_image_file,
    load_image,
)
from ..inputs import prepare_inputs
from ..methods.options import is_count
from ..vocab import Vocabulary
from .parquet_source import check_unique_ids, parquet_parts, text_use
from .parts import IMAGE_ERRORS, Part, Read, in_window, one_line, relative_path, window_rows
from .rows import Batch, RowError

ARRAY_SUFFIXES = (".npy", ".npz", ".parquet")
# What reading a shard's member stream may raise when the file is truncated or corrupt.
STREAM_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError)
# Errors held before a batch fills are handed out at this many, so memory stays bounded even
# when every row of a large dataset fails.
MAX_PENDING_ERRORS = 1024


class Source:
    """A dataset for one model: `count()` rows, read by `batches()`; see open_source."""

    def __init__(self, model: Model, root: Path, parts: list[Part], uses_text: bool = False,
                 text_length: int | None = None):
        self.model = model
        self.root = root
        self._parts = parts
        self.uses_text = uses_text  # a Parquet text column is read: the vocabulary matters
        self.text_length = text_length  # tokens every text row takes (parquet_source.py)
        # Each part's first row in the source: a window finds its parts by bisection.
        self._firsts = list(itertools.accumulate((part.rows for part in parts), initial=0))
        self._total = self._firsts.pop()

    def check_unique_ids(self) -> None:
        """Refuse two rows under one id (a pass over the id columns: the driver's, once)."""
        check_unique_ids(self._parts)

    def count(self) -> int | None:
        """The number of rows (files for images, axis-0 sizes for shards), skipped ones
        included; known from file listings and array headers, without decoding."""
        return self._total

    def batches(self, rows: int, skip: Container[str] = (), window: range | None = None
                ) -> Iterator[tuple[Batch, list[RowError]]]:
        """Batches of at most `rows` good rows, in source order, each with the RowErrors met
        while filling it. Rows whose id is in `skip` are not read (resume), nor rows whose
        position in the source (0 to count() - 1) is outside `window` (a worker's share).
        A batch closes early when a row's shapes differ from the rows before it (images
        without a crop), and errors alone come out in an empty Batch (no feeds) when they
        pile up or at the end."""
        if not is_count(rows):
            raise InputError(f"rows per batch must be a positive integer, got {rows!r}")
        if window is not None and window.step != 1:
            raise ValueError(f"a window of rows is a contiguous range, not {window}")
        pending = _Pending()
        for part, part_window in self._windows(window):
            for read in part.read(skip, part_window):
                feeds, reason = (None, read.reason) if read.reason else self._check(read.values)
                if feeds is None:
                    pending.errors.append(RowError(read.id, read.source, reason))
                    if len(pending.errors) >= MAX_PENDING_ERRORS:
                        yield Batch([], [], []), pending.take_errors()
                    continue
                if pending.ids and not pending.fits(feeds):
                    yield pending.take()
                pending.add(read, feeds)
                if len(pending.ids) >= rows:
                    yield pending.take()
        if pending.ids or pending.errors:
            yield pending.take()

    def windows(self, rows: int) -> list[range]:
        """The source cut into windows of about `rows` rows for workers to share: parts
        whose rows are read in order from the start (.npz members do not seek) are never
        cut, so no worker reads past rows another explains."""
        found: list[range] = []
        start = 0  # of the window being filled
        for part, first in zip(self._parts, self._firsts, strict=True):
            end = first + part.rows
            if not getattr(part, "seeks", True):
                if start < first:
                    found.append(range(start, first))
                found.append(range(first, end))
                start = end
                continue
            while end - start >= rows:
                found.append(range(start, start + rows))
                start += rows
        if start < self._total:
            found.append(range(start, self._total))
        return [window for window in found if len(window)]

    def _windows(self, window: range | None) -> Iterator[tuple[Part, range | None]]:
        """Each part holding rows of `window`, with its share in the part's own positions
        (None: all of the part)."""
        if window is None:
            yield from ((part, None) for part in self._parts)
            return
        index = max(bisect.bisect_right(self._firsts, window.start) - 1, 0)
        for part, start in zip(self._parts[index:], self._firsts[index:], strict=True):
            if start >= window.stop:
                return
            stop = start + part.rows
            if window.start <= start and stop <= window.stop:
                yield part, None
            elif window.start < stop:
                yield part, range(max(window.start, start) - start,
                                  min(window.stop, stop) - start)

    def _check(self, values: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """The row's feeds as the model takes them ([1, ...] each), or why it is refused:
        NaN/Inf values, or what prepare_inputs says (shape, dtype, token ids)."""
        bad = _not_finite(values)
        if bad:
            return None, bad
        try:
            feeds = prepare_inputs(self.model, {name: value[None] for name, value in
                                                values.items()})
        except InputError as err:
            return None, one_line(err)
        # A cast (float64 -> float32) may overflow to Inf.
        return (None, bad) if (bad := _not_finite(feeds)) else (feeds, None)


@dataclass
class _Pending:
    """The batch being filled: rows' ids, sources, labels, feeds, and the errors met."""

    ids: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    feeds: dict[str, list[np.ndarray]] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)

    def fits(self, feeds: dict[str, np.ndarray]) -> bool:
        return all(self.feeds[name][0].shape == value.shape for name, value in feeds.items())

    def add(self, read: Read, feeds: dict[str, np.ndarray]) -> None:
        self.ids.append(read.id)
        self.sources.append(read.source)
        self.labels.append(read.label)
        for name, value in feeds.items():
            self.feeds.setdefault(name, []).append(value)

    def take(self) -> tuple[Batch, list[RowError]]:
        feeds = {name: np.concatenate(values) for name, values in self.feeds.items()}
        batch = Batch(self.ids, self.sources, self.labels, feeds)
        self.ids, self.sources, self.labels, self.feeds = [], [], [], {}
        return batch, self.take_errors()

    def take_errors(self) -> list[RowError]:
        errors, self.errors = self.errors, []
        return errors


def open_source(model: Model, data: str | os.PathLike,
                preprocessing: Mapping[str, ImagePreprocessing] | None = None,
                vocab: str | os.PathLike | Vocabulary | None = None,
                text_length: int | None = None) -> Source:
    """The dataset at `data` for `model`: a folder (walked recursively, in sorted order) of
    images, of .npy/.npz shards or of Parquet files, or one such file. Images feed the
    model's single image input (preprocessing[input], else what its declared shape says);
    .npy files feed a single-input model; .npz keys and Parquet columns are input names.
    `vocab` (a vocab.txt, vocab.json or tokenizer.json, or an onnxplain.vocab.Vocabulary)
    turns Parquet text into token ids (parquet_source.py), every text row taking
    `text_length` tokens when given (a resumed run's source.text_length), else the model's
    sequence length or the longest text's. Refused in one line (InputError): a
    missing path, an empty folder, images mixed with arrays, an unknown suffix, shards whose
    headers do not fit the model."""
    path = Path(data)
    _check_rows_on_axis_0(model)
    if path.is_dir():
        root, files = path, _walk(path)
        if not files:
            raise InputError(f"no image, .npy, .npz or .parquet files in the folder {data}")
    elif path.is_file():
        root, files = path.parent, [path]
    else:
        raise InputError(f"the data path {data} does not exist")
    images = [file for file in files if is_image_file(file.name)]
    arrays = [file for file in files if file.suffix.lower() in ARRAY_SUFFIXES]
    unknown = [file for file in files if file not in images and file not in arrays]
    if unknown:
        raise InputError(f"{unknown[0]} is neither an image ({', '.join(IMAGE_SUFFIXES)}) "
                         "nor a .npy/.npz/.parquet shard")
    if images and arrays:
        raise InputError(f"the folder {data} mixes images ({images[0]}) and array shards "
                         f"({arrays[0]}); give one kind per run")
    if vocab is not None and not any(file.suffix.lower() == ".parquet" for file in arrays):
        raise InputError(f"a vocabulary turns Parquet text columns into token ids, but the "
                         f"data at {data} holds {'images' if images else 'array shards'}")
    if images:
        return Source(model, root, _image_parts(model, root, images, preprocessing or {}))
    if any(file.suffix.lower() == ".parquet" for file in arrays):
        if any(file.suffix.lower() != ".parquet" for file in arrays):
            raise InputError(f"the folder {data} mixes Parquet files and .npy/.npz shards; "
                             "give one kind per run")
        parts = parquet_parts(model, root, arrays, preprocessing or {}, vocab, text_length)
        return Source(model, root, parts, *text_use(parts))
    if preprocessing:
        raise InputError("image preprocessing applies to image files, but the data at "
                         f"{data} holds array shards")
    return Source(model, root, [_array_part(model, root, file) for file in arrays])


def _walk(root: Path) -> list[Path]:
    """Files under `root`, sorted by their relative path's parts (deterministic across
    machines); hidden files and folders (.DS_Store, .ipynb_checkpoints) are not data."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(Path(folder, name) for name in names if not name.startswith("."))
    return sorted(found, key=lambda file: file.relative_to(root).parts)


def _check_rows_on_axis_0(model: Model) -> None:
    """Rows are stacked on axis 0 of every input: refuse models that take them elsewhere."""
    moved = model.batch.axes
    if moved:
        name, axis = moved[0]
        where = "is one value for every row" if axis is None else f"has its rows on axis {axis}"
        raise InputError(f"datasets feed rows on axis 0 of every input, but input '{name}' "
                         f"{where}")


def _not_finite(values: Mapping[str, np.ndarray]) -> str | None:
    for name, value in values.items():
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            return f"input '{name}' holds {bad} NaN or Inf values"
    return None


# --- images -----------------------------------------------------------------------------

@dataclass
class _ImageFile(Part):
    """One image file: one row of the model's image input."""

    path: Path
    id: str
    label: str | None
    input: str
    prep: ImagePreprocessing
    rows: int = 1

    def read(self, skip: Container[str], window: range | None = None) -> Iterator[Read]:
        if self.id in skip or not in_window(0, window):
            return
        source = str(self.path)
        try:
            value = load_image(self.path, self.prep)
        except IMAGE_ERRORS as err:
            yield Read(self.id, source, self.label, reason=one_line(err))
            return
        yield Read(self.id, source, self.label, values={self.input: value})


def _image_parts(model: Model, root: Path, files: list[Path],
                 preprocessing: Mapping[str, ImagePreprocessing]) -> list[Part]:
    found = image_inputs(model)
    if len(found) != 1 or len(model.inputs) != 1:
        listing = ", ".join(spec.describe() for spec in model.inputs)
        raise InputError("image folders feed models with exactly one input, an image; this "
                         f"model's inputs are: {listing}")
    name = next(iter(found))
    unknown = sorted(set(preprocessing) - {name})
    if unknown:
        raise InputError(f"preprocessing given for '{unknown[0]}', which is not the model's "
                         f"image input '{name}'")
    prep = preprocessing.get(name) or default_preprocessing(model.input(name))
    parts: list[Part] = []
    for file in files:
        relative = file.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        parts.append(_ImageFile(file, relative.as_posix(), label, name, prep))
    return parts


# --- array shards -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Header:
    """An .npy header: what np.lib.format says, and where the data starts."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    offset: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def _read_header(stream, where: str) -> _Header:
    """The header of the .npy data at the stream's position, read without the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        offset = stream.tell()
    except STREAM_ERRORS as err:
        raise InputError(f"cannot read the array header of {where}: {one_line(err)}") from None
    if not shape:
        raise InputError(f"{where} holds a single value (shape ()); rows lie on axis 0")
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects ({dtype}); save numeric arrays")
    return _Header(tuple(int(d) for d in shape), bool(fortran), dtype, offset)


@dataclass
class _NpyFile(Part):
    """A .npy shard of a single-input model, memory-mapped: rows are read one at a time."""

    path: Path
    relative: str
    input: str
    rows: int

    def read(self, skip: Container[str], window: range | None = None) -> Iterator[Read]:
        rows = window_rows(window, self.rows)
        ids = [(f"{self.relative}#{row}", f"{self.path}#{row}") for row in rows]
        try:
            array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except STREAM_ERRORS as err:
            reason = f"cannot read {self.path}: {one_line(err)}"
            yield from (Read(id, source, None, reason=reason) for id, source in ids
                        if id not in skip)
            return
        for row, (id, source) in zip(rows, ids, strict=True):
            if id not in skip:
                yield Read(id, source, None, values={self.input: np.array(array[row])})
        del array  # closes the map


@dataclass
class _NpzFile(Part):
    """An .npz shard (one member per model input), its members streamed row by row so a
    shard is never loaded whole (np.load of an .npz member reads all of it). Its CRCs are
    checked first, so a damaged shard gives RowErrors, never wrong rows (it is read twice)."""

    path: Path
    relative: str
    members: dict[str, tuple[str, _Header]]  # input -> (member name, header)
    rows: int
    # Members stream from their start: a window is read past every row before it.
    seeks: ClassVar[bool] = False

    def read(self, skip: Container[str], window: range | None = None) -> Iterator[Read]:
        rows = window_rows(window, self.rows)
        wanted = [row for row in rows if f"{self.relative}#{row}" not in skip]
        if not wanted:
            return
        # Zip checks a member's CRC only at its end, after damaged rows would have been
        # handed out: a first pass checks it, in bounded pieces, before any row is read.
        damage = self._damage()
        if damage:
            reason = f"cannot read {self.path}: {damage}"
            yield from (Read(f"{self.relative}#{row}", f"{self.path}#{row}", None,
                              reason=reason) for row in wanted)
            return
        yield from self._rows(skip, rows)

    def _damage(self) -> str | None:
        """Why the shard's members fail their CRC or cannot be inflated; None if they pass."""
        try:
            with zipfile.ZipFile(self.path) as shard:
                for member, _ in self.members.values():
                    with shard.open(member) as stream:
                        while stream.read(1 << 20):
                            pass
        except STREAM_ERRORS as err:
            return one_line(err)
        return None

    def _rows(self, skip: Container[str], rows: range) -> Iterator[Read]:
        row = 0
        try:
            with zipfile.ZipFile(self.path) as shard:
                streams = {name: _open_member(shard, member, header)
                           for name, (member, header) in self.members.items()}
                for row in range(rows.stop):  # members do not seek: rows before are read past
                    id, source = f"{self.relative}#{row}", f"{self.path}#{row}"
                    if id in skip or row not in rows:
                        for name, stream in streams.items():
                            _skip_bytes(stream, self.members[name][1].row_bytes)
                        continue
                    values = {name: self._row(stream, self.members[name][1])
                              for name, stream in streams.items()}
                    yield Read(id, source, None, values=values)
                row = rows.stop
        except STREAM_ERRORS as err:  # a truncated or corrupt shard: its remaining rows fail
            reason = f"cannot read {self.path} from row {row}: {one_line(err)}"
            for rest in range(max(row, rows.start), rows.stop):
                id = f"{self.relative}#{rest}"
                if id not in skip:
                    yield Read(id, f"{self.path}#{rest}", None, reason=reason)

    @staticmethod
    def _row(stream, header: _Header) -> np.ndarray:
        data = stream.read(header.row_bytes)
        if len(data) != header.row_bytes:
            raise EOFError(f"the data ends early ({len(data)} of {header.row_bytes} bytes)")
        return np.frombuffer(data, dtype=header.dtype).reshape(header.shape[1:])


def _open_member(shard: zipfile.ZipFile, member: str, header: _Header):
    stream = shard.open(member)
    stream.read(header.offset)  # past the header, read and checked when the source opened
    return stream


def _skip_bytes(stream, count: int) -> None:
    # Compressed members cannot seek: reading forward in bounded pieces keeps memory flat.
    while count > 0:
        data = stream.read(min(count, 1 << 20))
        if not data:
            raise EOFError("the data ends early")
        count -= len(data)


def _array_part(model: Model, root: Path, file: Path) -> Part:
    relative = relative_path(root, file)
    if file.suffix.lower() == ".npy":
        return _npy_part(model, file, relative)
    return _npz_part(model, file, relative)


def _npy_part(model: Model, file: Path, relative: str) -> _NpyFile:
    if len(model.inputs) != 1:
        listing = ", ".join(spec.describe() for spec in model.inputs)
        raise InputError(f".npy shards feed single-input models; this one has {listing}: "
                         f"save .npz shards keyed by input name ({file})")
    try:
        with open(file, "rb") as stream:
            header = _read_header(stream, str(file))
    except OSError as err:
        raise InputError(f"cannot read {file}: {one_line(err)}") from None
    size = header.offset + header.shape[0] * header.row_bytes
    if file.stat().st_size < size:
        raise InputError(f"{file} is truncated: its header declares {header.shape} "
                         f"({size} bytes) but the file has {file.stat().st_size}")
    return _NpyFile(file, relative, model.inputs[0].name, header.shape[0])


def _npz_part(model: Model, file: Path, relative: str) -> _NpzFile:
    names = [spec.name for spec in model.inputs]
    try:
        with zipfile.ZipFile(file) as shard:
            members = {}
            for member in shard.namelist():
                key = member[:-4] if member.endswith(".npy") else member
                if key not in names:
                    raise InputError(f"{file} holds '{key}', which is not a model input "
                                     f"(inputs: {', '.join(names)})")
                with shard.open(member) as stream:
                    members[key] = (member, _read_header(stream, f"{file}['{key}']"))
    except STREAM_ERRORS as err:
        raise InputError(f"cannot read {file} as an .npz shard: {one_line(err)}") from None
    missing = [name for name in names if name not in members]
    if missing:
        raise InputError(f"{file} lacks the model input '{missing[0]}' (its keys: "
                         f"{', '.join(members) or 'none'})")
    counts = {key: header.shape[0] for key, (_, header) in members.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{key}: {count}" for key, count in counts.items())
        raise InputError(f"{file}'s arrays disagree on the number of rows ({listing})")
    fortran = [key for key, (_, header) in members.items()
               if header.fortran and len(header.shape) > 1]
    if fortran:
        raise InputError(f"{file}['{fortran[0]}'] is stored in Fortran order, so its rows "
                         "cannot be streamed; save np.ascontiguousarray(array)")
    return _NpzFile(file, relative, members, next(iter(counts.values())))
