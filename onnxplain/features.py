"""Feature masks for the perturbation methods (Kernel SHAP, LIME): which elements of an input
row are switched on and off together, and the perturbed copies of a row for coalitions.

A mask is an int64 array shaped like one input row (no batch axis) holding feature ids
0..F-1, every id used. A coalition z in {0, 1}^F keeps the elements of the features with
z_f = 1 and replaces the others by the baseline: h_x(z) = z[mask] * x + (1 - z[mask]) * b.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .images import image_layout

KINDS = ("auto", "grid", "superpixels", "tokens", "columns", "mask")


def feature_mask(value_row: np.ndarray, kind: str = "auto", *, cell: int = 8,
                 n_segments: int = 50, mask: np.ndarray | None = None) -> np.ndarray:
    """Feature ids (int64, shaped like `value_row`, ids 0..F-1 all used) of one input row.

    kind: "grid" (images, NCHW or NHWC rows as image_layout sees them: square cells of `cell`
    pixels, shared over channels), "superpixels" (SLIC, Achanta et al. 2012, on the image,
    `n_segments` wanted; needs scikit-image), "tokens" (one feature per position on the
    row's first axis, e.g. each id of a [S] token row), "columns" (one feature per element)
    or "mask" (`mask`: integer ids >= 0 broadcastable to the row, relabelled to 0..F-1 in
    sorted order; a negative id is refused). "auto": images -> grid, integer 1-D rows ->
    tokens, anything else -> columns; a given `mask` wins under "auto".
    """
    row = np.asarray(value_row)
    if mask is not None:
        if kind not in ("auto", "mask"):
            raise InputError(f"give either features='{kind}' or a feature mask, not both")
        return _user_mask(np.asarray(mask), row.shape)
    if kind not in KINDS:
        raise InputError(f"unknown features '{kind}' (choose from {', '.join(KINDS[:-1])}, "
                         "or pass an integer mask shaped like one input row)")
    if kind == "mask":
        raise InputError("features='mask' needs a mask: pass the integer array itself")
    if row.ndim == 0 or row.size == 0:
        raise InputError(f"cannot split an input row of shape {row.shape} into features")
    layout = image_layout((1, *row.shape))
    if kind == "auto":
        kind = ("grid" if layout else
                "tokens" if row.ndim == 1 and row.dtype.kind in "iu" else "columns")
    if kind in ("grid", "superpixels") and layout is None:
        raise InputError(f"features='{kind}' needs an image row (C, H, W or H, W, C with 1, "
                         f"3 or 4 channels), got shape {row.shape}; use 'columns' or a mask")
    if kind == "grid":
        return _grid(row.shape, layout, cell)
    if kind == "superpixels":
        return _superpixels(row, layout, n_segments)
    if kind == "tokens":
        ids = np.arange(row.shape[0], dtype=np.int64).reshape((-1,) + (1,) * (row.ndim - 1))
        return np.ascontiguousarray(np.broadcast_to(ids, row.shape))
    return np.arange(row.size, dtype=np.int64).reshape(row.shape)


def row_masks(values: np.ndarray, features: str | np.ndarray = "auto", *, cell: int = 0,
              n_segments: int = 50) -> list[np.ndarray]:
    """One feature mask per row of `values` [N, *row]. `features` is a kind (see
    feature_mask), an integer mask shared by every row (like one row, or broadcastable to
    it), or one integer mask per row: an array with the batch's rank, [N, *row] (or
    [1, *row] for every row), each relabelled on its own. Only superpixels and per-row masks
    differ between rows; the other kinds are computed once. `cell` 0 sizes grid cells so
    that the image's shorter side holds GRID_CELLS of them (8x8 digits: 1 pixel; 224: 28)."""
    if not cell:
        cell = default_cell(values[0])
    if isinstance(features, str):
        kind, mask = features, None
    else:
        kind, mask = "mask", np.asarray(features)
    if kind == "superpixels":
        return [feature_mask(row, kind, n_segments=n_segments) for row in values]
    if mask is not None and mask.ndim == np.ndim(values):
        if len(mask) not in (1, len(values)):
            raise InputError(f"a feature mask per row needs one row per input row "
                             f"({len(values)}) or one for all, got shape {mask.shape}")
        if len(mask) == len(values) > 1:
            return [feature_mask(row, mask=own) for row, own in zip(values, mask, strict=True)]
        mask = mask[0]
    one = feature_mask(values[0], kind, cell=cell, n_segments=n_segments, mask=mask)
    return [one] * len(values)


GRID_CELLS = 8


