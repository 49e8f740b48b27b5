"""One-shot command-line latency: `onnxplain explain` on the model-zoo ResNet-18 (224x224, one
image, CPU) as a fresh process, against a fresh process that only loads ONNX Runtime, opens
a session on the same file and runs one forward (the least any ONNX Runtime tool pays).

    python benchmarks/cli_latency.py [--methods saliency integrated_gradients] [--repeats 5]

Prints, per method, the median wall time of both processes and their ratio: what a user
waits for one explanation from the shell, most of it setup (loading, shape inference,
building the gradient program and its session) rather than computing. The processes run
in turn within each repeat and the ratio is the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import median_ratio  # noqa: E402

import model_zoo  # noqa: E402

BARE = """
import sys, numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: np.load(sys.argv[2])})
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["saliency", "integrated_gradients"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = str(model_zoo.model_path("resnet18"))
    cli = str(Path(sys.executable).with_name("onnxplain"))
    with tempfile.TemporaryDirectory() as tmp:
        x = Path(tmp) / "x.npy"
        np.save(x, np.random.default_rng(0).standard_normal((1, 3, 224, 224))
                .astype(np.float32))
        commands = {"bare": [sys.executable, "-c", BARE, model, str(x)]}
        for method in args.methods:
            commands[method] = [cli, "explain", model, "-q", "-i", str(x), "-m", method,
                                "--target", "3", "--out", str(Path(tmp) / method)]
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    print(f"median of {args.repeats} fresh processes (CPU, ResNet-18 224x224, one image)")
    print(f"{'command':>22} {'seconds':>8} {'/ bare':>7}")
    for name, values in times.items():
        ratio = 1.0 if name == "bare" else median_ratio(values, times["bare"])
        print(f"{name:>22} {statistics.median(values):>8.2f} {ratio:>7.2f}")


if __name__ == "__main__":
    main()
