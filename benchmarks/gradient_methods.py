"""Integrated Gradients, SmoothGrad and Grad-CAM: onnxplain against Captum on the torch
original, and against ONNX Runtime forward time, on the model-zoo ResNet-18 (224x224, CPU),
in one process with the same thread count.

    python benchmarks/gradient_methods.py [--repeats 3] [--skip-memory] [--skip-accuracy]

Prints:
  * IG (32 and 50 steps, batch 1): onnxplain / Captum (target <= 0.5) and onnxplain / the
    ONNX Runtime forward of the same total batch (target <= 2.5);
  * SmoothGrad (25 samples) and Grad-CAM: onnxplain / Captum (target <= 0.6);
  * accuracy per second: IG's completeness error against time for n_steps 8..128 with the
    gausslegendre and riemann_trapezoid rules, for onnxplain and Captum;
  * the peak memory of IG with 50 and 500 steps under the default memory budget, each in a
    fresh process (it must not grow with n_steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import interleaved_times, median_ratio, peak_rss  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.runtime.session import Session  # noqa: E402

TARGET = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--memory-probe", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(_memory_probe(args.memory_probe)))
        return
    import torch

    torch.manual_seed(0)
    path = model_zoo.model_path("resnet18")
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    forward = Session(explainer.model.proto, explainer.providers)
    module = model_zoo.load_torch("resnet18")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    print(f"onnxplain {onnxplain.__version__}, torch threads {torch.get_num_threads()}, "
          f"provider {forward.providers[0]}, medians of {args.repeats} runs after a warm-up")
    _integrated_gradients(explainer, forward, module, x, args.repeats)
    _smoothgrad_and_grad_cam(explainer, module, x, args.repeats)
    if not args.skip_accuracy:
        _accuracy_per_second(explainer, module, x)
    if not args.skip_memory:
        _peak_memory()


def _integrated_gradients(explainer, forward, module, x, repeats: int) -> None:
    import torch
    from captum.attr import IntegratedGradients

    print("\nIntegrated Gradients, batch 1")
    print(f"{'steps':>5} {'onnxplain':>10} {'captum':>10} {'forward':>10} "
          f"{'ours/captum':>12} {'ours/forward':>13}")
    inputs, target = torch.from_numpy(x), torch.tensor([TARGET])
    for steps in (32, 50):
        folded = {"pixel_values": np.repeat(x, steps, axis=0)}
        runs = {
            "ours": partial(explainer.explain, x, method="integrated_gradients", target=TARGET,
                            n_steps=steps, delta_tolerance=1e9),
            "captum": partial(IntegratedGradients(module).attribute, inputs, target=target,
                              n_steps=steps, internal_batch_size=steps),
            "forward": partial(forward.run, None, folded),
        }
        t = interleaved_times(runs, repeats)
        median = {k: statistics.median(v) for k, v in t.items()}
        print(f"{steps:>5} {median['ours']:>10.3f} {median['captum']:>10.3f} "
              f"{median['forward']:>10.3f} {median_ratio(t['ours'], t['captum']):>12.2f} "
              f"{median_ratio(t['ours'], t['forward']):>13.2f}")


def _smoothgrad_and_grad_cam(explainer, module, x, repeats: int) -> None:
    import torch
    from captum.attr import LayerGradCam, NoiseTunnel, Saliency

    inputs, target = torch.from_numpy(x), torch.tensor([TARGET])
    layer = module.model.resnet.encoder.stages[-1]
    sigma = 0.15 * float(x.max() - x.min())
    runs = {
        "smoothgrad": partial(explainer.explain, x, method="smoothgrad", target=TARGET,
                              n_samples=25),
        "captum_smoothgrad": partial(NoiseTunnel(Saliency(module)).attribute, inputs,
                                     nt_type="smoothgrad", nt_samples=25, stdevs=sigma,
                                     target=target),
        "grad_cam": partial(explainer.explain, x, method="grad_cam", target=TARGET),
        "captum_grad_cam": partial(LayerGradCam(module, layer).attribute, inputs,
                                   target=target, relu_attributions=True),
    }
    t = interleaved_times(runs, repeats)
    print(f"\n{'method':>12} {'onnxplain':>10} {'captum':>10} {'ours/captum':>12}")
    for name in ("smoothgrad", "grad_cam"):
        print(f"{name:>12} {statistics.median(t[name]):>10.3f} "
              f"{statistics.median(t['captum_' + name]):>10.3f} "
              f"{median_ratio(t[name], t['captum_' + name]):>12.2f}")


def _accuracy_per_second(explainer, module, x) -> None:
    """Completeness error |sum(IG) - (S(x) - S(0))| / |S(x) - S(0)| against wall time."""
    import torch
    from captum.attr import IntegratedGradients

    inputs, target = torch.from_numpy(x), torch.tensor([TARGET])
    ig = IntegratedGradients(module)
    print("\nAccuracy per second: completeness error (relative) and seconds, batch 1")
    print(f"{'rule':>18} {'steps':>5} {'ours err':>9} {'ours s':>7} {'captum err':>11} "
          f"{'captum s':>9}")
    with torch.no_grad():
        scores = module(torch.cat([inputs, torch.zeros_like(inputs)]))[:, TARGET].numpy()
    difference = float(scores[0] - scores[1])
    for rule in ("gausslegendre", "riemann_trapezoid"):
        for steps in (8, 16, 32, 64, 128):
            start = time.perf_counter()
            ours = explainer.explain(x, method="integrated_gradients", target=TARGET,
                                     n_steps=steps, rule=rule, delta_tolerance=1e9)
            ours_time = time.perf_counter() - start
            ours_error = abs(float(ours.extras["convergence_delta"][0])) / abs(difference)
            start = time.perf_counter()
            theirs, delta = ig.attribute(inputs, target=target, n_steps=steps, method=rule,
                                         internal_batch_size=32,
                                         return_convergence_delta=True)
            theirs_time = time.perf_counter() - start
            theirs_error = abs(float(delta[0])) / abs(difference)
            print(f"{rule:>18} {steps:>5} {ours_error:>9.4f} {ours_time:>7.2f} "
                  f"{theirs_error:>11.4f} {theirs_time:>9.2f}")


def _peak_memory() -> None:
    print("\nPeak memory of Integrated Gradients (fresh process each, default budget)")
    for steps in (50, 500):
        done = subprocess.run([sys.executable, __file__, "--memory-probe", str(steps)],
                              capture_output=True, text=True, check=True)
        report = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  n_steps={steps:>3}: peak RSS {report['peak_mb']:.0f} MB "
              f"(after loading {report['loaded_mb']:.0f} MB), {report['seconds']:.1f} s")


def _peak_rss_mb() -> float:
    return peak_rss() / (1 << 20)


def _memory_probe(steps: int) -> dict:
    explainer = onnxplain.Explainer(model_zoo.model_path("resnet18"), providers="cpu",
                                     progress=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    explainer.explain(x, target=TARGET)  # sessions built, weights loaded
    loaded = _peak_rss_mb()
    start = time.perf_counter()
    explainer.explain(x, method="integrated_gradients", target=TARGET, n_steps=steps,
                      delta_tolerance=1e9)
    seconds = time.perf_counter() - start
    return {"steps": steps, "loaded_mb": loaded, "peak_mb": _peak_rss_mb(),
            "seconds": seconds}


if __name__ == "__main__":
    main()
