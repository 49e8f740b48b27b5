"""Weights stored once: programs built over a model share its large initializers.

A light copy of a model holds stubs (type and dims) for its large initializers; the
`Weights` of the model it came from give their values: to GraphBuilder.static_value, and to
runtime.session, which hands them to ONNX Runtime as arrays.

A model loaded from a file holds no bytes of the large initializers that file holds
either (`read_light` parses it without them, and what normalising rewrites holds bytes):
each is a file stub naming the file, the offset and length of its bytes
and the file's inode, size and mtime when it was read (`tensor_value` reads it back,
refusing once the file has changed; sessions have ONNX Runtime read it as external data
of that file). Large initializers a model file keeps as external data (in a data file beside
it) are file stubs of that data file likewise (`external_weights`).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from ..errors import ModelError

# Programs built over a model with this many weight bytes or more share its initializers of
# SHARED_BYTES or more instead of copying them (see light_copy).
SHARE_FROM = 16 << 20
SHARED_BYTES = 1 << 20
_SHARED = "onnxplain:shared"  # the location a shared initializer's stub names
_FILE = "onnxplain:file"  # the location a file stub names (its file is in "basepath")
SHARED_TYPES = frozenset(helper.np_dtype_to_tensor_dtype(np.dtype(t)) for t in (
    "float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64"))
_ITEM_BYTES = {"float_data": 4, "int32_data": 4, "int64_data": 8, "double_data": 8,
               "uint64_data": 8}


@dataclass(eq=False)
class Weights:
    """The initializers that light copies of `proto` stand for (file stubs among them read
    their bytes from the model's file)."""

    proto: onnx.ModelProto

    @property
    def spans(self) -> dict[str, tuple[int, int]]:
        """Where the bytes of its file stubs lie in their file: name -> (offset, length)."""
        return {init.name: (span.offset, span.length) for init in self.proto.graph.initializer
                if (span := file_span(init)) is not None}


def read_light(path: str) -> onnx.ModelProto | None:
    """The model in the protobuf file at `path` with its large initializers as file stubs,
    parsed without their bytes: only the rest of the file is read (a memory map of it,
    whose weight pages are never touched), so loading costs neither a full read nor a copy
    of the weights. None where the file is small, holds no such initializer, is not a
    plain protobuf file, or changed while read: onnx then reads it whole."""
    with open(path, "rb") as file:
        opened = os.fstat(file.fileno())
        if opened.st_size < SHARE_FROM:
            return None
        stamp = opened.st_ino, opened.st_size, opened.st_mtime_ns
        try:
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                data, stubs = _light_bytes(mm, os.path.abspath(path), stamp)
        except (ValueError, IndexError, DecodeError):  # not a well-formed protobuf file
            return None
    if not stubs or _stamp(path) != stamp:
        return None
    try:
        return onnx.ModelProto.FromString(data)
    except DecodeError:
        return None


def _light_bytes(buf, where: str, stamp: tuple[int, int, int]) -> tuple[bytes, int]:
    """The ModelProto serialised in `buf` (the file at `where`), its main graph's large
    initializers (GraphProto.initializer = 5 of ModelProto.graph = 7) replaced by file
    stubs in place (order kept); and how many were. The graph's fields go last, as one:
    protobuf merges repeated occurrences of a message field, as it would have."""
    kept, graph, has_graph, stubs = [], [], False, 0
    for number, wire, key, start, end in _wire_fields(buf, 0, len(buf)):
        if number != 7 or wire != 2:
            kept.append(buf[key:end])
            continue
        has_graph = True
        for inner, kind, first, begin, stop in _wire_fields(buf, start, end):
            stub = _stub_bytes(buf, begin, stop, where, stamp) if (inner, kind) == (5, 2) \
                else None
            graph.append(buf[first:stop] if stub is None else _length_delimited(5, stub))
            stubs += stub is not None
    if has_graph:
        kept.append(_length_delimited(7, b"".join(graph)))
    return b"".join(kept), stubs


def _stub_bytes(buf, start: int, end: int, where: str, stamp: tuple[int, int, int]
                ) -> bytes | None:
    """The file stub (serialised) of the TensorProto in buf[start:end] where it is a large
    initializer of a shared type whose raw_data (TensorProto.raw_data = 9, the last one
    counts) holds exactly its bytes; None to keep it as it is (validation judges it)."""
    raw, rest = None, []
    for number, wire, key, begin, stop in _wire_fields(buf, start, end):
        if (number, wire) == (9, 2):
            raw = begin, stop - begin
        else:
            rest.append(buf[key:stop])
    if raw is None or raw[1] < SHARED_BYTES:
        return None
    tensor = TensorProto.FromString(b"".join(rest))
    if tensor.data_type not in SHARED_TYPES or tensor.data_location == TensorProto.EXTERNAL \
            or tensor.external_data or tensor_bytes(tensor) != raw[1] \
            or any(len(getattr(tensor, name)) for name in (*_ITEM_BYTES, "string_data")):
        return None
    return _file_stub(tensor, FileSpan(where, *raw, stamp)).SerializeToString()


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encoded_varint(number << 3 | 2) + _encoded_varint(len(payload)) + payload


def _encoded_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def external_weights(model: onnx.ModelProto, folder: str) -> None:
    """Bring in the external data of `model`, read from a file in `folder` without it: the
    large initializers of its main graph whose data file holds them whole become file stubs
    of that file (their bytes stay there), every other tensor's bytes are read in. Data
    outside `folder` or missing is refused by onnx, as onnx.load refuses it. (File stubs
    of the model's own file, read_light's, stay as they are.)"""
    graph = model.graph
    stubs = {index for index, init in enumerate(graph.initializer) if file_span(init)}
    external = [(index, init) for index, init in enumerate(graph.initializer)
                if external_data_helper.uses_external_data(init) and index not in stubs]
    spans: dict[int, FileSpan] = {}
    if external and payload_bytes(model) + sum(tensor_bytes(init) for _, init in external) \
            >= SHARE_FROM:
        files: dict[str, DataFile | None] = {}  # location -> its file, opened once
        spans = {index: span for index, init in external
                 if (span := _data_span(init, folder, files)) is not None}
    for index, span in spans.items():
        graph.initializer[index].CopyFrom(_file_stub(graph.initializer[index], span))
    held = [*stubs, *spans]
    for index in held:  # marked as held until the rest is read in: onnx would read stubs too
        graph.initializer[index].data_location = TensorProto.DEFAULT
    external_data_helper.load_external_data_for_model(model, folder)
    for index in held:
        graph.initializer[index].data_location = TensorProto.EXTERNAL


def _data_span(init: onnx.TensorProto, folder: str, files: dict[str, DataFile | None]
               ) -> FileSpan | None:
    """Where external initializer `init`'s bytes lie, for a large one of a shared type held
    whole (a shorter span is read in, and refused by validation as any short tensor).
    `files`: the data files opened so far, by location."""
    if init.data_type not in SHARED_TYPES or tensor_bytes(init) < SHARED_BYTES:
        return None
    info = external_data_helper.ExternalDataInfo(init)
    if info.location not in files:
        files[info.location] = _data_file(folder, info.location, init.name)
    found = files[info.location]
    if found is None:
        return None
    path, stamp = found
    offset = info.offset or 0
    length = info.length if info.length is not None else stamp[1] - offset
    if length != tensor_bytes(init) or offset + length > stamp[1]:
        return None
    return FileSpan(path, offset, length, stamp)


# A data file as opened: its real path and its inode, size and mtime then.
DataFile = tuple[str, tuple[int, int, int]]


def _data_file(folder: str, location: str, tensor: str) -> DataFile | None:
    """The data file at `location`, opened with onnx's own check as onnx.load makes it: a
    location outside `folder`, a link or a missing file is refused (naming `tensor`, the
    first that reads it). None where onnx lacks the check or the file moved meanwhile: the
    bytes are read in."""
    opener = getattr(external_data_helper, "_open_external_data_fd", None)
    if opener is None:
        return None
    with os.fdopen(opener(folder, location, tensor, True), "rb") as file:
        opened = os.fstat(file.fileno())
    stamp = opened.st_ino, opened.st_size, opened.st_mtime_ns
    path = os.path.realpath(os.path.join(folder, location))
    return (path, stamp) if _stamp(path) == stamp else None


@dataclass(frozen=True)
class FileSpan:
    """Where a file stub's bytes lie: `length` bytes at `offset` of the file at `path`, as
    it was when its inode, size and mtime were `stamp`."""

    path: str
    offset: int
    length: int
    stamp: tuple[int, int, int]

    def unchanged(self) -> bool:
        return _stamp(self.path) == self.stamp


def _file_stub(init: onnx.TensorProto, span: FileSpan) -> onnx.TensorProto:
    stub = TensorProto(name=init.name, data_type=init.data_type, dims=init.dims,
                       data_location=TensorProto.EXTERNAL)
    for key, value in (("location", _FILE), ("basepath", span.path),
                       ("offset", str(span.offset)), ("length", str(span.length)),
                       ("checksum", ":".join(map(str, span.stamp)))):
        stub.external_data.add(key=key, value=value)
    return stub


def file_span(init: onnx.TensorProto) -> FileSpan | None:
    """Where the bytes of file stub `init` lie; None for any other tensor."""
    if init.data_location != TensorProto.EXTERNAL or not init.external_data or \
            init.external_data[0].value != _FILE:
        return None
    entries = {entry.key: entry.value for entry in init.external_data}
    ino, size, mtime = (int(part) for part in entries["checksum"].split(":"))
    return FileSpan(entries["basepath"], int(entries["offset"]), int(entries["length"]),
                    (ino, size, mtime))


def tensor_value(init: onnx.TensorProto) -> np.ndarray:
    """The value of initializer `init`; a file stub's is read from its file (one bounded
    read), refused with ModelError once that file has changed."""
    span = file_span(init)
    if span is None:
        return numpy_helper.to_array(init)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
    data = None
    if span.unchanged():
        with open(span.path, "rb") as file:
            file.seek(span.offset)
            data = np.fromfile(file, dtype.newbyteorder("<"), span.length // dtype.itemsize)
    if data is None or data.nbytes != span.length or not span.unchanged():
        raise ModelError(f"the model's file {span.path} changed after it was loaded (its "
                         f"initializer '{init.name}' is read from there): load the model again")
    return data.astype(dtype, copy=False).reshape(tuple(init.dims))


def with_values(init: onnx.TensorProto) -> onnx.TensorProto:
    """`init`, or for a file stub a tensor holding the bytes it stands for."""
    if file_span(init) is None:
        return init
    return numpy_helper.from_array(tensor_value(init), init.name)


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _wire_fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of its key, start of its value, its end) of each
    field of the message in buf[pos:end], by protobuf's wire format; ValueError where
    that is not well formed (groups, which ONNX never writes, included)."""
    while pos < end:
        key, start = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            stop = _varint(buf, start)[1]
        elif wire in (1, 5):
            stop = start + (8 if wire == 1 else 4)
        elif wire == 2:
            size, start = _varint(buf, start)
            stop = start + size
        else:
            raise ValueError(f"wire type {wire}")
        if stop > end or key >> 3 == 0:
            raise ValueError("truncated or malformed field")
        yield key >> 3, wire, pos, start, stop
        pos = stop


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 70:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ValueError("varint over 10 bytes")


def light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` for a program to be built on. From SHARE_FROM weight bytes on, its
    large initializers are stubs (type and dims, external data at a placeholder location)
    standing for the initializers of the same name in the model they came from (its
    Model.weights): a gradient program, a tapped forward or a model specialised to its input
    shapes then holds no second copy of the weights."""
    if payload_bytes(model) < SHARE_FROM:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    light = copy_without(model, "graph")
    copy_into(model.graph, light.graph, skip="initializer")
    light.graph.initializer.extend(_stub(init) if shareable(init) else init
                                   for init in model.graph.initializer)
    return light


def standalone(model: onnx.ModelProto, weights: Weights | None = None) -> onnx.ModelProto:
    """A copy of light copy `model` holding the bytes its stubs and file stubs (in
    subgraphs too: export's Loop bodies) stand for, to check or save; `model` itself where
    it has neither."""
    shared = {} if weights is None else {
        init.name: init for init in weights.proto.graph.initializer}
    if not any(is_stub(init) or file_span(init)
               for graph in nested_graphs(model.graph) for init in graph.initializer):
        return model
    full = copy_without(model, "graph")
    copy_into(model.graph, full.graph, skip="initializer")
    full.graph.initializer.extend(shared[init.name] if is_stub(init) else init
                                  for init in model.graph.initializer)
    for graph in nested_graphs(full.graph):
        for index, init in enumerate(graph.initializer):
            if file_span(init) is not None:
                graph.initializer[index].CopyFrom(with_values(init))
    return full


def nested_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every graph nested in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for inner in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from nested_graphs(inner)


def is_stub(init: onnx.TensorProto) -> bool:
    """Whether `init` stands for a shared initializer of the model it was copied from."""
    return (init.data_location == TensorProto.EXTERNAL and len(init.external_data) == 1
            and init.external_data[0].value == _SHARED)


def shareable(init: onnx.TensorProto) -> bool:
    """A large initializer whose bytes this process holds (raw_data)."""
    return (init.data_type in SHARED_TYPES and init.data_location != TensorProto.EXTERNAL
            and init.HasField("raw_data") and tensor_bytes(init) >= SHARED_BYTES)


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of `tensor`'s value from its type and dims (reading raw_data would copy
    it: protobuf hands out a new bytes object on each read)."""
    if tensor.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return 0
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def _stub(init: onnx.TensorProto) -> onnx.TensorProto:
    stub = TensorProto(name=init.name, data_type=init.data_type, dims=init.dims,
                       data_location=TensorProto.EXTERNAL)
    stub.external_data.add(key="location", value=_SHARED)
    return stub


def copy_without(message, skip: str):
    """A copy of a protobuf message without its field `skip`."""
    copy = type(message)()
    copy_into(message, copy, skip)
    return copy


def copy_into(source, target, skip: str) -> None:
    """Every field of `source` but `skip` into `target` (a copy that leaves the big one out)."""
    for entry, value in source.ListFields():
        if entry.name == skip:
            continue
        if entry.is_repeated:
            getattr(target, entry.name).extend(value)
        elif entry.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(target, entry.name).CopyFrom(value)
        else:
            setattr(target, entry.name, value)


def payload_bytes(model: onnx.ModelProto) -> int:
    """About the serialised size of `model`: its initializers' and Constant nodes' bytes,
    which dominate any large model, shared ones (stubs) included. ByteSize() costs as much
    as serialising the whole model (0.13 s on ResNet-18), this a tenth of it."""
    tensors = list(model.graph.initializer)
    tensors += [a.t for node in model.graph.node if node.op_type == "Constant"
                for a in node.attribute if a.HasField("t")]
    total = 0
    for tensor in tensors:
        if is_stub(tensor) or tensor.HasField("raw_data") or file_span(tensor):
            total += tensor_bytes(tensor)
        for name, size in _ITEM_BYTES.items():
            total += size * len(getattr(tensor, name))
    return total + 200 * len(model.graph.node)
