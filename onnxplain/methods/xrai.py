"""XRAI (Kapishnikov, Bolukbasi, Viegas, Terry, ICCV 2019, arXiv:1906.02825): image regions
ranked by the density of their Integrated Gradients attribution, as PAIR's `saliency`
package computes them (saliency.core.xrai). The regions come from each image's own
segmentation, so XRAI runs in process: `export` refuses it, as it refuses superpixels."""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from ..errors import InputError
from ..images import image_layout
from . import MethodOutput, MethodSpec, register
from ._common import input_sources
from .integrated_gradients import (
    DELTA_TOLERANCE,
    INTERNAL_BATCH_SIZE,
    N_STEPS,
    RULE,
    integrated_gradients,
    path_work,
)
from .options import choice, integer, number

# PAIR's segmentation: Felzenszwalb and Huttenlocher (IJCV 2004) at these scales, on the
# image resized to 224 x 224 with values in [-1, 1] (its parameters were tuned there).
SCALES = (50, 100, 150, 250, 500, 1200)
SIGMA = 0.8
MIN_SEGMENT = 150
SEGMENTATION_SIZE = (224, 224)
DILATION = 5
ALGORITHMS = ("full", "fast")


def xrai(engine, feeds: Mapping[str, np.ndarray], target, sources, *, n_steps=50,
         rule: str = "gausslegendre", algorithm: str = "full", area_threshold: float = 1.0,
         min_pixel_diff: int = 50, internal_batch_size: int = 0,
         delta_tolerance: float | None = None) -> MethodOutput:
    """XRAI map of the image input: every pixel holds the gain of the region it joined.

    A = (IG(x; x'_black) + IG(x; x'_white)) / 2, with x'_black (x'_white) the row filled
    with its smallest (largest) value, each the integrated_gradients program's; a(p) is
    max over channels of A at pixel p. Candidate regions: Felzenszwalb segments at six
    scales, each dilated by a disk of 5 pixels. Greedy ("full"): with R the pixels chosen
    so far, add the region s maximising gain(s) = mean of a over s minus R, among regions
    adding at least `min_pixel_diff` pixels, until R covers more than `area_threshold` of
    the image or no region is left; its new pixels get gain(s). "fast" orders the regions
    once by the mean of a over the whole region. Pixels never covered get the mean of a
    over them. extras["segments"] ranks the regions (1: the densest), as PAIR's
    flatten_xrai_segments; extras["ig_attribution"] holds A, extras["ig_convergence_delta"]
    the two IG runs' deltas [2, N] (black, white).
    """
    name = _image_input(input_sources(sources, feeds, "xrai"), feeds)
    if algorithm not in ALGORITHMS:
        raise InputError(f"xrai: unknown algorithm '{algorithm}' (choose from "
                         f"{', '.join(ALGORITHMS)})")
    x = feeds[name]
    runs = [integrated_gradients(engine, feeds, target, sources, n_steps=n_steps, rule=rule,
                                 baseline=_fill(feeds, name, pick),
                                 internal_batch_size=internal_batch_size,
                                 delta_tolerance=delta_tolerance)
            for pick in (np.min, np.max)]
    attribution = (runs[0].at_sources[name] + runs[1].at_sources[name]) / 2
    channels_last = image_layout(x.shape) == "NHWC"
    images = x if channels_last else np.moveaxis(x, 1, -1)
    density = (attribution if channels_last else np.moveaxis(attribution, 1, -1)).max(axis=-1)
    maps, ranks = [], []
    for regions, row in zip(_segmented(images, engine.threads), density, strict=True):
        found = (greedy_regions(row, regions, area_threshold, min_pixel_diff)
                 if algorithm == "full" else ordered_regions(row, regions, min_pixel_diff))
        maps.append(found[0])
        ranks.append(found[1])
    gains = np.stack(maps).astype(x.dtype)[..., None]
    at_input = gains if channels_last else np.moveaxis(gains, -1, 1)
    extras = {"segments": np.stack(ranks), "ig_attribution": attribution,
              "ig_convergence_delta": np.stack([run.extras["convergence_delta"] for run in runs])}
    return MethodOutput(runs[0].run, at_inputs={name: at_input}, extras=extras)


