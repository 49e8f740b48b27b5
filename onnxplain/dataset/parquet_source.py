"""Parquet files as a dataset source (issue 20): one column per model input, read lazily in
record batches of only the needed columns, so a file is never loaded whole. A column holds
fixed-shape tensors (list, fixed_size_list or nested lists: one row of the input without its
batch axis), single numbers (inputs of shape [N] or [N, 1]), for the model's single image
input, image bytes or image paths (relative ones resolved against the file's folder), or, for
a token-id input, text (strings; the column may also be called `text` when the model has a
single token-id input) turned into token ids by a vocabulary as `generate --text` does (each
whitespace-separated word one token), its attention mask (1) and token type ids (0) filled
when they have no column. Every text row takes one length (a run's results hold one shape per
input): the input's static length, else the longest text's (or the `text_length` given: a
resumed run keeps its first length). Only a model with an attention mask has shorter texts
padded (with the vocabulary's pad id, mask 0); a text longer than the length, or of another
length without a mask, is a row error. Optional columns `id` (strings) and `label` (strings
or integers) give each row's id and label; any other column is refused, so a misspelt input
name is never silently dropped."""

from __future__ import annotations

import io
import os
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._text import counted
from ..errors import InputError
from ..graph.model import Model, TensorSpec
from ..images import ImagePreprocessing, default_preprocessing, image_inputs, load_image
from ..objective import mask_inputs, token_inputs
from ..vocab import Vocabulary, as_vocabulary
from .parts import IMAGE_ERRORS, Part, Read, in_window, one_line, relative_path
from .results import pyarrow_modules

ID, LABEL, TEXT_COLUMN = "id", "label", "text"
# Rows per record batch read: aimed at READ_BYTES of uncompressed data, within these bounds.
READ_BYTES = 32 << 20
READ_ROWS = (1, 1024)
TENSOR, NUMBER, IMAGE_BYTES, IMAGE_PATH, TEXT = ("tensor", "number", "image bytes",
                                                  "image path", "text")
VOCAB_ADVICE = ("give the vocabulary that turns it into token ids: --vocab vocab.txt, "
                "vocab.json or tokenizer.json (vocab= in Python)")


