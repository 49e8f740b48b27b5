"""Decoder probes: reconstruct a model's input from a layer's activations (Schneider & Vlachos
2022, "Explaining classifiers by constructing familiar concepts").

    >>> from onnxplain.probe import fit_probe, probe_model, explain_probe
    >>> fitted = fit_probe("model.onnx", ["/features/features.6/Relu_output_0"], x_train)
    >>> onnx.save(probe_model("model.onnx", fitted), "probe.onnx")
    >>> found = explain_probe("probe.onnx", x_test)   # reconstructions, errors, predictions
"""

from .decoders import Decoder, emit_decoder
from .explain import ProbeExplanation, explain_probe
from .fit import FittedProbe, fit_probe
from .model import Probe, load_probe, probe_model

__all__ = ["Decoder", "FittedProbe", "Probe", "ProbeExplanation", "emit_decoder",
           "explain_probe", "fit_probe", "load_probe", "probe_model"]
