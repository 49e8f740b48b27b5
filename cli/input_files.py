"""Read `--input` files: `x.npy`, `name=x.npy`, an `.npz` holding arrays by input name, or
image files (`cat.png`, `name=cat.jpg`, a folder of them; several make a batch),
preprocessed as the preset next to the model or the input's shape says (cli/presets.py)."""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import click
import numpy as np

from onnxplain.errors import InputError
from onnxplain.graph.model import Model
from onnxplain.images import is_image_file, load_images
from onnxplain.runtime.batching import DEFAULT_BUDGET_MB

from .presets import ImageSettings, preprocessing_for

# Elements one input array may declare (2**31: 8 GiB of float32), far above any real input
# and far below what a lying header can ask for.
MAX_ELEMENTS = 2**31


@dataclass
class InputSet:
    """What the input files gave: arrays by input name, the files read, where each row came
    from (per input, per row: {"file", "row"} and "key" inside an .npz), the preprocessing
    of each image input, and lines worth telling the user (a saved preset applied)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    sources: dict[str, list[dict]] = field(default_factory=dict)
    preprocessing: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def say_notes(silent: bool) -> Callable[[str], None] | None:
    """How commands tell the user a note (on stderr, so stdout stays the command's own
    output); None when `silent` (-q, --json)."""
    return None if silent else (lambda message: click.echo(message, err=True))


def read_inputs(model: Model, specs: tuple[str, ...], images: ImageSettings | None = None,
                say: Callable[[str], None] | None = None
                ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays by input name, and the files they came from; `say` hears the notes (a saved
    preset applied)."""
    loaded = load_inputs(model, specs, images, say)
    return loaded.arrays, loaded.files


def load_inputs(model: Model, specs: tuple[str, ...], images: ImageSettings | None = None,
                say: Callable[[str], None] | None = None) -> InputSet:
    """The arrays of `specs` (-i values) with where every row came from (see InputSet);
    `say` hears the notes."""
    found = _load_inputs(model, specs, images)
    for note in found.notes if say is not None else ():
        say(note)
    return found


def _load_inputs(model: Model, specs: tuple[str, ...], images: ImageSettings | None
                 ) -> InputSet:
    names = [spec.name for spec in model.inputs]
    found = InputSet()
    pictures: dict[str, list[str]] = {}
    for spec in specs:
        for name, path in _expand(*_split(spec, names)):
            found.files.append(path)
            if is_image_file(path):
                pictures.setdefault(_only_input(name, names), []).append(path)
            else:
                _add_arrays(found, name, path, names)
    for name, paths in pictures.items():
        for path in paths:
            if not Path(path).is_file():
                raise InputError(f"input file not found: {path}")
        chosen = preprocessing_for(model, model.input(name), images)
        found.arrays[name] = load_images(paths, chosen.prep)
        found.sources[name] = [{"file": path, "row": 0} for path in paths]
        found.preprocessing[name] = chosen.as_dict()
        note = f"using preset {chosen.preset} from {chosen.preset_file}"
        if chosen.preset is not None and note not in found.notes:
            found.notes.append(note)
    return found


def _add_arrays(found: InputSet, name: str | None, path: str, names: list[str]) -> None:
    loaded = _load(path)
    if not isinstance(loaded, dict):
        _add(found, _only_input(name, names), loaded, {"file": path})
        return
    if name is not None:
        if len(loaded) != 1:
            raise InputError(f"{path} holds {len(loaded)} arrays; name=FILE needs one")
        key, values = next(iter(loaded.items()))
        _add(found, name, values, {"file": path, "key": key})
        return
    if set(loaded) == {"arr_0"} and len(names) == 1:
        _add(found, names[0], loaded["arr_0"], {"file": path, "key": "arr_0"})
        return
    for key, values in loaded.items():
        _add(found, key, values, {"file": path, "key": key})


def _add(found: InputSet, name: str, values: np.ndarray, source: dict) -> None:
    found.arrays[name] = values
    rows = values.shape[0] if values.ndim else 1
    found.sources[name] = [{**source, "row": row} for row in range(rows)]


