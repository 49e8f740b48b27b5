"""Issue 21's new methods against their Captum counterparts, in one process with the same
thread count, on the zoo ResNet-18 at 64x64 (the resnet18 weights; the torch original for
Captum), batch 4, CPU (target: onnxplain <= 0.7 x Captum's time):
  gradient_shap       n_samples 25, stdevs 0.1, 8 background rows   GradientShap
  layer_conductance   the last stage's output, n_steps 32          LayerConductance
  neuron_conductance  one unit of it, n_steps 32                   NeuronConductance
  feature_ablation    an 8x8 grid of cells (64 features)           FeatureAblation
  shapley_sampling    the same 64 features, 5 permutations         ShapleyValueSampling
Captum gets its batching options at their fastest (perturbations_per_eval 64,
internal_batch_size the whole path). Each pair's agreement (relative L2 distance of the
maps) is printed beside its ratio, so a ratio is never of different work.

    python benchmarks/captum_peers.py [--repeats 3] [--methods gradient_shap ...]
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

from _timing import interleaved_times, machine, median_ratio  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402

ROWS, TARGET, CELL = 4, 3, 8
METHODS = ["gradient_shap", "layer_conductance", "neuron_conductance", "feature_ablation",
           "shapley_sampling"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS,
                        help="the rows to time (default: all)")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    explainer = onnxplain.Explainer(model_zoo.model_path("resnet18_64"), "cpu", progress=False)
    module = model_zoo.load_torch("resnet18_64")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, 3, 64, 64)).astype(np.float32)
    background = rng.standard_normal((8, 3, 64, 64)).astype(np.float32)
    print(machine())
    print(f"onnxplain {onnxplain.__version__}, torch threads {torch.get_num_threads()}, "
          f"resnet18_64, batch {ROWS}, medians of {args.repeats} runs after a warm-up")
    layer = module.model.resnet.encoder.stages[-1]
    tensor = explainer.explain(x[:1], "grad_cam", target=TARGET).extras["layer"]
    mask = np.arange(64).reshape(8, 8).repeat(CELL, 0).repeat(CELL, 1)
    cases = _cases(explainer, module, layer, tensor, x, background, mask)
    print(f"\n{'method':>20} {'onnxplain s':>12} {'captum s':>10} {'ours/captum':>12} "
          f"{'map distance':>13}")
    for name, (ours, theirs, compare) in cases.items():
        if name not in args.methods:
            continue
        times = interleaved_times({"ours": ours, "captum": theirs}, args.repeats)
        print(f"{name:>20} {statistics.median(times['ours']):>12.3f} "
              f"{statistics.median(times['captum']):>10.3f} "
              f"{median_ratio(times['ours'], times['captum']):>12.2f} "
              f"{compare(ours(), theirs()):>13.2e}")


def _cases(explainer, module, layer, tensor, x, background, mask) -> dict:
    import torch
    from captum.attr import (
        FeatureAblation,
        GradientShap,
        LayerConductance,
        NeuronConductance,
        ShapleyValueSampling,
    )

    inputs, target = torch.from_numpy(x), torch.tensor([TARGET] * ROWS)
    mask_t = torch.from_numpy(mask)[None, None].expand(1, 3, 64, 64).contiguous()
    image = explainer.model.inputs[0].name

    def ours(method, key=image, **options):
        return lambda: explainer.explain(x, method, target=TARGET, **options)[key]

    def layer_map(result) -> np.ndarray:
        return result.tensors[tensor]

    def captum(run):
        return lambda: run().detach().numpy()

    unit = (0, 0, 0)
    flat = int(np.ravel_multi_index(unit, layer_shape(explainer, tensor, x)))
    return {
        "gradient_shap": (
            ours("gradient_shap", n_samples=25, stdevs=0.1, baselines=background),
            captum(partial(GradientShap(module).attribute, inputs,
                           torch.from_numpy(background), n_samples=25, stdevs=0.1,
                           target=target)), _mean_distance),
        "layer_conductance": (
            lambda: layer_map(explainer.explain(x, "layer_conductance", target=TARGET,
                                                layer=tensor, n_steps=32, upsample="none",
                                                delta_tolerance=1e9)),
            captum(partial(LayerConductance(module, layer).attribute, inputs, target=target,
                           n_steps=32, method="gausslegendre",
                           internal_batch_size=32 * ROWS)), _distance),
        "neuron_conductance": (
            ours("neuron_conductance", layer=tensor, neuron=flat, n_steps=32),
            captum(partial(NeuronConductance(module, layer).attribute, inputs, unit,
                           target=target, n_steps=32, method="gausslegendre",
                           internal_batch_size=32 * ROWS)), _distance),
        "feature_ablation": (
            ours("feature_ablation", features="grid", cell=CELL),
            captum(partial(FeatureAblation(module).attribute, inputs, target=target,
                           feature_mask=mask_t, perturbations_per_eval=64)), _distance),
        "shapley_sampling": (
            ours("shapley_sampling", features="grid", cell=CELL, n_samples=5),
            captum(partial(ShapleyValueSampling(module).attribute, inputs, target=target,
                           feature_mask=mask_t, n_samples=5, perturbations_per_eval=64)),
            _mean_distance),
    }


def layer_shape(explainer, tensor: str, x) -> tuple[int, ...]:
    result = explainer.explain(x[:1], "layer_conductance", target=TARGET, layer=tensor,
                               n_steps=2, upsample="none", delta_tolerance=1e9)
    return result.tensors[tensor].shape[1:]


def _distance(ours, theirs) -> float:
    """Relative L2 distance: the same computation should agree to float rounding."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def _mean_distance(ours, theirs) -> float:
    """For sampled methods (other draws): the distance of the per-row sums, which both
    estimate alike."""
    sums = [np.asarray(a, np.float64).reshape(ROWS, -1).sum(1) for a in (ours, theirs)]
    return _distance(*sums)


if __name__ == "__main__":
    main()