def default_cell(value_row: np.ndarray) -> int:
    """Grid cell size giving GRID_CELLS cells along the shorter side of an image row."""
    layout = image_layout((1, *value_row.shape))
    if layout is None:
        return 1
    height, width = value_row.shape[1:] if layout == "NCHW" else value_row.shape[:2]
    return max(1, -(-min(height, width) // GRID_CELLS))


def apply_features(value_row: np.ndarray, feature_mask: np.ndarray, present: np.ndarray,
                   baseline) -> np.ndarray:
    """[K, *row]: copy k keeps the elements whose feature is present[k] and takes the
    baseline elsewhere. `present` is [K, F] bool; `baseline` is a scalar, an array
    broadcastable to the row, or one baseline row per copy [K, *row]. Integer rows (token
    ids) need an integer baseline (the id of a padding or mask token)."""
    row = np.asarray(value_row)
    ids = np.asarray(feature_mask)
    keep_features = np.asarray(present, dtype=bool)
    if keep_features.ndim == 1:
        keep_features = keep_features[None]
    if ids.shape != row.shape:
        raise InputError(f"feature mask of shape {ids.shape} does not fit a row of shape "
                         f"{row.shape}")
    count = int(ids.max()) + 1
    if keep_features.ndim != 2 or keep_features.shape[1] != count:
        raise InputError(f"present must be [K, {count}] (one column per feature), got shape "
                         f"{keep_features.shape}")
    keep = keep_features[:, ids]  # [K, *row]: each element follows its feature
    base = baseline_values(baseline, row.dtype)
    try:
        np.broadcast_shapes(base.shape, keep.shape)
    except ValueError:
        raise InputError(f"baseline of shape {base.shape} does not fit rows of shape "
                         f"{row.shape}") from None
    return np.where(keep, row, base)


def baseline_values(baseline, dtype: np.dtype) -> np.ndarray:
    """The baseline as an array of the input's dtype; integer inputs need integer values."""
    base = np.asarray(baseline)
    if base.dtype.kind not in "fiub":
        raise InputError(f"baseline must be numeric, got {base.dtype}")
    if np.dtype(dtype).kind in "iu" and base.dtype.kind == "f":
        if not np.all(np.isfinite(base)) or np.any(base != np.round(base)):
            raise InputError("the baseline of an integer (token id) input must be an integer "
                             f"id, got {base.ravel()[:3].tolist()}")
    return base.astype(dtype, copy=False)


def _grid(shape: tuple[int, ...], layout: str, cell: int) -> np.ndarray:
    if not isinstance(cell, int | np.integer) or cell < 1:
        raise InputError(f"features='grid' needs cell >= 1 pixels, got {cell!r}")
    height, width = shape[1:] if layout == "NCHW" else shape[:2]
    columns = -(-width // cell)
    ids = (np.arange(height)[:, None] // cell) * columns + np.arange(width)[None, :] // cell
    ids = ids[None] if layout == "NCHW" else ids[..., None]
    return np.ascontiguousarray(np.broadcast_to(ids, shape), dtype=np.int64)


def _superpixels(row: np.ndarray, layout: str, n_segments: int) -> np.ndarray:
    try:
        from skimage.segmentation import slic
    except ImportError:
        raise InputError("features='superpixels' needs scikit-image: "
                         "pip install scikit-image") from None
    if not isinstance(n_segments, int | np.integer) or n_segments < 1:
        raise InputError(f"features='superpixels' needs n_segments >= 1, got {n_segments!r}")
    image = np.moveaxis(row, 0, -1) if layout == "NCHW" else row
    image = image.astype(np.float64)
    low, high = image.min(), image.max()
    # SLIC's colour distances assume a fixed range; normalised inputs can be anything.
    image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    channels = image.shape[-1]
    # compactness 10 suits Lab (L in 0..100), which SLIC uses for 3 channels; others stay in
    # 0..1, where the same balance of colour and space needs about 100 times less.
    segments = slic(image, n_segments=int(n_segments), compactness=10.0 if channels == 3
                    else 0.1, start_label=0, channel_axis=-1)
    ids = np.unique(segments, return_inverse=True)[1].reshape(segments.shape)
    ids = ids[None] if layout == "NCHW" else ids[..., None]
    return np.ascontiguousarray(np.broadcast_to(ids, row.shape), dtype=np.int64)


def _user_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.dtype.kind not in "iub":
        raise InputError(f"a feature mask must hold integer ids, got {mask.dtype}")
    try:
        full = np.broadcast_to(mask, shape)
    except ValueError:
        raise InputError(f"feature mask of shape {mask.shape} does not broadcast to an input "
                         f"row of shape {shape} (one mask per row: [rows, *row])") from None
    if full.dtype.kind == "i" and full.size and full.min() < 0:
        # The methods' exported feature_mask input reads a negative id as no feature (never
        # perturbed): renumbering it here as one more feature would say otherwise.
        raise InputError(f"a feature mask holds feature ids >= 0, got {int(full.min())}: give "
                         "every element a feature (the exported feature_mask input reads "
                         "negative ids as no feature)")
    ids = np.unique(full, return_inverse=True)[1].reshape(shape)
    return ids.astype(np.int64)