def _image_input(moved, feeds) -> str:
    images = [s.input for s in moved if image_layout(feeds[s.input].shape)]
    if not images:
        raise InputError("xrai explains image inputs (N, C, H, W or N, H, W, C with 1, 3 or 4 "
                         "channels), and this model has none")
    return images[0]


def _fill(feeds, name: str, pick) -> dict[str, np.ndarray]:
    """Baselines for every float input: `name`'s rows filled with pick(row) (PAIR's black
    and white images); the other inputs stay as they are, so they get no attribution."""
    x = feeds[name]
    value = pick(x.reshape(len(x), -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    return {**{key: v for key, v in feeds.items() if v.dtype.kind == "f"},
            name: np.broadcast_to(value, x.shape).astype(x.dtype)}


def _segmented(images: np.ndarray, threads: int | None) -> list[np.ndarray]:
    """segments() of each image, several at once: scikit-image's Felzenszwalb and resize
    release the GIL, and the segmentation is most of XRAI's time on small images (PAIR
    segments one image at a time). As many threads as ONNX Runtime may use (`threads`,
    else the cores)."""
    workers = min(len(images), threads or os.cpu_count() or 1)
    if workers <= 1:
        return [segments(image) for image in images]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(segments, images))


def segments(image: np.ndarray) -> np.ndarray:
    """[K, H, W] bool: PAIR's candidate regions of one H x W x C image (every segment of
    every scale, dilated)."""
    try:
        from skimage.morphology import disk
        from skimage.segmentation import felzenszwalb
        from skimage.transform import resize
    except ImportError:
        raise InputError("xrai segments images with scikit-image: "
                         "pip install scikit-image") from None
    image = image.astype(np.float64)
    low, high = image.min(), image.max()
    # PAIR scales to [-1, 1]; a flat image has no edges to segment (one region).
    scaled = (image - low) / (high - low) * 2 - 1 if high > low else np.zeros_like(image)
    scaled = resize(scaled, SEGMENTATION_SIZE, order=3, mode="constant", preserve_range=True,
                    anti_aliasing=True)
    masks = []
    for scale in SCALES:
        labels = felzenszwalb(scaled, scale=scale, sigma=SIGMA, min_size=MIN_SEGMENT)
        labels = resize(labels, image.shape[:2], order=0, preserve_range=True,
                        mode="constant", anti_aliasing=False).astype(int)
        masks.append(dilated_labels(labels - labels.min(), disk(DILATION)))
    return np.concatenate(masks)


def dilated_labels(labels: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """[labels.max() + 1, H, W] bool: each label's mask (labels 0 ..) dilated by the
    symmetric `footprint`, as skimage's dilation of labels == l gives it (its reflected
    border adds no pixel a disk does not reach from inside). One pass over the footprint's
    offsets, each marking every pixel with the label it reaches, rather than one filter per
    label (PAIR's way: ~300 filters an image, 12% of XRAI's time on a 64x64 ResNet)."""
    height, width = labels.shape
    masks = np.zeros((int(labels.max()) + 1, height, width), dtype=bool)
    rows, cols = np.indices(labels.shape)
    for dy, dx in np.argwhere(footprint) - np.array(footprint.shape) // 2:
        if abs(dy) >= height or abs(dx) >= width:
            continue  # an offset past the image reaches no pixel from any pixel
        # Pixels p whose p + (dy, dx) is inside take that pixel's label.
        ys, xs = slice(max(0, -dy), height - max(0, dy)), slice(max(0, -dx), width - max(0, dx))
        reached = labels[max(0, dy):height + min(0, dy), max(0, dx):width + min(0, dx)]
        masks[reached, rows[ys, xs], cols[ys, xs]] = True
    return masks


def greedy_regions(density: np.ndarray, regions: np.ndarray, area_threshold: float,
                   min_pixel_diff: int) -> tuple[np.ndarray, np.ndarray]:
    """PAIR's XRAI._xrai on one image: (the gain map, the region ranks)."""
    flat = regions.reshape(len(regions), -1)
    values = density.ravel().astype(np.float64)
    alive = np.arange(len(flat))
    covered = np.zeros(flat.shape[1], dtype=bool)
    gains = np.full(flat.shape[1], -np.inf)
    added: list[tuple[np.ndarray, float]] = []
    while covered.mean() <= area_threshold:
        free = flat[alive] & ~covered
        counts = free.sum(axis=1)
        keep = counts >= min_pixel_diff  # regions adding too little are dropped for good
        alive, free, counts = alive[keep], free[keep], counts[keep]
        if not len(alive):
            break
        means = _free_sums(free, values) / counts
        best = int(np.argmax(means))  # the first of equal gains, as PAIR's strict '>'
        new = free[best]
        added.append((new, float(means[best])))
        gains[new] = means[best]
        covered |= new
        alive = np.delete(alive, best)
    return _finish(gains, values, added, density.shape)


def _free_sums(free: np.ndarray, values: np.ndarray, block: int = 32) -> np.ndarray:
    """Each region's sum of `values` over its free pixels, a few regions at a time: the
    whole [regions, pixels] float array would be 0.2-0.4 GB at 224x224 on every step."""
    return np.concatenate([np.where(free[start:start + block], values, 0.0).sum(axis=1)
                           for start in range(0, len(free), block)])


def ordered_regions(density: np.ndarray, regions: np.ndarray, min_pixel_diff: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """PAIR's XRAI._xrai_fast on one image: regions taken once in order of their mean."""
    flat = regions.reshape(len(regions), -1)
    values = density.ravel().astype(np.float64)
    # A region lost in resizing the labels back is empty: PAIR's gain is then -inf.
    means = np.array([values[mask].mean() if mask.any() else -np.inf for mask in flat])
    covered = np.zeros(flat.shape[1], dtype=bool)
    gains = np.full(flat.shape[1], -np.inf)
    added: list[tuple[np.ndarray, float]] = []
    for index in np.argsort(-means, kind="stable"):
        new = flat[index] & ~covered
        if new.sum() < min_pixel_diff:
            continue
        gain = float(values[new].mean())
        added.append((new, gain))
        gains[new] = gain
        covered |= flat[index]
    return _finish(gains, values, added, density.shape)


def _finish(gains: np.ndarray, values: np.ndarray, added: list, shape: tuple
            ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels no region covered get their mean (so the map keeps IG's sum there); ranks
    number the regions by gain, the uncovered pixels last."""
    left = gains == -np.inf
    if left.any():
        gains[left] = values[left].mean()
    order = [mask for mask, _ in sorted(added, key=lambda item: -item[1])]
    order += [left] if left.any() else []
    ranks = np.zeros(gains.shape, dtype=np.int64)
    for rank, mask in enumerate(order, 1):
        ranks[mask] = rank
    return gains.reshape(shape), ranks.reshape(shape)


def xrai_work(options, feeds):
    """Two Integrated Gradients runs (the black and the white baseline)."""
    work = path_work(options, feeds)
    return replace(work, runs=2 * work.runs)


register(MethodSpec(
    name="xrai",
    run=xrai,
    summary="image regions ranked by the density of their Integrated Gradients (black and "
            "white baselines); runs in process",
    reference="Kapishnikov, Bolukbasi, Viegas, Terry 2019, arXiv:1906.02825",
    family="gradient",
    options=(N_STEPS, RULE, choice("algorithm", "full", ALGORITHMS, "full: greedy regions "
                                   "by added density; fast: ordered once by density"),
             number("area_threshold", 1.0, "share of the image covered greedily (the rest "
                    "is one region; full only)", low=0.0, high=1.0),
             integer("min_pixel_diff", 50, "pixels a region must add to be taken", low=1),
             INTERNAL_BATCH_SIZE, DELTA_TOLERANCE),
    work=xrai_work,
    in_process_only="it segments each image (Felzenszwalb), so its regions cannot be baked "
                    "into an exported graph",
))
