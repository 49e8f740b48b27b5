"""LSTM, GRU and RNN saliency against the ONNX Runtime forward of the same model, in one
process (CPU): a 2-layer bidirectional network over float features [batch, sequence, F],
exported from torch (legacy exporter, opset 17), batch and sequence symbolic.

    python benchmarks/recurrent.py [--repeats 5] [--sequence 128] [--batch 8] [--hidden 128]

Prints the machine and its load, then per cell: forward and explain(saliency) times (medians
after a warm-up), the median ratio saliency / forward (issue 17 target for the LSTM at
sequence 128, batch 8: <= 3), and the gradient program alone against the forward on one
thread, in CPU time (steady under other load). Wall ratios mean little while the load
average exceeds the cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import interleaved_times, machine, median_ratio  # noqa: E402

import onnxplain  # noqa: E402
from onnxplain.runtime.session import Session  # noqa: E402

FEATURES = 64


def export(cell: str, hidden: int, path: Path) -> None:
    import torch
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = getattr(nn, cell)(FEATURES, hidden, num_layers=2, bidirectional=True,
                                         batch_first=True)
            self.head = nn.Linear(2 * hidden, 10)

        def forward(self, features):
            states, _ = self.rnn(features)
            return self.head(states[:, -1])

    torch.manual_seed(0)
    example = torch.randn(2, 5, FEATURES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Classifier().eval(), (example,), str(path),
                          input_names=["features"], output_names=["logits"],
                          dynamic_axes={"features": {0: "batch", 1: "sequence"}},
                          opset_version=17, dynamo=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    print(machine())
    print("load average (1, 5, 15 min): " + " ".join(f"{v:.1f}" for v in os.getloadavg()))
    print(f"2-layer bidirectional, features {FEATURES}, hidden {args.hidden}, sequence "
          f"{args.sequence}, batch {args.batch}; medians of {args.repeats} runs")
    print(f"{'cell':>5} {'forward ms':>11} {'saliency ms':>12} {'saliency/forward':>17} "
          f"{'program/forward, 1 thread':>26}")
    x = np.random.default_rng(0).standard_normal(
        (args.batch, args.sequence, FEATURES)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        for cell in ("LSTM", "GRU", "RNN"):
            path = Path(folder) / f"{cell}.onnx"
            export(cell, args.hidden, path)
            ms, ratios = _explain_times(path, x, args.repeats)
            alone = _program_ratio(path, x, args.repeats)
            print(f"{cell:>5} {ms['forward']:>11.2f} {ms['saliency']:>12.2f} "
                  f"{ratios['saliency']:>17.2f} {alone:>26.2f}")


def _explain_times(path: Path, x: np.ndarray, repeats: int) -> tuple[dict, dict]:
    """explain() wall times (objective, program run, post-processing) and the forward's; and
    the median ratio of explain() to the forward."""
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    forward = Session(explainer.model.proto, explainer.providers)
    target = np.arange(len(x)) % 10
    times = interleaved_times({
        "forward": lambda: forward.run(None, {"features": x}),
        "saliency": lambda: explainer.explain({"features": x}, target=target)}, repeats)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    return ms, {"saliency": median_ratio(times["saliency"], times["forward"])}


def _program_ratio(path: Path, x: np.ndarray, repeats: int) -> float:
    """The gradient program alone against the forward, both on one ONNX Runtime thread and
    timed in process CPU time (on a shared machine the thread pools' contention and other
    load dominate wall times otherwise)."""
    import onnxruntime as ort

    from onnxplain.autodiff import differentiate

    model = onnxplain.Explainer(path, providers="cpu", progress=False).model.proto
    program = differentiate(model, ["features"], outputs=["logits"])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    cpu = ["CPUExecutionProvider"]
    gradient = ort.InferenceSession(program.model.SerializeToString(), options, providers=cpu)
    forward = ort.InferenceSession(model.SerializeToString(), options, providers=cpu)
    seed = np.zeros((len(x), 10), np.float32)
    seed[:, 1] = 1.0
    feeds = {"features": x, program.seeds["logits"]: seed}
    times = interleaved_times({
        "forward": lambda: forward.run(None, {"features": x}),
        "program": lambda: gradient.run([program.grads["features"]], feeds)}, repeats,
        clock=time.process_time)
    return median_ratio(times["program"], times["forward"])


if __name__ == "__main__":
    main()
