"""Read `--input` files: `x.npy`, `name=x.npy`, an `.npz` holding arrays by input name, or
image files (`cat.png`, `name=cat.jpg`; several make a batch), preprocessed as the
preset next to the model or the input's shape says (cli/presets.py)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from onnxplain.errors import InputError
from onnxplain.graph.model import Model
from onnxplain.images import is_image_file, load_images

from .presets import ImageSettings, preprocessing_for


def read_inputs(model: Model, specs: tuple[str, ...], images: ImageSettings | None = None
                ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays by input name, and the files they came from."""
    names = [spec.name for spec in model.inputs]
    arrays: dict[str, np.ndarray] = {}
    files: list[str] = []
    pictures: dict[str, list[str]] = {}
    for spec in specs:
        name, path = _split(spec, names)
        files.append(path)
        if is_image_file(path):
            pictures.setdefault(_only_input(name, names), []).append(path)
            continue
        loaded = _load(path)
        if isinstance(loaded, dict):
            if name is not None:
                if len(loaded) != 1:
                    raise InputError(f"{path} holds {len(loaded)} arrays; name=FILE needs one")
                loaded = {name: next(iter(loaded.values()))}
            elif set(loaded) == {"arr_0"} and len(names) == 1:
                loaded = {names[0]: loaded["arr_0"]}
            arrays.update(loaded)
            continue
        arrays[_only_input(name, names)] = loaded
    for name, paths in pictures.items():
        for path in paths:
            if not Path(path).is_file():
                raise InputError(f"input file not found: {path}")
        prep = preprocessing_for(model, model.input(name), images)
        arrays[name] = load_images(paths, prep)
    return arrays, files


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
