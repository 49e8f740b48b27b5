"""PAIR's `saliency` package under numpy 2: shared by the PAIR oracle tests
(tests/methods/test_guided_ig.py) and benchmarks/pair_peers.py."""

from __future__ import annotations

import numpy as np


class NumpyForPair:
    """numpy for PAIR's guided_ig module: numpy 2 dropped np.quantile's `interpolation`
    keyword, which PAIR passes (its `method` is the same choice)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, interpolation):
        return np.quantile(a, q, method=interpolation)


def use_numpy_shim() -> None:
    """Give saliency.core.guided_ig the shim (PAIR's other methods run on numpy 2 as they
    are)."""
    import saliency.core.guided_ig as module

    module.np = NumpyForPair()
