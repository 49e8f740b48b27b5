"""Local layers built on the epsilon-softmax: construction from data, ONNX emission,
fine-tuning in ONNX Runtime, and local heads that reject inputs unlike the training data."""

from .init import (
    auto_temperature,
    calibrate_epsilon,
    calibration_check,
    center_budget,
    classifier_from_data,
    mlp_from_data,
    pick_centers,
    rejection_threshold,
)
from .layers import LocalLayer, LocalNetwork
from .train import (
    FineTuneResult,
    TrainingGraph,
    add_neurons,
    fine_tune,
    prune,
    row_losses,
    training_graph,
)

__all__ = [
    "FineTuneResult",
    "LocalLayer",
    "LocalNetwork",
    "TrainingGraph",
    "add_neurons",
    "auto_temperature",
    "calibrate_epsilon",
    "calibration_check",
    "center_budget",
    "classifier_from_data",
    "fine_tune",
    "mlp_from_data",
    "pick_centers",
    "prune",
    "rejection_threshold",
    "row_losses",
    "training_graph",
]
