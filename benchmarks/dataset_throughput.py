"""explain-dataset's local engine against Explainer.explain on the same rows held in memory,
in one process (issue 20's target: rows/s >= 0.9 x the in-memory rate at its best batch).

    python benchmarks/dataset_throughput.py [--images 2000] [--model resnet18]
        [--batches 8 16 32] [--method saliency]

Writes --images random RGB JPEGs at the model's input size into a temporary folder (in
class sub-folders), then times:
  dataset   onnxplain.explain_dataset over the folder (--dataset-batch rows per batch):
            decoding, batching, explaining and writing the Parquet shards, its Explainer's
            session build included
  memory    Explainer.explain over the decoded images already stacked in memory, one call
            per batch size of --batches (the best one is the baseline)
and prints rows/s for each, their ratio, and the peak resident memory of the process after
each phase (the dataset run's growth is what one batch and one shard hold). The CPU model and
its vector extensions are printed beside the figures: ratios move with them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import machine, peak_rss  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.images import default_preprocessing, load_images  # noqa: E402


def write_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """`count` random RGB JPEGs of `size` (height, width), ten class folders."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        path = folder / f"class{index % 10}" / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return sorted(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--method", default="saliency")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--dataset-batch", type=int, default=32)
    args = parser.parse_args()
    path = model_zoo.model_path(args.model)
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    spec = explainer.model.inputs[0]
    prep = default_preprocessing(spec)
    print(machine())
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "images"
        paths = write_images(folder, args.images, tuple(spec.dims[2:]))
        start_rss = peak_rss()
        # The dataset run first: its peak memory is measured before the images are held.
        summary = onnxplain.explain_dataset(path, folder, Path(work) / "out", args.method,
                                            batch_size=args.dataset_batch, providers="cpu",
                                            progress=False)
        dataset_rss = peak_rss()
        rate = summary["explained"] / summary["seconds"]
        x = load_images([str(p) for p in paths], prep)
        rates = {}
        for batch in args.batches:
            explainer.explain(x[:batch], method=args.method, batch_size=batch)  # warm-up
            start = time.perf_counter()
            explainer.explain(x, method=args.method, batch_size=batch)
            rates[batch] = len(x) / (time.perf_counter() - start)
            print(f"memory   batch {batch:3d}: {rates[batch]:8.1f} rows/s")
        best = max(rates, key=rates.get)
        print(f"dataset  batch {args.dataset_batch:3d}: {rate:8.1f} rows/s "
              f"({summary['explained']} rows, {summary['errors']} errors, its session build "
              "included)")
        print(f"dataset / memory at its best batch ({best}): {rate / rates[best]:.2f} "
              "(target >= 0.9)")
        print(f"peak RSS: {start_rss / 2**20:.0f} MB before, {dataset_rss / 2**20:.0f} MB after "
              f"the dataset run, {peak_rss() / 2**20:.0f} MB with the {len(x)} decoded images "
              "and their attributions in memory")

if __name__ == "__main__":
    main()