class _NamedBytes(io.BytesIO):
    """Image bytes that name their row in load_image's messages (not '<_io.BytesIO ...>')."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.where = name

    def __str__(self) -> str:
        return self.where


@dataclass(frozen=True)
class _Text:
    """How a file's text becomes token ids: the input it feeds, the column it is read from,
    the vocabulary, and the companion inputs without a column of their own, each filled
    with one value at every token (fills: 1 in an attention mask, 0 in token type ids).
    Every token input (`padded`) then takes `length` tokens (None: no text had a word when
    the source opened, each row keeps its own): with a mask (`pads`) shorter texts are padded
    (the ids with the vocabulary's pad id, the others with 0); `static`: the length is the
    model's own, else the source's."""

    input: str
    column: str
    vocabulary: Vocabulary
    fills: dict[str, int]
    padded: tuple[str, ...]
    length: int | None = None
    pads: bool = True
    static: bool = False

    def values(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The row's token inputs filled and padded: the results of a run hold one shape
        per input, so every row of a source takes one length (the mask says which tokens
        are real)."""
        count = len(values[self.input])
        if self.length is not None and (count > self.length or
                                        (count < self.length and not self.pads)):
            raise InputError(self._misfit(count))
        values = values | {name: np.full(count, fill, np.int64)
                           for name, fill in self.fills.items()}
        for name in self.padded:
            if values[name].shape != (count,):
                raise InputError(f"input '{name}' has the shape {list(values[name].shape)}, "
                                 f"but the text has {counted(count, 'token')}")
            if self.length is not None and count < self.length:
                pad = self.vocabulary.pad_id() if name == self.input else 0
                values[name] = np.pad(values[name], (0, self.length - count),
                                      constant_values=pad)
        return values

    def _misfit(self, count: int) -> str:
        """Why a text of `count` words does not fit the length every row takes."""
        takes = f"{'at most' if self.pads else 'exactly'} {self.length}"
        if self.static:
            why = "" if self.pads or count > self.length else \
                " (it has no attention mask to pad shorter texts)"
            return f"the text has {counted(count, 'word')}, the model takes {takes}{why}"
        why = "its longest text when it began: explain longer texts in a new run" \
            if self.pads else "the model has no attention mask to pad texts to one length"
        return f"the text has {counted(count, 'word')}, this run takes {takes} ({why})"


@dataclass
class _ParquetFile(Part):
    """One Parquet file: `kinds` says how each input's column is read (TENSOR, NUMBER,
    IMAGE_BYTES, IMAGE_PATH, TEXT); `scalar_shapes` gives the row shape of NUMBER columns'
    inputs; `text` how its TEXT input's column becomes token ids (None without one)."""

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
    text: _Text | None = field(default=None)

    def read(self, skip: Container[str], window: range | None = None) -> Iterator[Read]:
        """The rows whose id is not in `skip` and whose place in the file (0-based, counting
        every row) lies in `window` (None: all; a range of step 1). Row groups outside the
        window are not read at all, and rows outside it are not decoded."""
        if window is not None and window.step != 1:
            raise ValueError(f"a window of rows is a range of step 1, got {window}")
        _, pq = pyarrow_modules()
        # Pages written with checksums are checked, so damage is an error, not wrong values.
        with pq.ParquetFile(self.path, page_checksum_verification=True) as parquet:
            first = 0
            for group, size in enumerate(self.groups):
                if window is None or (window.start < first + size and first < window.stop):
                    yield from self._group(parquet, group, first, first + size, skip, window)
                first += size

    def ids(self) -> Iterator[tuple[str, str]]:
        """Every row's (id, source), from the id column alone (places where it is damaged)."""
        _, pq = pyarrow_modules()
        with pq.ParquetFile(self.path, page_checksum_verification=True) as parquet:
            first = 0
            for group, size in enumerate(self.groups):
                for index, id in enumerate(self._group_ids(parquet, group, first)):
                    yield id, f"{self.path}#{first + index}"
                first += size

    def _columns(self) -> list[str]:
        inputs = [self.text.column if self.text and name == self.text.input else name
                  for name in self.kinds]
        return inputs + [ID] * self.has_id + [LABEL] * self.has_label

    def _group(self, parquet, group: int, first: int, end: int, skip: Container[str],
               window: range | None) -> Iterator[Read]:
        """The rows first..end-1 of one row group that lie in `window`; if it cannot be read
        (a damaged page), its remaining rows fail and the next group is read: damage costs
        one row group."""
        row = first
        try:
            for batch in parquet.iter_batches(batch_size=self.read_rows, row_groups=[group],
                                              columns=self._columns()):
                ids, labels = self._ids(batch, row), self._labels(batch)
                for index, id in enumerate(ids):
                    if id not in skip and in_window(row + index, window):
                        yield self._row(batch, index, id, f"{self.path}#{row + index}",
                                        labels[index])
                row += batch.num_rows
                if window is not None and row >= window.stop:
                    return  # the rest of the group lies past the window: not read
        except _read_errors() as err:
            reason = f"cannot read {self.path} from row {row}: {one_line(err)}"
            ids = self._group_ids(parquet, group, first)
            for rest in range(row, end):
                id = ids[rest - first]
                if id not in skip and in_window(rest, window):
                    yield Read(id, f"{self.path}#{rest}", None, reason=reason)

    def _group_ids(self, parquet, group: int, first: int) -> list[str]:
        """The ids of a damaged row group's rows, from its id column alone when that can be
        read (the damage may lie in another column): rows that fail keep their real ids, so
        once the file is repaired a resumed run skips them rather than writing them again
        under other ids. Their places stand in when the id column cannot be read."""
        if self.has_id:
            try:
                return self._ids(parquet.read_row_group(group, columns=[ID]), first)
            except _read_errors():
                pass
        return [f"{self.relative}#{first + index}" for index in range(self.groups[group])]

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
            column = self.text.column if kind == TEXT and self.text else name
            cell = batch.column(column).slice(index, 1)
            try:
                values[name] = self._value(name, kind, cell, source)
            except (InputError, *IMAGE_ERRORS) as err:
                return Read(id, source, label, reason=one_line(err))
        if self.text:
            try:
                values = self.text.values(values)
            except InputError as err:
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
        if kind == TEXT:
            return self.text.vocabulary.encode_words(value)
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
                  preprocessing: Mapping[str, ImagePreprocessing],
                  vocab: Vocabulary | str | os.PathLike | None = None,
                  text_length: int | None = None) -> list[Part]:
    """One part per Parquet file, its columns checked against the model's inputs now (from
    the schema, reading no data): refused in one line (InputError) for a missing input
    column, an extra column, a column type that cannot feed its input, or text without a
    vocabulary. `vocab`: a Vocabulary, or the path of a vocab.txt, vocab.json or
    tokenizer.json (onnxplain.vocab.as_vocabulary). `text_length`: the tokens every text
    row takes (a resumed run's, see text_use), else the model's static sequence length or,
    failing that, the most words of any text (a pass over the text columns alone)."""
    images = image_inputs(model)
    image = next(iter(images)) if len(images) == 1 else None
    unknown = sorted(set(preprocessing) - ({image} if image else set()))
    if unknown:
        raise InputError(f"preprocessing given for '{unknown[0]}', which is not the model's "
                         f"single image input")
    if text_length is not None and (isinstance(text_length, bool) or
                                    not isinstance(text_length, int) or text_length < 1):
        raise InputError(f"text_length must be a positive integer, got {text_length!r}")
    vocabulary = as_vocabulary(vocab)
    roles = _TextRoles.of(model)
    parts = [_file_part(model, root, file, image, preprocessing, vocabulary, roles)
             for file in files]
    _set_length(model, parts, roles, text_length)
    return parts


