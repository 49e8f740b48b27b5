"""Parquet files as a dataset source (issue 20): one column per model input, read lazily in
record batches of only the needed columns, so a file is never loaded whole. A column holds
fixed-shape tensors (list, fixed_size_list or nested lists: one row of the input without its
batch axis), single numbers (inputs of shape [N] or [N, 1]), or, for the model's single image
input, image bytes or image paths (relative ones resolved against the file's folder). Optional
columns `id` (strings) and `label` (strings or integers) give each row's id and label; any
other column is refused, so a misspelt input name is never silently dropped."""

from __future__ import annotations

import io
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..graph.model import Model, TensorSpec
from ..images import ImagePreprocessing, default_preprocessing, image_inputs, load_image
from .parts import IMAGE_ERRORS, Part, Read, one_line, relative_path
from .results import pyarrow_modules

ID, LABEL = "id", "label"
# Rows per record batch read: aimed at READ_BYTES of uncompressed data, within these bounds.
READ_BYTES = 32 << 20
READ_ROWS = (1, 1024)
TENSOR, NUMBER, IMAGE_BYTES, IMAGE_PATH = "tensor", "number", "image bytes", "image path"


class _NamedBytes(io.BytesIO):
    """Image bytes that name their row in load_image's messages (not '<_io.BytesIO ...>')."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.where = name

    def __str__(self) -> str:
        return self.where


@dataclass
class _ParquetFile(Part):
    """One Parquet file: `kinds` says how each input's column is read (TENSOR, NUMBER,
    IMAGE_BYTES, IMAGE_PATH); `scalar_shapes` gives the row shape of NUMBER columns' inputs."""

    path: Path
    relative: str
    kinds: dict[str, str]
    scalar_shapes: dict[str, tuple[int, ...]]
    prep: ImagePreprocessing | None
    has_id: bool
    has_label: bool
    groups: tuple[int, ...]  # rows per row group, from the file's metadata
    rows: int
    read_rows: int

    def read(self, skip: Container[str]) -> Iterator[Read]:
        _, pq = pyarrow_modules()
        # Pages written with checksums are checked, so damage is an error, not wrong values.
        with pq.ParquetFile(self.path, page_checksum_verification=True) as parquet:
            first = 0
            for group, size in enumerate(self.groups):
                yield from self._group(parquet, group, first, first + size, skip)
                first += size

    def _group(self, parquet, group: int, first: int, end: int, skip: Container[str]
               ) -> Iterator[Read]:
        """The rows first..end-1 of one row group; if it cannot be read (a damaged page),
        its remaining rows fail and the next group is read: damage costs one row group."""
        pa, _ = pyarrow_modules()
        columns = list(self.kinds) + [ID] * self.has_id + [LABEL] * self.has_label
        row = first
        try:
            for batch in parquet.iter_batches(batch_size=self.read_rows, row_groups=[group],
                                              columns=columns):
                ids, labels = self._ids(batch, row), self._labels(batch)
                for index, id in enumerate(ids):
                    if id not in skip:
                        yield self._row(batch, index, id, f"{self.path}#{row + index}",
                                        labels[index])
                row += batch.num_rows
        except (pa.ArrowException, OSError, ValueError) as err:
            # The ids of rows not read cannot come from the id column: their places stand in.
            reason = f"cannot read {self.path} from row {row}: {one_line(err)}"
            for rest in range(row, end):
                id = f"{self.relative}#{rest}"
                if id not in skip:
                    yield Read(id, f"{self.path}#{rest}", None, reason=reason)

    def _ids(self, batch, first: int) -> list[str]:
        given = batch.column(ID).to_pylist() if self.has_id else [None] * batch.num_rows
        # A null id falls back to the row's place, as in files without an id column.
        return [f"{self.relative}#{first + index}" if id is None else id
                for index, id in enumerate(given)]

    def _labels(self, batch) -> list[str | None]:
        if not self.has_label:
            return [None] * batch.num_rows
        return [None if label is None else str(label)
                for label in batch.column(LABEL).to_pylist()]

    def _row(self, batch, index: int, id: str, source: str, label: str | None) -> Read:
        values = {}
        for name, kind in self.kinds.items():
            cell = batch.column(name).slice(index, 1)
            try:
                values[name] = self._value(name, kind, cell, source)
            except (InputError, *IMAGE_ERRORS) as err:
                return Read(id, source, label, reason=one_line(err))
        return Read(id, source, label, values=values)

    def _value(self, name: str, kind: str, cell, source: str) -> np.ndarray:
        if cell.null_count:
            raise InputError(f"input '{name}' is null")
        if kind == TENSOR:
            return _tensor(name, cell)
        if kind == NUMBER:
            return cell.to_numpy(zero_copy_only=False).reshape(self.scalar_shapes[name])
        value = cell[0].as_py()
        if kind == IMAGE_BYTES:
            return load_image(_NamedBytes(value, source), self.prep)
        return load_image(self.path.parent / value, self.prep)


def _tensor(name: str, cell) -> np.ndarray:
    """One row of a (nested) list column as an array: each level's lists must share one
    length (else the row is ragged), and no value may be null."""
    pa, _ = pyarrow_modules()
    import pyarrow.compute as pc

    shape = []
    while pa.types.is_list(cell.type) or pa.types.is_large_list(cell.type) or \
            pa.types.is_fixed_size_list(cell.type):
        if cell.null_count:
            raise InputError(f"input '{name}' holds null lists")
        bounds = pc.min_max(pc.list_value_length(cell)).as_py()
        if bounds["min"] != bounds["max"]:
            raise InputError(f"input '{name}' is ragged: its lists at depth {len(shape) + 1} "
                             f"have lengths from {bounds['min']} to {bounds['max']}")
        shape.append(bounds["min"] or 0)
        cell = cell.flatten()  # takes the slice's offset into account, unlike .values
    if cell.null_count:
        raise InputError(f"input '{name}' holds {cell.null_count} null values")
    return cell.to_numpy(zero_copy_only=False).reshape(shape)


