"""RISE on the model-zoo ResNet-18 (224x224, one image) against plain ONNX Runtime forwards of
as many images, in this one process.

    python benchmarks/rise_speed.py [--n-masks 256] [--batch-size 32] [--repeats 5]
                                    [--provider cpu]

Prints the median wall time of:
  forward   the original model in ONNX Runtime on n_masks random images, in batches of
            --batch-size (the same chunks RISE runs)
  rise      Explainer.explain(x, "rise", n_masks=...), i.e. the clean forward, the masks made
            chunk by chunk, the masked forwards and the weighted sum of the masks
and the ratio rise/forward (target <= 1.15): what RISE costs beyond the forwards it needs.
The two run in turn within each repeat and the ratio is the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import interleaved_times, median_ratio  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
import onnxplain.methods.rise  # noqa: E402,F401 - registers the method
from onnxplain.runtime.session import Session  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-masks", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--provider", default="cpu")
    args = parser.parse_args()

    path = model_zoo.model_path("resnet18")
    explainer = onnxplain.Explainer(path, providers=args.provider, progress=False)
    forward = Session(explainer.model.proto, explainer.providers)
    name = explainer.model.inputs[0].name
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    chunks = [rng.standard_normal((min(args.batch_size, args.n_masks - start), 3, 224, 224))
              .astype(np.float32) for start in range(0, args.n_masks, args.batch_size)]

    def plain() -> None:
        for chunk in chunks:
            forward.run(None, {name: chunk})

    def rise() -> None:
        explainer.explain(x, "rise", n_masks=args.n_masks, batch_size=args.batch_size)

    print(f"onnxplain {onnxplain.__version__}, provider {forward.providers[0]}, "
          f"{args.n_masks} masks in batches of {args.batch_size}, median of {args.repeats}")
    t = interleaved_times({"forward": plain, "rise": rise}, args.repeats)
    median = {key: statistics.median(values) for key, values in t.items()}
    print(f"{'forward':>9} {'rise':>9} {'rise/fwd':>9}")
    print(f"{median['forward']:>9.3f} {median['rise']:>9.3f} "
          f"{median_ratio(t['rise'], t['forward']):>9.3f}")


if __name__ == "__main__":
    main()
