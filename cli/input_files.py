"""Read `--input` files: `x.npy`, `name=x.npy`, or an `.npz` holding arrays by input name."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from onnxplain.errors import InputError
from onnxplain.graph.model import Model


def read_inputs(model: Model, specs: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays by input name, and the files they came from."""
    names = [spec.name for spec in model.inputs]
    arrays: dict[str, np.ndarray] = {}
    files: list[str] = []
    for spec in specs:
        name, path = _split(spec, names)
        files.append(path)
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
        if name is None:
            if len(names) != 1:
                raise InputError(f"the model has {len(names)} inputs ({', '.join(names)}); "
                                 f"pass each as NAME=FILE or in one .npz")
            name = names[0]
        arrays[name] = loaded
    return arrays, files


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
        raise InputError(f"unsupported input file '{path}': use .npy or .npz arrays")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"cannot read input file {path}: {' '.join(str(err).split())}"
                         ) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return {key: data[key] for key in data.files}
    return data
