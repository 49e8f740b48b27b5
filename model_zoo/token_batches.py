"""Token-id batches for the text models, as benchmarks and tests feed them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def token_batch(input_names: Iterable[str], rows: int, length: int, seed: int = 0
                ) -> dict[str, np.ndarray]:
    """Random ids after a class token (id 2), every row a different length (linearly from
    length / 2 to length), the rest padded and masked: one array per model input, recognised
    by name (`...mask...`, `...type...`, else the ids)."""
    rng = np.random.default_rng(seed)
    lengths = np.linspace(length // 2, length, rows).astype(int)
    feeds = {}
    for name in input_names:
        if "mask" in name:
            feeds[name] = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
        elif "type" in name:
            feeds[name] = np.zeros((rows, length), np.int64)
        else:
            ids = rng.integers(4, 20, (rows, length))
            ids[:, 0] = 2
            feeds[name] = ids.astype(np.int64)
    return feeds
