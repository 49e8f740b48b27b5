"""Occlusion against Captum's Occlusion on the torch original, in one process, on the
model-zoo ResNet-18 (224x224, batch 1, CPU, window 16 stride 16: 196 occluded copies).

    python benchmarks/perturbation_methods.py [--repeats 3] [--window 16]

Prints onnxplain time / Captum time (lower is better) and onnxplain time / the ONNX Runtime
forward of as many rows as there are occluded copies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import interleaved_times, median_ratio  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.runtime.session import Session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=16)
    args = parser.parse_args()
    import torch
    from captum.attr import Occlusion

    path = model_zoo.model_path("resnet18")
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    module = model_zoo.load_torch("resnet18")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    copies = (224 // args.window) ** 2
    chunk = explainer.engine.rows_per_run({"pixel_values": x}) * 3  # forward-only budget
    forward = Session(explainer.model.proto, explainer.providers)
    block = np.repeat(x, min(chunk, copies), axis=0)

    def forwards() -> None:
        for start in range(0, copies, len(block)):
            forward.run(None, {"pixel_values": block[:min(len(block), copies - start)]})

    occlusion = Occlusion(module)
    window = (3, args.window, args.window)

    def captum() -> None:
        with torch.no_grad():
            occlusion.attribute(torch.from_numpy(x), sliding_window_shapes=window,
                                strides=window, baselines=0.0, target=3,
                                perturbations_per_eval=len(block))

    runs = {"forward": forwards, "captum": captum,
            "onnxplain": partial(explainer.explain, x, "occlusion", target=3,
                                 window=args.window, stride=args.window)}
    times = interleaved_times(runs, args.repeats)
    print(f"occlusion, ResNet-18 224x224, window {args.window}: {copies} copies, "
          f"{torch.get_num_threads()} torch threads")
    for name, values in times.items():
        print(f"  {name:10s} {statistics.median(values):7.3f} s")
    print(f"  onnxplain / Captum  {median_ratio(times['onnxplain'], times['captum']):.2f}")
    print(f"  onnxplain / forward {median_ratio(times['onnxplain'], times['forward']):.2f}")


if __name__ == "__main__":
    main()
