"""Attention methods on a Llama-style decoder with a KV cache, against the model's own
forward time, CPU, in one process.

    python benchmarks/decoder_attention.py [--hidden 512] [--layers 4] [--past 448]
        [--new 64] [--rows 4] [--repeats 7]

The model is model_zoo.decoders' llama_tiny_kv architecture at a larger size (4 query heads
over 2 key/value heads), exported by the zoo's exporter (dynamo, opset 18) to a temporary
folder; every row has `past` cached positions and `new` new tokens (at hidden 256 with 96
cached tokens the forward takes 3 to 4 ms and Python's fixed cost per call dominates).
Prints, per method, the median of per-repeat ratios of Explainer.explain time to one ONNX
Runtime forward of the plain model on the same inputs. Targets: rollout <= 1.3, attn_lrp <= 3.0,
transformer_attribution <= 4.0. `--whole-tail` also times Transformer Attribution with its
backward passes over every position after the last attention layer (no explained-row copy,
export/explained_row.py), alternately with the default in the same process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import onnxruntime as ort  # noqa: E402
from _timing import (  # noqa: E402
    interleaved_times,
    machine,
    median_ratio,
    methods_against_forward,
    print_ratios,
)

import onnxplain  # noqa: E402
import onnxplain.export.explained_row as row_copy  # noqa: E402
from model_zoo.decoders import export_dynamo_with_past18, make_llama_tiny_kv  # noqa: E402

METHODS = {"rollout": 1.3, "transformer_attribution": 4.0, "raw_attention": None,
           "generic_attention": None, "attn_lrp": 3.0}


def export(folder: Path, args) -> tuple[Path, dict]:
    module, example = make_llama_tiny_kv(hidden=args.hidden, layers=args.layers,
                                         past=args.past, new=args.new, rows=args.rows)
    path = folder / "llama_kv.onnx"
    export_dynamo_with_past18(module, example, path)
    return path, {name: value.numpy() for name, value in example.items()}


def whole_tail(path: Path, feeds: dict, forward, repeats: int) -> dict[str, float]:
    """Transformer Attribution's ratios to the forward with and without the explained-row
    copy, timed alternately."""
    copied, whole = (onnxplain.Explainer(path, providers="cpu", progress=False)
                     for _ in range(2))
    pre = row_copy.explained_row

    def run(explainer, make) -> None:
        row_copy.explained_row = make
        try:
            explainer.explain(feeds, "transformer_attribution")
        finally:
            row_copy.explained_row = pre

    times = interleaved_times({"forward": forward, "copy": partial(run, copied, pre),
                               "whole": partial(run, whole, lambda *args: None)}, repeats)
    return {name: median_ratio(times[name], times["forward"]) for name in ("copy", "whole")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--past", type=int, default=448)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--whole-tail", action="store_true")
    args = parser.parse_args()
    methods = {name: METHODS[name] for name in args.methods.split(",") if name}
    with tempfile.TemporaryDirectory() as folder:
        path, feeds = export(Path(folder), args)
        forward = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        times, base = methods_against_forward(path, feeds,
                                              partial(forward.run, None, feeds),
                                              list(methods), args.repeats)
        tails = (whole_tail(path, feeds, partial(forward.run, None, feeds), args.repeats)
                 if args.whole_tail else {})
    print(machine())
    print(f"llama KV decoder (hidden {args.hidden}, {args.layers} layers, 4 heads over 2 "
          f"key/value heads), batch {args.rows}, {args.past} cached + {args.new} new "
          f"tokens, CPU: forward {base * 1e3:.1f} ms (median of {args.repeats} per method)")
    print_ratios(times, methods)
    for name, ratio in tails.items():  # alternately in one process
        print(f"  transformer_attribution, {name + ' tail':10s}  {ratio:5.2f} x forward")


if __name__ == "__main__":
    main()