def _expand(name: str | None, path: str) -> list[tuple[str | None, str]]:
    """A folder stands for its image files, sorted by name (hidden files left out)."""
    if not os.path.isdir(path):
        return [(name, path)]
    images = sorted(entry for entry in os.listdir(path)
                    if is_image_file(entry) and not entry.startswith(".")
                    and os.path.isfile(os.path.join(path, entry)))
    if not images:
        raise InputError(f"no image files in folder {path} (PNG, JPEG, BMP, GIF, WebP, TIFF)")
    return [(name, os.path.join(path, entry)) for entry in images]


def _only_input(name: str | None, names: list[str]) -> str:
    if name is not None:
        return name
    if len(names) != 1:
        raise InputError(f"the model has {len(names)} inputs ({', '.join(names)}); "
                         f"pass each as NAME=FILE or in one .npz")
    return names[0]


def read_array(path: str) -> np.ndarray:
    """One array from a .npy file (or a single-array .npz)."""
    loaded = _load(path)
    if isinstance(loaded, dict):
        if len(loaded) != 1:
            raise InputError(f"{path} holds {len(loaded)} arrays; one is needed")
        return next(iter(loaded.values()))
    return loaded


def _split(spec: str, names: list[str]) -> tuple[str | None, str]:
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        return name, path
    return None, spec


def _load(path: str) -> np.ndarray | dict[str, np.ndarray]:
    file = Path(path)
    if not file.exists():
        raise InputError(f"input file not found: {path}")
    if file.is_dir():
        raise InputError(f"input path is a directory: {path}")
    suffix = file.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise InputError(f"unsupported input file '{path}': use .npy or .npz arrays, or "
                         "image files (PNG, JPEG, ...)")
    # Every read, .npz members included, stays inside this handler: a corrupt member is the
    # user's file at fault, not a bug (zlib and zipfile raise their own types).
    try:
        if suffix == ".npz" or zipfile.is_zipfile(path):
            return _read_npz(path)
        with open(path, "rb") as stream:
            return _read_npy(stream, file.stat().st_size, path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError,
            NotImplementedError, OverflowError, SyntaxError, tokenize.TokenError) as err:
        raise InputError(f"cannot read input file {path}: {' '.join(str(err).split())}"
                         ) from None


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Every member of an .npz, each checked like a .npy file (never unpickled)."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        _check_expansion(archive, path)
        for info in archive.infolist():
            if info.is_dir():
                continue
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with archive.open(info) as stream:
                arrays[key] = _read_npy(stream, info.file_size, f"{path} (member '{key}')")
    return arrays


def _check_expansion(archive: zipfile.ZipFile, path: str) -> None:
    """Compressed members may declare honestly what the disk does not hold (a zip bomb: 8 GiB
    of zeros in 8 MB): what they expand to is capped by the memory budget."""
    expands = sum(info.file_size for info in archive.infolist()
                  if info.compress_type != zipfile.ZIP_STORED)
    if expands > DEFAULT_BUDGET_MB << 20:
        raise InputError(f"{path} expands to {expands:,} bytes of compressed arrays, over the "
                         f"memory budget of {DEFAULT_BUDGET_MB} MB: save it with np.savez "
                         "(uncompressed) or split it")


def _read_npy(stream: BinaryIO, size: int, where: str) -> np.ndarray:
    """The array in a .npy stream of `size` bytes, after checking what its header declares
    against the bytes there are, so that a lying header cannot allocate terabytes."""
    fmt = np.lib.format
    version = fmt.read_magic(stream)
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    if version not in readers:
        raise InputError(f"{where} is .npy format version {version[0]}.{version[1]}; "
                         "save it with numpy's default format (1.0 or 2.0)")
    shape, _, dtype = readers[version](stream)
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects (dtype {dtype}), which onnxplain "
                         "never unpickles; save a numeric array")
    elements = math.prod(shape)
    needed = elements * dtype.itemsize
    available = size - stream.tell()
    if elements > MAX_ELEMENTS or needed > available:
        raise InputError(f"{where} declares shape {tuple(shape)} of {dtype} ({needed:,} bytes)"
                         f" but holds {max(available, 0):,} bytes of data: the file is "
                         "truncated or its header is wrong")
    stream.seek(0)  # read_array reads the header again
    return fmt.read_array(stream, allow_pickle=False)
