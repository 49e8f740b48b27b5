"""Image files as model inputs: resize, centre crop, scale, normalise, channel order and layout,
as the usual torchvision preprocessing does (Resize(shorter side), CenterCrop, ToTensor,
Normalize)."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError
from .graph.attention import cached_inputs
from .graph.model import TensorSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LAYOUTS = ("NCHW", "NHWC")
CHANNELS = ("RGB", "BGR", "L")


@dataclass(frozen=True)
class ImagePreprocessing:
    """How an image file becomes one input row.

    `resize`: the shorter side is scaled to this many pixels (aspect kept), `crop`: the
    centre (height, width) is kept; then pixels are divided by `scale` (255 gives [0, 1]),
    and each channel c becomes (value - mean[c]) / std[c]. `channels` is the order the model
    expects (L: one grey channel), `layout` where the channel axis goes.
    """

    resize: int | None = None
    crop: tuple[int, int] | None = None
    scale: float = 255.0
    mean: tuple[float, ...] = field(default=(0.0,))
    std: tuple[float, ...] = field(default=(1.0,))
    channels: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise InputError(f"unknown layout '{self.layout}' (choose NCHW or NHWC)")
        if self.channels not in CHANNELS:
            raise InputError(f"unknown channel order '{self.channels}' (choose RGB, BGR or L)")
        if self.resize is not None and self.resize < 1:
            raise InputError(f"resize must be a positive number of pixels, got {self.resize}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 1):
            raise InputError(f"crop must be HEIGHTxWIDTH in pixels, got {self.crop}")
        if not self.scale > 0:
            raise InputError(f"scale must be positive, got {self.scale}")
        count = 1 if self.channels == "L" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, count):
                raise InputError(f"{name} needs 1 or {count} values for {self.channels} "
                                 f"images, got {len(values)}")
        if any(v == 0 for v in self.std):
            raise InputError("std values must not be 0")

    def as_dict(self) -> dict:
        values = asdict(self)
        values["crop"] = list(self.crop) if self.crop else None
        values["mean"], values["std"] = list(self.mean), list(self.std)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> ImagePreprocessing:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"unknown image preprocessing setting '{unknown[0]}'")
        if known.get("crop") is not None:
            known["crop"] = tuple(int(v) for v in known["crop"])
        for name in ("mean", "std"):
            if name in known:
                known[name] = tuple(float(v) for v in known[name])
        return cls(**known)


def image_layout(shape: tuple[int, ...]) -> str | None:
    """'NCHW' or 'NHWC' when a tensor shape looks like a batch of images, else None."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3, 4) and shape[2] > 1 and shape[3] > 1:
        return "NCHW"
    if shape[3] in (1, 3, 4) and shape[1] > 1 and shape[2] > 1:
        return "NHWC"
    return None


def default_preprocessing(spec: TensorSpec) -> ImagePreprocessing:
    """What the input's declared shape says: the layout (where the 1 or 3 channels are),
    grey or RGB, and a resize and centre crop to a static height and width."""
    dims = spec.dims
    if dims is None or len(dims) != 4:
        raise InputError(f"input {spec.describe()} is not an image input [batch, C, H, W] or "
                         "[batch, H, W, C]")
    layout = "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"
    channel = dims[1] if layout == "NCHW" else dims[3]
    height, width = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    static = isinstance(height, int) and isinstance(width, int)
    return ImagePreprocessing(resize=max(height, width) if static else None,
                              crop=(height, width) if static else None,
                              channels="L" if channel == 1 else "RGB", layout=layout)


def load_image(path: str | os.PathLike, prep: ImagePreprocessing) -> np.ndarray:
    """One preprocessed row (no batch axis), float32."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if prep.channels == "L" else "RGB")
    # PIL reports broken files with several types, and oversized ones (a header declaring
    # 10^10 pixels) with DecompressionBombError: all are the file's fault.
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError,
            SyntaxError, EOFError, struct.error) as err:
        raise InputError(f"cannot read image {path}: {' '.join(str(err).split())}") from None
    if prep.resize is not None:
        width, height = image.size
        ratio = prep.resize / min(width, height)
        size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    if prep.crop is not None:
        image = _centre_crop(image, prep.crop, path)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(prep.scale)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if prep.channels == "BGR":
        pixels = pixels[:, :, ::-1]
    pixels = (pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1) if prep.layout == "NCHW" else pixels,
                                dtype=np.float32)


def load_images(paths: Sequence[str | os.PathLike], prep: ImagePreprocessing) -> np.ndarray:
    rows = [load_image(path, prep) for path in paths]
    shapes = {row.shape for row in rows}
    if len(shapes) > 1:
        raise InputError(f"the images give rows of different shapes {sorted(shapes)}; set a "
                         "crop (--crop HxW) so they match")
    return np.stack(rows)


def is_image_file(path: str) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def _centre_crop(image: Image.Image, crop: tuple[int, int], path) -> Image.Image:
    height, width = crop
    if image.height < height or image.width < width:
        raise InputError(f"image {path} is {image.width}x{image.height} after resizing, "
                         f"smaller than the {width}x{height} crop")
    top = int(round((image.height - height) / 2.0))
    left = int(round((image.width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def image_inputs(model) -> dict[str, str]:
    """Float inputs declared as images -> 'NCHW' or 'NHWC' (image_layout on the
    declared dims, a symbolic size read as more than one pixel; a symbolic channel axis
    reads as NCHW), what layer maps are resized to, in-process and exported alike."""
    cached = cached_inputs(model)  # a KV cache [batch, heads, past, size] is no image
    found = {}
    for spec in model.inputs:
        dims = spec.dims
        if not spec.is_float or spec.name in cached or dims is None or len(dims) != 4:
            continue
        known = tuple(d if isinstance(d, int) else 2 for d in dims)
        layout = image_layout(known) or ("NCHW" if not isinstance(dims[1], int) else None)
        if layout is not None:
            found[spec.name] = layout
    return found
