"""Forward of a model that ONNX Runtime's transformer optimizer fused, through onnxplain
(its com.microsoft ops canonicalised into standard ones on load) against ONNX Runtime running
the optimised file directly, in one process.

    python benchmarks/optimized_forward.py [--model bert_small_ort] [--rows 8]
        [--length 128] [--repeats 20]

Prints the median times and the median of per-repeat ratios; target: onnxplain's forward
within 1.3x of ONNX Runtime's on the optimised file. ONNX Runtime's own graph optimizations
run on both sessions, and re-fuse much of what the canonical form spells out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import interleaved_times, machine, median_ratio  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.runtime.session import Session  # noqa: E402

TARGET = 1.3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bert_small_ort")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    path = model_zoo.model_path(args.model)
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    names = [spec.name for spec in explainer.model.inputs]
    feeds = model_zoo.token_batch(names, args.rows, args.length)
    ours = Session(explainer.model.proto, explainer.providers)
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    times = interleaved_times({"onnxplain": partial(ours.run, None, feeds),
                               "onnxruntime": partial(theirs.run, None, feeds)},
                              args.repeats)
    ratio = median_ratio(times["onnxplain"], times["onnxruntime"])
    print(machine())
    print(f"{args.model}, batch {args.rows}, sequence {args.length}, CPU, "
          f"median of {args.repeats}:")
    for name, own in times.items():
        print(f"  {name:12s} {statistics.median(own) * 1e3:8.2f} ms")
    verdict = "met" if ratio <= TARGET else "NOT MET"
    print(f"  ratio        {ratio:8.2f} x (target <= {TARGET}: {verdict})")


if __name__ == "__main__":
    main()