def check_unique_ids(parts: Sequence[Part]) -> None:
    """Results and resumed runs know rows by id: of two rows under one id the second would be
    taken for one written already. Places ('file#row') are unique unless a given id
    repeats one, so nothing is read unless a Parquet file has an id column."""
    parts = [part for part in parts if isinstance(part, _ParquetFile)]
    if not any(part.has_id for part in parts):
        return
    seen: dict[str, str] = {}
    for part in parts:
        for id, source in part.ids():
            if id in seen:
                raise InputError(f"the id '{id}' names two rows, {seen[id]} and {source}: "
                                 "ids must be unique (results and resumed runs know rows by "
                                 "id)")
            seen[id] = source


def text_use(parts: Sequence[Part]) -> tuple[bool, int | None]:
    """Whether the parts read text (so the vocabulary matters), and the tokens every text
    row takes (None without text, or when no text had a word): what a resumed run passes
    back as text_length, so that its rows take the length its first rows took."""
    texts = [part.text for part in parts if isinstance(part, _ParquetFile) and part.text]
    return bool(texts), texts[0].length if texts else None


@dataclass(frozen=True)
class _TextRoles:
    """What text feeds in a model: `ids`, the token-id inputs it may fill, and `fills`, the
    value of each companion input at every token: 1 in attention masks (objective.mask_inputs:
    every token is real, as `generate --text` feeds them), 0 in token type ids (one segment,
    what a tokenizer gives for one text)."""

    ids: tuple[str, ...]
    fills: dict[str, int]

    @classmethod
    def of(cls, model: Model) -> _TextRoles:
        tokens = token_inputs(model)
        masks = [name for name in mask_inputs(model) if name in tokens] if tokens else []
        types = [name for name in tokens if name not in masks and "token_type" in name.lower()]
        ids = tuple(name for name in tokens if name not in masks and name not in types)
        return cls(ids, {name: 1 for name in masks} | {name: 0 for name in types})

    @property
    def masks(self) -> list[str]:
        return [name for name, fill in self.fills.items() if fill == 1]


def _file_part(model: Model, root: Path, file: Path, image: str | None,
               preprocessing: Mapping[str, ImagePreprocessing], vocabulary: Vocabulary | None,
               roles: _TextRoles) -> _ParquetFile:
    pa, pq = pyarrow_modules()
    try:
        with pq.ParquetFile(file) as parquet:
            schema, metadata = parquet.schema_arrow, parquet.metadata
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {file} as Parquet: {one_line(err)}") from None
    names = [spec.name for spec in model.inputs]
    others = [ID, LABEL] + [TEXT_COLUMN] * (bool(roles.ids) and TEXT_COLUMN not in names)
    extra = [column for column in schema.names if column not in names + others]
    if extra:
        raise InputError(f"{file} has the column '{extra[0]}', which is neither a model input "
                         f"({', '.join(names)}) nor {' or '.join(repr(o) for o in others)}")
    text = _text(pa, file, schema, names, roles, vocabulary)
    fed = [text.input, *text.fills] if text else []
    missing = [name for name in names if name not in schema.names and name not in fed]
    if missing:
        raise InputError(f"{file} lacks a column for the model input '{missing[0]}' (its "
                         f"columns: {', '.join(schema.names) or 'none'})")
    kinds = {spec.name: TEXT if text and spec.name == text.input else
             _kind(pa, file, spec, schema.field(spec.name).type, spec.name == image)
             for spec in model.inputs if not text or spec.name not in text.fills}
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
                     if kinds.get(spec.name) == NUMBER}
    return _ParquetFile(file, relative_path(root, file), kinds, scalar_shapes, prep, has_id,
                        has_label, groups, sum(groups), int(read_rows), text)


