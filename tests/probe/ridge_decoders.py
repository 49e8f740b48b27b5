"""Decoders fitted in closed form with numpy, for tests of the probe file independent of
probe.fit, and the fields of a FittedProbe that probe_model reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxplain.probe.decoders import Decoder


@dataclass
class Fitted:  # the fields probe_model reads of a probe.fit.FittedProbe
    decoders: list
    info: dict = field(default_factory=dict)


def ridge_decoder(layer: str, target: str, acts: np.ndarray, x: np.ndarray,
                  ridge: float = 1e-2) -> Decoder:
    """x ~ a W + b in closed form, with an L2 penalty on W, on the flattened rows."""
    a = acts.reshape(len(acts), -1).astype(np.float64)
    a1 = np.hstack([a, np.ones((len(a), 1))])
    penalty = ridge * np.eye(a1.shape[1])
    penalty[-1, -1] = 0.0
    w = np.linalg.solve(a1.T @ a1 + penalty, a1.T @ x.reshape(len(x), -1)).astype(np.float32)
    return Decoder(layer, target, "linear", {"weight": w[:-1], "bias": w[-1]},
                   tuple(acts.shape[1:]), tuple(x.shape[1:]))
