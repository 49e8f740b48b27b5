"""Transformer explanations against the model's own forward time, on the model-zoo BERT
configuration (batch 8, sequence 128, CPU), in one process.

    python benchmarks/transformer_methods.py [--model sentiment_bert] [--repeats 5]
        [--methods transformer_attribution,rollout]

Prints, per method, the median of per-repeat ratios of Explainer.explain time to the time of
one ONNX Runtime forward of the original model on the same batch, each method timed against
the forward with a fresh Explainer (the sessions of the methods timed before it are gone).
Targets: rollout <= 1.3; generic_attention and transformer_attribution <= 4.0; attn_lrp <=
3.0 (also on a Llama-style decoder: --model llama_tiny_opset23).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import methods_against_forward, print_ratios  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.runtime.session import Session  # noqa: E402

METHODS = {"raw_attention": None, "rollout": 1.3, "attgrad": None, "generic_attention": 4.0,
           "transformer_attribution": 4.0, "partial_lrp": None, "cat": None, "attncat": None,
           "attn_lrp": 3.0}


def batch(model: onnxplain.Explainer, rows: int, length: int) -> dict[str, np.ndarray]:
    """Random token ids with the first token a class token, every row a different length."""
    return model_zoo.token_batch([spec.name for spec in model.model.inputs], rows, length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sentiment_bert")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated methods to time (default: all)")
    args = parser.parse_args()
    methods = {name: METHODS[name] for name in args.methods.split(",") if name}
    path = model_zoo.model_path(args.model)
    model = onnxplain.Explainer(path, providers="cpu", progress=False)
    feeds = batch(model, args.rows, args.length)
    forward = Session(model.model.proto, model.providers)
    times, base = methods_against_forward(path, feeds, partial(forward.run, None, feeds),
                                          list(methods), args.repeats)
    print(f"{args.model}, batch {args.rows}, sequence {args.length}, CPU: forward "
          f"{base * 1e3:.1f} ms (median of {args.repeats} per method)")
    print_ratios(times, methods)


if __name__ == "__main__":
    main()
