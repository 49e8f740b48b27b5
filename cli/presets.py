"""Image preprocessing options for commands that read `--input` image files, and named
presets saved in a small JSON file next to the model (`model.onnxplain.json`), so the next
call needs only the model and the image."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import click

from onnxplain.errors import InputError
from onnxplain.files import save_json
from onnxplain.graph.model import Model, TensorSpec
from onnxplain.images import CHANNELS, LAYOUTS, ImagePreprocessing, default_preprocessing

from .errors import friendly

SUFFIX = ".onnxplain.json"


@dataclass
class ImageSettings:
    """What the command line says about image inputs: overrides of single settings, a preset
    to start from, and a name to save the result under."""

    overrides: dict = field(default_factory=dict)
    preset: str | None = None
    save_as: str | None = None


def config_path(model_path: str) -> Path:
    path = Path(model_path)
    return path.with_name(path.stem + SUFFIX)


def read_config(model_path: str | None) -> dict:
    if model_path is None or not config_path(model_path).exists():
        return {"default": None, "presets": {}}
    path = config_path(model_path)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read presets from {path}: {' '.join(str(err).split())}"
                         ) from None
    if not isinstance(config, dict) or not isinstance(config.get("presets"), dict):
        raise InputError(f"{path} is not an onnxplain preset file")
    return config


@dataclass(frozen=True)
class ChosenPreprocessing:
    """The preprocessing applied to an image input, and the saved preset it started from."""

    prep: ImagePreprocessing
    preset: str | None = None
    preset_file: str | None = None

    def as_dict(self) -> dict:
        return {**self.prep.as_dict(), "preset": self.preset, "preset_file": self.preset_file}


def preprocessing_for(model: Model, spec: TensorSpec, settings: ImageSettings | None
                      ) -> ChosenPreprocessing:
    """The preset named (else the file's default, else what the input shape says), with the
    command line's overrides; saved under `settings.save_as` when given."""
    settings = settings or ImageSettings()
    config = read_config(model.path)
    name = settings.preset or config.get("default")
    if settings.preset and settings.preset not in config["presets"]:
        where = config_path(model.path) if model.path else "the model (loaded from memory)"
        raise InputError(f"no preset named '{settings.preset}' in {where}")
    found = name in config["presets"]
    base = (ImagePreprocessing.from_dict(config["presets"][name]) if found
            else default_preprocessing(spec))
    prep = ImagePreprocessing.from_dict({**base.as_dict(), **settings.overrides})
    if settings.save_as:
        _save(model.path, config, settings.save_as, prep)
    if not found:
        return ChosenPreprocessing(prep)
    return ChosenPreprocessing(prep, name, str(config_path(model.path)))


def _save(model_path: str | None, config: dict, name: str, prep: ImagePreprocessing) -> None:
    if model_path is None:
        raise InputError("presets are saved next to the model file; this model has no path")
    config["presets"][name] = prep.as_dict()
    config["default"] = name
    save_json(config_path(model_path), config)


def _numbers(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"{option} '{text}' is not a comma-separated list of numbers"
                         ) from None


def _crop(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        raise InputError(f"--crop '{text}' is not SIZE or HEIGHTxWIDTH") from None
    return (values[0], values[0]) if len(values) == 1 else tuple(values[:2])


def image_options(command):
    """Add the image options to a click command; it receives them as `image_settings`."""
    options = [
        click.option("--resize", type=int, default=None,
                     help="image files: scale the shorter side to this many pixels"),
        click.option("--crop", default=None, metavar="SIZE|HxW",
                     help="image files: keep the centre SIZE x SIZE (or H x W) pixels"),
        click.option("--scale", type=float, default=None,
                     help="image files: divide pixel values by this (default 255: [0, 1])"),
        click.option("--mean", default=None, metavar="M[,M,M]",
                     help="image files: per-channel mean subtracted after scaling"),
        click.option("--std", default=None, metavar="S[,S,S]",
                     help="image files: per-channel std divided by after the mean"),
        click.option("--channels", type=click.Choice(CHANNELS), default=None,
                     help="image files: channel order the model expects"),
        click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                     help="image files: where the channel axis goes"),
        click.option("--preset", default=None,
                     help=f"image files: start from this preset saved in MODEL{SUFFIX}"),
        click.option("--save-preset", default=None, metavar="NAME",
                     help=f"save the image settings as NAME (and the default) in "
                          f"MODEL{SUFFIX}"),
    ]

    @functools.wraps(command)
    def wrapper(*args, resize, crop, scale, mean, std, channels, layout, preset, save_preset,
                **kwargs):
        given = {"resize": resize, "crop": _crop(crop), "scale": scale,
                 "mean": _numbers(mean, "--mean"), "std": _numbers(std, "--std"),
                 "channels": channels, "layout": layout}
        overrides = {k: v for k, v in given.items() if v is not None}
        kwargs["image_settings"] = ImageSettings(overrides, preset, save_preset)
        return command(*args, **kwargs)

    wrapper = friendly(wrapper)  # bad option values are one-line errors too
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
