"""Occlusion and KernelSHAP against Captum's on the torch original, in one process, on the
model-zoo ResNet-18 (224x224, batch 1, CPU): occlusion with window 16 stride 16 (196 occluded
copies), KernelSHAP on a 4x4 grid of 56-pixel cells with 128 coalitions.

    python benchmarks/perturbation_methods.py [--repeats 3] [--window 16] [--samples 128]

Prints onnxplain time / Captum time (lower is better), and for occlusion onnxplain time / the
ONNX Runtime forward of as many rows as there are occluded copies.
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
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()
    import torch
    from captum.attr import KernelShap, Occlusion

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

    cells = np.arange(16).reshape(4, 4).repeat(56, axis=0).repeat(56, axis=1)
    shap = KernelShap(module)

    def captum_shap() -> None:
        with torch.no_grad():
            shap.attribute(torch.from_numpy(x), baselines=0.0, target=3,
                           feature_mask=torch.from_numpy(cells)[None, None],
                           n_samples=args.samples, perturbations_per_eval=len(block))

    runs = {"forward": forwards, "captum": captum,
            "onnxplain": partial(explainer.explain, x, "occlusion", target=3,
                                 window=args.window, stride=args.window),
            "captum_shap": captum_shap,
            "onnxplain_shap": partial(explainer.explain, x, "kernel_shap", target=3,
                                      features="grid", cell=56, n_samples=args.samples)}
    times = interleaved_times(runs, args.repeats)
    print(f"ResNet-18 224x224, {torch.get_num_threads()} torch threads: occlusion window "
          f"{args.window} ({copies} copies), KernelSHAP 16 cells x {args.samples} samples")
    for name, values in times.items():
        print(f"  {name:15s} {statistics.median(values):7.3f} s")
    print(f"  occlusion   onnxplain / Captum  "
          f"{median_ratio(times['onnxplain'], times['captum']):.2f}")
    print(f"  occlusion   onnxplain / forward "
          f"{median_ratio(times['onnxplain'], times['forward']):.2f}")
    print(f"  KernelSHAP  onnxplain / Captum  "
          f"{median_ratio(times['onnxplain_shap'], times['captum_shap']):.2f}")


if __name__ == "__main__":
    main()
