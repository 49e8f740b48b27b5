"""Exported explainer models against the original model's forward, in one process, with the
same ONNX Runtime options (CPU by default):

    python benchmarks/export_speed.py [--batches 1 16] [--repeats 7] [--steps 32]

- saliency on the model-zoo ResNet-18 (224x224): exported model time / forward of the batch
  (target <= 3.0);
- integrated_gradients with `--steps` steps: exported model time / forward of steps x batch
  rows (target <= 3.0);
- rollout on the model-zoo BERT configuration (sentiment_bert, sequence 128): exported model
  time / forward of the batch (target <= 1.3).
Each ratio is the median of per-repeat ratios of interleaved runs.
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
from transformer_methods import batch as text_batch  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.exporter import export_explainer  # noqa: E402
from onnxplain.graph.model import Model  # noqa: E402
from onnxplain.runtime.session import Session, resolve_providers  # noqa: E402


def _line(label: str, times: dict, name: str, base: str, target: float) -> None:
    ratio = median_ratio(times[name], times[base])
    verdict = "met" if ratio <= target else "NOT MET"
    print(f"  {label:34s} {statistics.median(times[name]) * 1e3:9.1f} ms  forward "
          f"{statistics.median(times[base]) * 1e3:8.1f} ms  ratio {ratio:5.2f} "
          f"(target <= {target}) {verdict}")


def image_methods(batches: list[int], steps: int, repeats: int, providers) -> None:
    model = Model.load(model_zoo.model_path("resnet18"))
    forward = Session(model.proto, providers)
    saliency = Session(export_explainer(model, "saliency"), providers)
    ig = Session(export_explainer(model, "integrated_gradients", n_steps=steps), providers)
    rng = np.random.default_rng(0)
    print(f"ResNet-18 224x224, {forward.providers[0]}, median of {repeats}")
    for rows in batches:
        x = rng.standard_normal((rows, 3, 224, 224)).astype(np.float32)
        runs = {"forward": partial(forward.run, None, {"pixel_values": x}),
                "saliency": partial(saliency.run, None, {"pixel_values": x}),
                "forward_steps": partial(forward.run, None,
                                         {"pixel_values": np.concatenate([x] * steps)}),
                "ig": partial(ig.run, None, {"pixel_values": x})}
        times = interleaved_times(runs, repeats)
        print(f" batch {rows}")
        _line("saliency / forward", times, "saliency", "forward", 3.0)
        _line(f"IG {steps} steps / forward x {steps}", times, "ig", "forward_steps", 3.0)


def rollout(rows: int, length: int, repeats: int, providers) -> None:
    path = model_zoo.model_path("sentiment_bert")
    explainer = onnxplain.Explainer(path, providers=providers, progress=False)
    feeds = text_batch(explainer, rows, length)
    forward = Session(explainer.model.proto, explainer.providers)
    exported = Session(export_explainer(explainer.model, "rollout"), explainer.providers)
    times = interleaved_times({"forward": partial(forward.run, None, feeds),
                               "rollout": partial(exported.run, None, feeds)}, repeats)
    print(f"sentiment_bert, batch {rows}, sequence {length}")
    _line("rollout / forward", times, "rollout", "forward", 1.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--provider", default="cpu")
    args = parser.parse_args()
    providers = resolve_providers(args.provider)
    image_methods(args.batches, args.steps, args.repeats, providers)
    rollout(8, 128, args.repeats * 3, providers)


if __name__ == "__main__":
    main()