def _text(pa, file: Path, schema, names: list[str], roles: _TextRoles,
          vocabulary: Vocabulary | None) -> _Text | None:
    """How the file's text feeds the model: a string column named after a token-id input,
    or one called `text` for the model's single token-id input; None if it has no text.
    The companion inputs it fills are those without a column of their own."""
    def is_text(column: str) -> bool:
        type_ = schema.field(column).type
        return pa.types.is_string(type_) or pa.types.is_large_string(type_)

    named = [name for name in roles.ids if name in schema.names and is_text(name)]
    if TEXT_COLUMN in schema.names and TEXT_COLUMN not in names:
        if len(roles.ids) != 1:
            raise InputError(f"{file}'s column '{TEXT_COLUMN}' feeds the model's token-id "
                             f"input, but it has {len(roles.ids)} ({', '.join(roles.ids)}): "
                             "name the text column after the input it feeds")
        if roles.ids[0] in schema.names:
            raise InputError(f"{file} has both a '{TEXT_COLUMN}' column and one for its "
                             f"token-id input '{roles.ids[0]}': keep one")
        if not is_text(TEXT_COLUMN):
            raise InputError(f"{file}'s column '{TEXT_COLUMN}' holds "
                             f"{schema.field(TEXT_COLUMN).type}, not strings")
        named = [TEXT_COLUMN]
    if not named:
        return None
    if len(named) > 1:
        raise InputError(f"{file} holds text in '{named[0]}' and '{named[1]}': one column of "
                         "text feeds one token-id input")
    if vocabulary is None:
        raise InputError(f"{file}'s column '{named[0]}' holds text: {VOCAB_ADVICE}")
    column = named[0]
    fills = {name: fill for name, fill in roles.fills.items() if name not in schema.names}
    input = roles.ids[0] if column == TEXT_COLUMN else column
    return _Text(input, column, vocabulary, fills, (input, *roles.fills),
                 pads=bool(roles.masks))


def _set_length(model: Model, parts: list[_ParquetFile], roles: _TextRoles,
                given: int | None) -> None:
    """Sets the one length every text row takes: the token-id input's static length, else
    `given`, else the most words of any text of the source. A model without an attention
    mask cannot be padded: when the length is counted here, its texts must agree on it."""
    texts = [part for part in parts if part.text]
    if not texts:
        return
    static = model.input(texts[0].text.input).dims[1]
    if isinstance(static, int) and given is not None and given != static:
        raise InputError(f"text_length is {given}, but the model's token-id input "
                         f"'{texts[0].text.input}' takes {static} tokens")
    if isinstance(static, int) or given is not None:
        length = static if isinstance(static, int) else given
    else:
        counts = [count for part in texts if (count := _word_counts(part))]
        low = min((low for low, _ in counts), default=None)
        length = max((high for _, high in counts), default=None)
        if not roles.masks and low != length:
            raise InputError(f"the texts have from {low} to {counted(length, 'word')}, but "
                             "the model has no attention mask to pad them with: give texts "
                             "of one length")
    for part in texts:
        part.text = replace(part.text, length=length, static=isinstance(static, int))


def _word_counts(part: _ParquetFile) -> tuple[int, int] | None:
    """The fewest and most words of one file's texts (empty and null ones aside: they are
    row errors), read in bounded batches of the text column; None for a file without words.
    A row group that cannot be read is left out (its rows fail when read), as is a file."""
    _, pq = pyarrow_modules()
    low, high = None, 0
    try:
        with pq.ParquetFile(part.path, page_checksum_verification=True) as parquet:
            for group in range(len(part.groups)):
                try:
                    for batch in parquet.iter_batches(batch_size=1 << 16, row_groups=[group],
                                                      columns=[part.text.column]):
                        for text in batch.column(0).to_pylist():
                            words = len(Vocabulary.words(text)) if text else 0
                            if words:
                                low, high = min(low or words, words), max(high, words)
                except _read_errors():
                    continue
    except _read_errors():
        return None
    return None if low is None else (low, high)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or vanished Parquet file raises (pyarrow is imported late)."""
    pa, _ = pyarrow_modules()
    return pa.ArrowException, OSError, ValueError


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
