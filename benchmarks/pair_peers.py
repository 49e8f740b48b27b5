"""Blur IG, Guided IG and XRAI against PAIR's `saliency` package (saliency.core's BlurIG,
GuidedIG and XRAI, driven by the torch original's gradients as the oracle tests drive it), in
one process on the CPU, on the zoo's resnet18_64 (3x64x64) and digits CNN (1x8x8), 4 images
(target: onnxplain <= 0.7 x PAIR's time). onnxplain explains the 4 in one call; PAIR
explains one image at a time, so its time is the sum over the 4. Same options on both sides:
  blur_ig    steps S, max_sigma 50, grad_step 0.01        BlurIG, batch_size S
  guided_ig  n_steps S, fraction 0.25, max_dist 0.02      GuidedIG (one gradient a step)
  xrai       n_steps S (riemann_trapezoid: PAIR's IG),   XRAI, batch_size S, its own
             black and white baselines, full algorithm    Felzenszwalb segments
PAIR gets its batching at its fastest: the whole path in one call (BlurIG's batch weighting
is exact with even sigma spacing). Each pair's agreement (relative L2 distance of the maps)
is printed beside its ratio, so a ratio is never of different work. `--threads N` gives
torch and ONNX Runtime N intra-op threads each (default: their own, one per core); on a
loaded machine 1 each is the steadier comparison (single-image torch calls suffer most from
contended threads).

    python benchmarks/pair_peers.py [--repeats 3] [--steps 32] [--threads N]
        [--models resnet18_64,digits_cnn] [--methods blur_ig,guided_ig,xrai]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import interleaved_times, machine, median_ratio  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from tests.pair_saliency import use_numpy_shim  # noqa: E402

ROWS, GOAL = 4, 0.7
METHODS = ("blur_ig", "guided_ig", "xrai")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--models", default="resnet18_64,digits_cnn")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    use_numpy_shim()
    print(machine())
    print(f"onnxplain {onnxplain.__version__}, torch threads {torch.get_num_threads()}, "
          f"onnxruntime threads {args.threads or 'its own'}, batch {ROWS}, steps {args.steps}, "
          f"medians of {args.repeats} runs after a warm-up")
    print(f"\n{'model':>12} {'method':>10} {'onnxplain s/image':>18} {'pair s/image':>13} "
          f"{'ours/pair':>10} {'map distance':>13}")
    for name in args.models.split(","):
        peer = Peer(name, args.steps, args.threads)
        for method in args.methods.split(","):
            ours, theirs = peer.ours(method), peer.pair(method)
            times = interleaved_times({"ours": ours, "pair": theirs}, args.repeats)
            ratio = median_ratio(times["ours"], times["pair"])
            verdict = "met" if ratio <= GOAL else "NOT MET"
            print(f"{name:>12} {method:>10} {statistics.median(times['ours']) / ROWS:>18.3f} "
                  f"{statistics.median(times['pair']) / ROWS:>13.3f} {ratio:>10.2f} "
                  f"{_distance(ours(), theirs()):>13.2e}  {verdict} (<= {GOAL})")


class Peer:
    """One zoo model: its explainer, its torch original, 4 rows and their targets, and each
    method's options on both sides."""

    def __init__(self, name: str, steps: int, threads: int | None = None):
        self.explainer = onnxplain.Explainer(model_zoo.model_path(name), "cpu", progress=False,
                                             threads=threads)
        self.module = model_zoo.load_torch(name)
        self.input = self.explainer.model.inputs[0].name
        sample = model_zoo.sample(name)[self.input]
        # The zoo's resnet sample has 2 rows: the other 2 are random images alike.
        extra = np.random.default_rng(0).standard_normal((ROWS, *sample.shape[1:]))
        self.x = np.concatenate([sample, extra.astype(np.float32)])[:ROWS]
        classes = self.explainer.model.output("logits").dims[1]
        self.targets = (np.arange(ROWS) * 3 + 1) % classes
        self.steps = steps

    def ours(self, method: str):
        options = {
            "blur_ig": {"steps": self.steps, "max_sigma": 50.0, "grad_step": 0.01},
            "guided_ig": {"n_steps": self.steps, "fraction": 0.25, "max_dist": 0.02},
            "xrai": {"n_steps": self.steps, "rule": "riemann_trapezoid", "algorithm": "full"},
        }[method]

        def run() -> np.ndarray:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # few steps: the convergence warning
                result = self.explainer.explain(self.x, method, target=self.targets,
                                                **options)[self.input]
            return result[:, 0] if method == "xrai" else result

        return run

    def pair(self, method: str):
        import saliency.core as saliency

        steps = self.steps

        def blur_ig(row: int) -> np.ndarray:
            mask = saliency.BlurIG().GetMask(_hwc(self.x[row]), self._call(row, True),
                                             steps=steps, max_sigma=50.0, grad_step=0.01,
                                             batch_size=steps)
            return np.moveaxis(mask, -1, 0)

        def guided_ig(row: int) -> np.ndarray:
            return saliency.GuidedIG().GetMask(
                self.x[row], self._call(row, False), x_baseline=np.zeros_like(self.x[row]),
                x_steps=steps, fraction=0.25, max_dist=0.02)

        def xrai(row: int) -> np.ndarray:
            parameters = saliency.XRAIParameters(steps=steps, algorithm="full")
            return saliency.XRAI().GetMask(_hwc(self.x[row]), self._call(row, True),
                                           batch_size=steps, extra_parameters=parameters)

        one = {"blur_ig": blur_ig, "guided_ig": guided_ig, "xrai": xrai}[method]
        return lambda: np.stack([one(row) for row in range(ROWS)])

    def _call(self, row: int, channels_last: bool):
        """PAIR's call_model_function: d logit[target] / d image of the torch original, in
        PAIR's layout (channels last for BlurIG and XRAI; Guided IG takes the row as is)."""
        import saliency.core as saliency
        import torch

        target = int(self.targets[row])

        def call(batch, call_model_args=None, expected_keys=None):
            batch = np.asarray(batch, np.float32)
            image = torch.from_numpy(np.ascontiguousarray(
                np.moveaxis(batch, -1, 1) if channels_last else batch)).requires_grad_(True)
            grad = torch.autograd.grad(self.module(image)[:, target].sum(), image)[0].numpy()
            return {saliency.INPUT_OUTPUT_GRADIENTS: np.moveaxis(grad, 1, -1)
                    if channels_last else grad}

        return call


def _hwc(row: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(row, 0, -1))


def _distance(ours, theirs) -> float:
    """Relative L2 distance of the two batches of maps."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


if __name__ == "__main__":
    main()
