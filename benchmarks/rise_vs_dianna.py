"""RISE in onnxplain against DIANNA's RISE, on the same .onnx file (the model-zoo ResNet-18 at
224x224, CPU), same number of masks, grid and batch size. DIANNA installs its own
onnxruntime, so it runs from a separate environment, in a subprocess:

    python -m venv /tmp/dianna_env && /tmp/dianna_env/bin/pip install dianna
    python benchmarks/rise_vs_dianna.py [--dianna-python /tmp/dianna_env/bin/python]
        [--n-masks 256] [--batch-size 32] [--repeats 3]

Prints the median wall time of each and onnxplain time / DIANNA time (target <= 0.6).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import model_zoo  # noqa: E402
import onnxplain  # noqa: E402

DIANNA_RUN = """
import json, sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
import dianna
path, image, n_masks, grid, batch, repeats = sys.argv[1:7]
x = np.load(image)
times = []
for _ in range(int(repeats) + 1):  # the first run warms up
    start = time.perf_counter()
    dianna.explain_image(path, x, method="RISE", labels=[3], n_masks=int(n_masks),
                         feature_res=int(grid), p_keep=0.5, batch_size=int(batch),
                         axis_labels=("channels", "height", "width"))
    times.append(time.perf_counter() - start)
print(json.dumps(times[1:]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dianna-python", default="/tmp/dianna_env/bin/python")
    parser.add_argument("--n-masks", type=int, default=256)
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.dianna_python).exists():
        sys.exit(f"no DIANNA environment at {args.dianna_python} (see this script's help)")
    path = model_zoo.model_path("resnet18")
    x = np.random.default_rng(0).random((3, 224, 224)).astype(np.float32)
    explainer = onnxplain.Explainer(path, providers="cpu", progress=False)
    ours = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        explainer.explain(x[None], "rise", target=3, n_masks=args.n_masks, grid=args.grid,
                          keep=0.5, batch_size=args.batch_size)
        ours.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "x.npy"
        np.save(image, x)
        out = subprocess.run([args.dianna_python, "-c", DIANNA_RUN, str(path), str(image),
                              str(args.n_masks), str(args.grid), str(args.batch_size),
                              str(args.repeats)], capture_output=True, text=True, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    mine, dianna = statistics.median(ours[1:]), statistics.median(theirs)
    print(f"RISE, ResNet-18 224x224, {args.n_masks} masks, grid {args.grid}, batch "
          f"{args.batch_size}, CPU, median of {args.repeats}")
    print(f"  onnxplain {mine:7.3f} s")
    print(f"  DIANNA    {dianna:7.3f} s")
    print(f"  onnxplain / DIANNA {mine / dianna:.2f} (target <= 0.6)")


if __name__ == "__main__":
    main()