def parquet_parts(model: Model, root: Path, files: list[Path],
                  preprocessing: Mapping[str, ImagePreprocessing]) -> list[Part]:
    """One part per Parquet file, its columns checked against the model's inputs now (from
    the schema, reading no data): refused in one line (InputError) for a missing input
    column, an extra column, or a column type that cannot feed its input."""
    images = image_inputs(model)
    image = next(iter(images)) if len(images) == 1 else None
    unknown = sorted(set(preprocessing) - ({image} if image else set()))
    if unknown:
        raise InputError(f"preprocessing given for '{unknown[0]}', which is not the model's "
                         f"single image input")
    return [_file_part(model, root, file, image, preprocessing) for file in files]


def _file_part(model: Model, root: Path, file: Path, image: str | None,
               preprocessing: Mapping[str, ImagePreprocessing]) -> _ParquetFile:
    pa, pq = pyarrow_modules()
    try:
        with pq.ParquetFile(file) as parquet:
            schema, metadata = parquet.schema_arrow, parquet.metadata
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {file} as Parquet: {one_line(err)}") from None
    names = [spec.name for spec in model.inputs]
    extra = [column for column in schema.names if column not in names + [ID, LABEL]]
    if extra:
        raise InputError(f"{file} has the column '{extra[0]}', which is neither a model input "
                         f"({', '.join(names)}) nor '{ID}' or '{LABEL}'")
    missing = [name for name in names if name not in schema.names]
    if missing:
        raise InputError(f"{file} lacks a column for the model input '{missing[0]}' (its "
                         f"columns: {', '.join(schema.names) or 'none'})")
    kinds = {spec.name: _kind(pa, file, spec, schema.field(spec.name).type, spec.name == image)
             for spec in model.inputs}
    given = preprocessing.get(image) if image else None
    if given and kinds[image] not in (IMAGE_BYTES, IMAGE_PATH):
        raise InputError(f"image preprocessing applies to image bytes or paths, but {file}'s "
                         f"column '{image}' holds {kinds[image]}s")
    decoded = image is not None and kinds[image] in (IMAGE_BYTES, IMAGE_PATH)
    prep = (given or default_preprocessing(model.input(image))) if decoded else None
    has_id, has_label = _check_id_label(pa, file, schema, names)
    groups = tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
    row_bytes = sum(metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups))
    read_rows = min(max(READ_BYTES * max(sum(groups), 1) // max(row_bytes, 1), READ_ROWS[0]),
                    READ_ROWS[1])
    scalar_shapes = {spec.name: _scalar_shape(spec) for spec in model.inputs
                     if kinds[spec.name] == NUMBER}
    return _ParquetFile(file, relative_path(root, file), kinds, scalar_shapes, prep, has_id,
                        has_label, groups, sum(groups), int(read_rows))


def _kind(pa, file: Path, spec: TensorSpec, type_, is_image: bool) -> str:
    """How the column of `spec` is read, from its Arrow type."""
    leaf = type_
    while pa.types.is_list(leaf) or pa.types.is_large_list(leaf) or \
            pa.types.is_fixed_size_list(leaf):
        leaf = leaf.value_type
    numeric = pa.types.is_integer(leaf) or pa.types.is_floating(leaf) or \
        pa.types.is_boolean(leaf)
    if numeric and leaf is not type_:
        return TENSOR
    if numeric:
        if spec.dims is not None and (len(spec.dims) > 2 or
                                      (len(spec.dims) == 2 and spec.dims[1] not in (1, None))):
            raise InputError(f"{file}'s column '{spec.name}' holds single numbers, but the "
                             f"input is {spec.describe()}: store each row as a list")
        return NUMBER
    if is_image and (pa.types.is_binary(type_) or pa.types.is_large_binary(type_)):
        return IMAGE_BYTES
    if is_image and (pa.types.is_string(type_) or pa.types.is_large_string(type_)):
        return IMAGE_PATH
    takes = "numbers, lists of numbers, image bytes or image paths" if is_image else \
        "numbers or lists of numbers"
    raise InputError(f"{file}'s column '{spec.name}' holds {type_}, but the input "
                     f"{spec.describe()} takes {takes}")


def _scalar_shape(spec: TensorSpec) -> tuple[int, ...]:
    """A single number's row shape: () for inputs [N], (1,) for inputs [N, 1]."""
    return (1,) if spec.dims is not None and len(spec.dims) == 2 else ()


def _check_id_label(pa, file: Path, schema, names: list[str]) -> tuple[bool, bool]:
    """Whether `id` (strings) and `label` (strings or integers) columns are present; a column
    named like a model input is that input, not an id or label."""
    has_id = ID in schema.names and ID not in names
    has_label = LABEL in schema.names and LABEL not in names
    if has_id:
        type_ = schema.field(ID).type
        if not (pa.types.is_string(type_) or pa.types.is_large_string(type_)):
            raise InputError(f"{file}'s column '{ID}' holds {type_}; row ids are strings")
    if has_label:
        type_ = schema.field(LABEL).type
        if not (pa.types.is_string(type_) or pa.types.is_large_string(type_) or
                pa.types.is_integer(type_)):
            raise InputError(f"{file}'s column '{LABEL}' holds {type_}; labels are strings "
                             "or integers")
    return has_id, has_label
