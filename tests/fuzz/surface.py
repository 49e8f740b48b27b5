"""Mutations of what surrounds a model: the input files, the method options and the output
location. Each returns a Surface: files to write in the user's folder, the -i argument, the
arrays the API gets (None: the API has nothing to test), extra CLI arguments, the API's
keyword arguments, and how the output location is prepared."""

from __future__ import annotations

import functools
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxplain.methods import METHODS


@dataclass
class Surface:
    files: dict[str, bytes] = field(default_factory=dict)
    spec: str = "inputs.npz"  # the -i argument, relative to the user's folder
    arrays: dict[str, np.ndarray] | None = None
    cli: list[str] = field(default_factory=list)
    api: dict = field(default_factory=dict)
    out: str = ""  # output kind (see runner._prepare_out); "" is a fresh folder
    model: onnx.ModelProto | None = None  # a changed model (a long input name)


SurfaceMutation = Callable[[onnx.ModelProto, dict, np.random.Generator], Surface]


def _pick(rng: np.random.Generator, items):
    items = list(items)
    return items[int(rng.integers(len(items)))]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz(arrays: dict, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _arrays(inputs: dict, rng: np.random.Generator, change) -> Surface:
    changed = {name: change(np.array(value), rng) for name, value in inputs.items()}
    return Surface({"inputs.npz": _npz(changed)}, arrays=changed)


# Input files -------------------------------------------------------------------------------

def _reshape(value: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shape = list(value.shape)
    kind = int(rng.integers(4))
    if kind == 0 and shape:
        shape.pop(int(rng.integers(len(shape))))
    elif kind == 1:
        shape.insert(int(rng.integers(len(shape) + 1)), 2)
    elif kind == 2 and shape:
        shape[int(rng.integers(len(shape)))] += int(rng.integers(1, 5))
    else:
        return np.resize(value, (int(rng.integers(1, 40)),))
    return np.resize(value, shape)


def in_shape(model, inputs, rng):
    return _arrays(inputs, rng, _reshape)


DTYPES = (np.float16, np.float64, np.int32, np.int8, np.uint64, np.bool_, np.complex64, "<U3",
          "datetime64[s]", "V4")


def in_dtype(model, inputs, rng):
    dtype = _pick(rng, DTYPES)
    return _arrays(inputs, rng, lambda v, r: np.zeros(v.shape, dtype) if dtype == "V4"
                   else v.astype(dtype))


def in_nonfinite(model, inputs, rng):
    def spoil(value, r):
        value = value.astype(np.float32) if value.dtype.kind != "f" else value.copy()
        flat = value.reshape(-1)
        if flat.size:
            flat[r.integers(flat.size, size=max(flat.size // 3, 1))] = _pick(
                r, (math.nan, math.inf, -math.inf))
        return value
    return _arrays(inputs, rng, spoil)


def in_empty(model, inputs, rng):
    kind = _pick(rng, ("batch0", "scalar", "all0"))
    change = {"batch0": lambda v, r: v[:0],
              "scalar": lambda v, r: np.float32(1.5).reshape(()),
              "all0": lambda v, r: np.zeros([0] * max(v.ndim, 1), v.dtype)}[kind]
    return _arrays(inputs, rng, change)


def in_object(model, inputs, rng):
    """Object arrays, as .npy and as .npz members: never unpickled, one line."""
    values = np.array([{"a": 1}, None, "x"], dtype=object)
    name = next(iter(inputs), "x")
    if rng.random() < 0.5:
        return Surface({"inputs.npy": _npy(values)}, spec="inputs.npy")
    return Surface({"inputs.npz": _npz({name: values})})


class _Boom:
    """What a loaded pickle would run: the run dies, a "crash" to the runner."""

    def __reduce__(self):
        return (os._exit, (99,))


def in_pickle(model, inputs, rng):
    return _as_npy_or_npz(pickle.dumps({"x": _Boom()}), inputs, rng)


def _as_npy_or_npz(data: bytes, inputs, rng) -> Surface:
    """`data` as an .npy file, or as the first input's member of an .npz archive."""
    if rng.random() < 0.5:
        return Surface({"inputs.npy": data}, spec="inputs.npy")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{next(iter(inputs), 'x')}.npy", data)
    return Surface({"inputs.npz": archive.getvalue()})


def _header(shape: tuple, descr: str = "<f4", version: tuple = (1, 0)) -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    magic = b"\x93NUMPY" + bytes(version)
    pad = 64 - (len(magic) + 2 + len(text) + 1) % 64
    return magic + len(text + b" " * pad + b"\n").to_bytes(2, "little") + text + b" " * pad + b"\n"


LIES = (((10**13,), "<f4"), ((2**31, 2**31), "<f8"), ((-4, 3), "<f4"), ((3,), "|O"),
        ((2, 3), ">f4x"), ((2**62, 2**62), "<f4"), (("a",), "<f4"), ((), "<f4"))


def in_lying_header(model, inputs, rng):
    shape, descr = LIES[int(rng.integers(len(LIES)))]
    version = _pick(rng, ((1, 0), (1, 0), (2, 0), (3, 0), (9, 9)))
    try:
        header = _header(shape, descr, version) if version != (2, 0) else _header(shape, descr)
    except (TypeError, ValueError):
        header = _header((10**13,))
    return _as_npy_or_npz(header + b"\x00" * int(rng.integers(0, 64)), inputs, rng)


@functools.lru_cache(maxsize=1)
def _zip_bomb() -> bytes:
    """An honest header over 2**30 float32 zeros (4 GiB), deflated to a few MB."""
    header = _header((2**30,), "<f4")
    block = b"\x00" * (1 << 24)
    # After a full flush the compressor starts afresh: one block's bytes stand for all 256.
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = packer.compress(header) + packer.flush(zlib.Z_FULL_FLUSH)
    body = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    raw = head + body * 256 + packer.flush()
    crc = zlib.crc32(header)
    for _ in range(256):
        crc = zlib.crc32(block, crc)
    return _patched_zip(raw, len(header) + 256 * len(block), crc)


def _patched_zip(raw: bytes, size: int, crc: int) -> bytes:
    """A one-member ZIP64 archive around already-deflated bytes."""
    name = b"x.npy"
    extra = struct.pack("<HHQQ", 1, 16, size, len(raw))
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0, crc, 0xFFFFFFFF,
                        0xFFFFFFFF, len(name), len(extra)) + name + extra
    cextra = struct.pack("<HHQQQ", 1, 24, size, len(raw), 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0, crc,
                          0xFFFFFFFF, 0xFFFFFFFF, len(name), len(cextra), 0, 0, 0, 0,
                          0xFFFFFFFF) + name + cextra
    start = len(local) + len(raw)
    z64end = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, len(central),
                         start)
    locator = struct.pack("<IIQI", 0x07064B50, 0, start + len(central), 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), start, 0)
    return local + raw + central + z64end + locator + end


def in_corrupt_npz(model, inputs, rng):
    data = bytearray(_npz(inputs, compress=rng.random() < 0.5))
    kind = _pick(rng, ("flip", "truncate", "not_npy", "bomb", "flip"))
    if kind == "bomb":
        return Surface({"inputs.npz": _zip_bomb()})
    if kind == "not_npy":
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{next(iter(inputs), 'x')}.npy", b"not an array at all")
        return Surface({"inputs.npz": archive.getvalue()})
    if kind == "truncate":
        return Surface({"inputs.npz": bytes(data[:int(rng.integers(len(data)))])})
    for _ in range(int(rng.integers(1, 6))):
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    return Surface({"inputs.npz": bytes(data)})


def _png(height: int, width: int, channels: int) -> bytes:
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    pixels = np.full((height, width, channels), 128, np.uint8)
    pixels = pixels[..., 0] if channels == 1 else pixels
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, "PNG")
    return buffer.getvalue()


