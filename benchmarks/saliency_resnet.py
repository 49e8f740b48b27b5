"""Saliency on the model-zoo ResNet-18 (224x224): onnxplain against a plain ONNX Runtime forward
and against Captum's Saliency on the torch original, all in this one process.

    python benchmarks/saliency_resnet.py [--batches 1 32] [--repeats 5] [--provider cpu]

Prints, per batch size, the median wall time of:
  forward     the original model in ONNX Runtime (same provider and options)
  gradient    one run of onnxplain's rewritten model (outputs + input gradient)
  explain     Explainer.explain(...), i.e. the gradient run plus input checks and bookkeeping
  captum      captum.attr.Saliency on the torch model
and the ratios gradient/forward (target <= 2.5), explain/forward and captum/explain. The
four are run in turn within each repeat and each ratio is the median of the per-repeat
ratios, so a machine that speeds up or slows down during the run does not skew it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import interleaved_times, median_ratio  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.runtime.session import Session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--no-captum", action="store_true")
    args = parser.parse_args()

    path = model_zoo.model_path("resnet18")
    explainer = onnxplain.Explainer(path, providers=args.provider, progress=False)
    forward = Session(explainer.model.proto, explainer.providers)
    program, gradient_session = explainer.engine.program((explainer.sources[0].tensor,))
    torch_model = None if args.no_captum else model_zoo.load_torch("resnet18")
    print(f"onnxplain {onnxplain.__version__}, provider {forward.providers[0]}, "
          f"median of {args.repeats} runs")
    header = f"{'batch':>5} {'forward':>9} {'gradient':>9} {'explain':>9} {'captum':>9}" \
             f" {'grad/fwd':>9} {'expl/fwd':>9} {'captum/expl':>12}"
    print(header)
    rng = np.random.default_rng(0)
    for batch in args.batches:
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        target = np.full(batch, 3, dtype=np.int64)
        feeds = {"pixel_values": x}
        grad_feeds = {**feeds, program.target_input: target}
        runs = {"forward": partial(forward.run, None, feeds),
                "gradient": partial(gradient_session.run, None, grad_feeds),
                "explain": partial(explainer.explain, x, target=3)}
        if torch_model is not None:
            runs["captum"] = partial(captum_saliency, torch_model, x, target)
        t = interleaved_times(runs, args.repeats)
        median = {name: statistics.median(values) for name, values in t.items()}
        captum = median.get("captum", float("nan"))
        captum_ratio = median_ratio(t["captum"], t["explain"]) if "captum" in t else captum
        print(f"{batch:>5} {median['forward']:>9.4f} {median['gradient']:>9.4f} "
              f"{median['explain']:>9.4f} {captum:>9.4f} "
              f"{median_ratio(t['gradient'], t['forward']):>9.2f} "
              f"{median_ratio(t['explain'], t['forward']):>9.2f} {captum_ratio:>12.2f}")


def captum_saliency(model, x: np.ndarray, target: np.ndarray) -> np.ndarray:
    import torch
    from captum.attr import Saliency

    inputs = torch.from_numpy(x).requires_grad_(True)
    return Saliency(model).attribute(inputs, target=torch.from_numpy(target)).numpy()


if __name__ == "__main__":
    main()
