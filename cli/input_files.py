"""Read `--input` files: `x.npy`, `name=x.npy`, an `.npz` holding arrays by input name, or
image files (`cat.png`, `name=cat.jpg`, a folder of them; several make a batch),
preprocessed as the preset next to the model or the input's shape says (cli/presets.py)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from onnxplain.errors import InputError
from onnxplain.graph.model import Model
from onnxplain.images import is_image_file, load_images

from .presets import ImageSettings, preprocessing_for


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
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"cannot read input file {path}: {' '.join(str(err).split())}"
                         ) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {key: data[key] for key in data.files}
    return data