def in_image(model, inputs, rng):
    name = _pick(rng, ("cat.png", "cat.jpg", "cat.bmp", "cat.webp"))
    kind = _pick(rng, ("flip", "truncate", "empty", "text", "odd_size", "grey"))
    data = bytearray(_png(8, 8, 3))
    if kind == "flip":
        for _ in range(int(rng.integers(1, 8))):
            data[int(rng.integers(8, len(data)))] ^= 1 << int(rng.integers(8))
    elif kind == "truncate":
        data = data[:int(rng.integers(len(data)))]
    elif kind == "empty":
        data = bytearray()
    elif kind == "text":
        data = bytearray(b"GIF89a but not really")
    elif kind == "odd_size":
        data = bytearray(_png(int(rng.integers(1, 3)), 5000, 4))
    else:
        data = bytearray(_png(3, 40, 1))
    return Surface({name: bytes(data)}, spec=name)


def in_names(model, inputs, rng):
    """Members under names the model does not have, or inputs missing."""
    values = list(inputs.values()) or [np.zeros((1, 3), np.float32)]
    arrays = _pick(rng, ({"no_such_input": values[0]}, {}, {**inputs, "extra": values[0]}))
    return Surface({"inputs.npz": _npz(arrays)}, arrays=arrays)


# Options -----------------------------------------------------------------------------------

