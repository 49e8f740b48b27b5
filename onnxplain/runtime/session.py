"""ONNX Runtime sessions: provider choice, quiet CPU fallback, and the providers actually used."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from .._ort import ort
from ..errors import InputError, OnnxplainError
from ..graph.load import payload_bytes

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
SHORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
               "tensorrt": "TensorrtExecutionProvider"}
# Protobuf cannot serialise more than 2 GB; bigger models go through a file with external data.
_INLINE_LIMIT = 1_800_000_000
# ONNX Runtime's graph optimisation levels. "all" adds the CPU NCHWc layout, ~1.6x faster on
# ResNet-18; like every fusion it can round differently when an intermediate is also an output.
OPTIMIZATION = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def resolve_providers(requested: Sequence[str] | str | None) -> list[str]:
    """Providers to ask for: the default CUDA-then-CPU order, or the user's, CPU always last.

    Short names ('cpu', 'cuda') are accepted; unknown providers raise InputError.
    """
    available = ort.get_available_providers()
    if requested is None or requested == "auto":
        wanted = [p for p in DEFAULT_PROVIDERS if p in available and starts(p)]
    else:
        names = [requested] if isinstance(requested, str) else list(requested)
        wanted = []
        for name in names:
            full = SHORT_NAMES.get(name.lower(), name)
            if full not in available:
                raise InputError(f"execution provider '{name}' is not available in this "
                                 f"onnxruntime build (available: {', '.join(available)})")
            if not starts(full):
                raise InputError(f"execution provider '{name}' was asked for but ONNX Runtime "
                                 "could not start it here (no usable GPU, driver or CUDA "
                                 "libraries); use --provider auto to fall back to the CPU, "
                                 "or --provider cpu")
            wanted.append(full)
    if "CPUExecutionProvider" not in wanted:
        wanted.append("CPUExecutionProvider")
    return wanted


def fallback_note(requested: Sequence[str] | str | None) -> str | None:
    """What the default provider choice fell back from, for the summary (None: nothing)."""
    if requested not in (None, "auto"):
        return None
    missed = [p for p in DEFAULT_PROVIDERS
              if p in ort.get_available_providers() and not starts(p)]
    return None if not missed else (
        f"providers auto: {', '.join(missed)} is in this onnxruntime build but could not "
        "start here (no usable GPU, driver or CUDA libraries), so it ran on the CPU")


@functools.cache
def starts(provider: str) -> bool:
    """Whether a session asking for `provider` really gets it: builds list providers
    (onnxruntime-gpu lists CUDA) that then fall back to the CPU without a usable device."""
    if provider == "CPUExecutionProvider":
        return True
    value = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(probe.SerializeToString(),
                                       providers=[provider, "CPUExecutionProvider"])
        return provider in session.get_providers()
    except Exception:  # noqa: BLE001 - a provider that cannot start raises untyped errors
        return False
    finally:
        ort.set_default_logger_severity(2)


class Session:
    """One InferenceSession over a (rewritten) model, with the providers it really got."""

    def __init__(self, model: onnx.ModelProto, providers: Sequence[str],
                 optimization: str = "all", disabled: Sequence[str] = ()):
        """`disabled` names ONNX Runtime graph optimisers not to apply."""
        self.requested = list(providers)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if optimization not in OPTIMIZATION:
            raise InputError(f"unknown graph optimization '{optimization}' "
                             f"(choose from {', '.join(OPTIMIZATION)})")
        options.graph_optimization_level = OPTIMIZATION[optimization]
        self._tmp: tempfile.TemporaryDirectory | None = None
        source = self._serialise(model)
        # A missing CUDA install makes ORT log errors while it falls back to the CPU; the
        # fallback is reported through `providers`, so keep the console quiet meanwhile.
        ort.set_default_logger_severity(4)
        try:
            extra = {"disabled_optimizers": list(disabled)} if disabled else {}
            self._session = ort.InferenceSession(source, options, providers=self.requested,
                                                 **extra)
        except Exception as err:  # noqa: BLE001 - ORT raises several untyped errors
            raise OnnxplainError(f"ONNX Runtime could not load the model: {_short(err)}") from None
        finally:
            ort.set_default_logger_severity(2)
        self.providers: list[str] = list(self._session.get_providers())
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def _serialise(self, model: onnx.ModelProto) -> bytes | str:
        if payload_bytes(model) < _INLINE_LIMIT:
            return model.SerializeToString()
        self._tmp = tempfile.TemporaryDirectory(prefix="onnxplain-")
        path = os.path.join(self._tmp.name, "model.onnx")
        onnx.save(model, path, save_as_external_data=True, location="model.onnx.data")
        return path

    @property
    def fell_back_to_cpu(self) -> bool:
        return self.requested[0] != "CPUExecutionProvider" and \
            self.providers[0] == "CPUExecutionProvider"

    def run(self, outputs: Sequence[str] | None, feeds: dict[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
        names = list(outputs) if outputs is not None else self.output_names
        try:
            values = self._session.run(names, feeds)
        except Exception as err:  # noqa: BLE001
            raise OnnxplainError(f"ONNX Runtime failed to run the model: {_short(err)}") from None
        return dict(zip(names, values, strict=True))


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) < 400 else text[:397] + "..."
