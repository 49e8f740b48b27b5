"""Saliency gradient / forward ratios on the zoo ResNet-18 (224x224) in float32 and in the
forms users deploy: `quantize_static` QDQ and QOperator, and float16 (onnxconverter-common,
keep_io_types), each made here from the float32 file into a temporary folder.

    python benchmarks/saliency_precision.py [--batches 1 8] [--repeats 7]
        [--forms float32 qdq qoperator fp16]

Per form and batch size, the median wall time of:
  file       ONNX Runtime running the converted file as given (what a user runs)
  forward    onnxplain's normalised model (quantized ops canonicalised to DQ -> float op -> Q)
  gradient   one run of onnxplain's saliency program (outputs + input gradient)
and the ratios gradient/file and gradient/forward (medians of per-repeat ratios). The forms
are timed one after another, each form's three runs interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import interleaved_times, machine, median_ratio  # noqa: E402

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402
from onnxplain.runtime.session import Session  # noqa: E402

INPUT = "pixel_values"
CALIBRATION_IMAGES = 4


def convert(form: str, source: Path, folder: Path) -> Path:
    """`source` in `form`, written under `folder`."""
    if form == "float32":
        return source
    target = folder / f"{form}.onnx"
    if form == "fp16":
        from onnxconverter_common import float16

        half = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(half, str(target))
        return target
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Random(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches = iter({INPUT: rng.standard_normal((1, 3, 224, 224), np.float32)}
                                for _ in range(CALIBRATION_IMAGES))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The recommended preprocessing: it folds the export's Identity nodes in front of the
    # shared Conv biases, which QOperator quantization needs as initializers.
    prepared = folder / "prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quant_format = QuantFormat.QDQ if form == "qdq" else QuantFormat.QOperator
    quantize_static(str(prepared), str(target), Random(), quant_format=quant_format,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=form == "qdq")
    return target


def time_form(form: str, path: Path, batches: list[int], repeats: int) -> None:
    import onnxruntime as ort

    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    forward = Session(explainer.model.proto, explainer.providers)
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    program, gradient = explainer.engine.program((explainer.sources[0].tensor,))
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        feeds = {INPUT: x}
        grad_feeds = {**feeds, program.target_input: np.full(batch, 3, dtype=np.int64)}
        t = interleaved_times({"file": partial(original.run, None, feeds),
                               "forward": partial(forward.run, None, feeds),
                               "gradient": partial(gradient.run, None, grad_feeds)}, repeats)
        median = {name: statistics.median(values) * 1e3 for name, values in t.items()}
        print(f"{form:>9} {batch:>5} {median['file']:>9.1f} {median['forward']:>9.1f} "
              f"{median['gradient']:>9.1f} {median_ratio(t['gradient'], t['file']):>9.2f} "
              f"{median_ratio(t['gradient'], t['forward']):>9.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--forms", nargs="+", default=["float32", "qdq", "qoperator", "fp16"],
                        choices=["float32", "qdq", "qoperator", "fp16"])
    args = parser.parse_args()
    source = model_zoo.model_path("resnet18")
    print(machine())
    print(f"ResNet-18 224x224, CPU, median of {args.repeats} runs (ms)")
    print(f"{'form':>9} {'batch':>5} {'file':>9} {'forward':>9} {'gradient':>9} "
          f"{'grad/file':>9} {'grad/fwd':>9}", flush=True)
    with tempfile.TemporaryDirectory(prefix="onnxplain-bench-") as folder:
        for form in args.forms:
            time_form(form, convert(form, source, Path(folder)), args.batches, args.repeats)


if __name__ == "__main__":
    main()
