"""Every model the demo, tests and benchmarks use, built offline and cached outside git.

    python -m model_zoo list
    python -m model_zoo build NAME [--force]

A built model lives in `cache_dir()/NAME/`: `model.onnx`, `state.pt` (the torch weights, so
tests can rebuild the torch original as an oracle), `sample.npz` (example inputs) and
`meta.json` (a fingerprint of the builder code; a change rebuilds the model).
"""

from __future__ import annotations

from .registry import ZOO, ZooModel, build, cache_dir, load_torch, model_path, sample
from .token_batches import token_batch

__all__ = ["ZOO", "ZooModel", "build", "cache_dir", "load_torch", "model_path", "sample",
           "token_batch"]