CLI_VALUES = ("nan", "inf", "-inf", "-1", "0", "1e308", "1000000000000", "abc", "true",
              "[1, 2]", "", "@missing.npy", "0.5", "-0.0", "1e-320")
API_VALUES = (math.nan, math.inf, -math.inf, -1, 0, 1e308, 10**12, "abc", True, [1, 2], None,
              (), 0.5, -0.0, np.float32("nan"), np.zeros((2, 2)))


def option(model, inputs, rng):
    """One option of one method (or an unknown name) set to a hostile value: a generic one,
    or one at the edges of what its declaration accepts (onnxplain.methods.options)."""
    method = _pick(rng, sorted(METHODS))
    declared = {o.name: o for o in METHODS[method].options}
    name = _pick(rng, [*declared, "no_such_option"])
    edges = _edges(declared[name]) if name in declared else ()
    text = _pick(rng, (*CLI_VALUES, *map(str, edges)))
    value = _pick(rng, (*API_VALUES, *edges))
    return Surface(cli=["-m", method, "-O", f"{name}={text}"],
                   api={"method": method, name: value})


def _edges(option) -> tuple:
    """The declared bounds and just past them, and a choice misspelt."""
    found: list = [f"{choice}x" for choice in option.choices[:1]]
    for bound, step in ((option.low, -1), (option.high, 1)):
        if bound is not None:
            past = bound + step if "int" in option.kinds else bound + step * 1e-9
            found += [bound, past]
    return tuple(found)


# Output locations --------------------------------------------------------------------------

OUT_KINDS = ("readonly", "unwritable", "file", "under_file", "long_out", "existing_dir",
             "earlier_run", "disk_full")


def out_location(model, inputs, rng):
    return Surface(out=_pick(rng, OUT_KINDS))


def out_long_input(model, inputs, rng):
    """An input named by 3,000 characters: a heatmap named after it would not fit."""
    if not model.graph.input or not inputs:
        return Surface()
    old = model.graph.input[0].name
    new = "n" * int(_pick(rng, (300, 3000)))
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
    model.graph.input[0].name = new
    arrays = {new if key == old else key: value for key, value in inputs.items()}
    return Surface({"inputs.npz": _npz(arrays)}, arrays=arrays, model=model)


SURFACES: dict[str, SurfaceMutation] = {
    "in:shape": in_shape, "in:dtype": in_dtype, "in:nonfinite": in_nonfinite,
    "in:empty": in_empty, "in:object": in_object, "in:pickle": in_pickle,
    "in:lying_header": in_lying_header, "in:corrupt_npz": in_corrupt_npz, "in:image": in_image,
    "in:names": in_names, "opt:option": option, "out:location": out_location,
    "out:long_input": out_long_input,
}


def surface(model: onnx.ModelProto, inputs: dict, name: str, seed: int) -> Surface:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return SURFACES[name](copy, inputs, np.random.default_rng(seed))
