"""Backward rules, one module per op family; importing this package registers them all."""

from . import (  # noqa: F401
    activations,
    arithmetic,
    control,
    conv,
    epsilon_softmax,
    indexing,
    linalg,
    newer,
    normalization,
    pooling,
    quantize,
    recurrent,
    reductions,
    resize,
    shape,
)
