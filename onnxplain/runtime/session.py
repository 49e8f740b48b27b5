"""ONNX Runtime sessions: provider choice, quiet CPU fallback, and the providers actually used."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from .._ort import ort
from ..errors import InputError, OnnxplainError, SessionLoadError
from ..graph.walk import node_inputs
from ..graph.weights import (
    SHARE_FROM,
    Weights,
    copy_into,
    copy_without,
    file_span,
    is_stub,
    payload_bytes,
    shareable,
    standalone,
    tensor_value,
)

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
SHORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
               "tensorrt": "TensorrtExecutionProvider"}
# Models with this many weight bytes or more do not give ONNX Runtime their large
# initializers (graph.weights.shareable) in the serialised model: ONNX Runtime reads them from
# the model's file, or gets them as arrays (SessionOptions add_external_initializers), beside
# a model that holds none of their bytes: no serialised copy of the weights, no second copy
# in ONNX Runtime's parse of it, and no 2 GB protobuf limit. Smaller models go as bytes.
HAND_OVER_FROM = SHARE_FROM
# From this many weight bytes on, ONNX Runtime does not pre-pack dense weights into copies of
# its own layout: a gradient program uses each weight in two layouts (forward and backward),
# each packed copy as big as the weight. VGG-19's program: 0.8 GB less at peak, 1-4% slower.
UNPACKED_FROM = 256 << 20
_PLACEHOLDER = "onnxplain-weights.bin"  # where the handed-over tensors say their bytes are
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
                 optimization: str = "all", disabled: Sequence[str] = (),
                 weights: onnx.ModelProto | None = None, threads: int | None = None):
        """`disabled` names ONNX Runtime graph optimisers not to apply; `weights` holds the
        initializers that `model`'s stubs stand for (graph.load.light_copy); `threads`: ONNX
        Runtime's intra-op threads (None: one per physical core)."""
        self.requested = list(providers)
        options = ort.SessionOptions()
        # Fatal only: a failed run raises, and our one error line carries ORT's message.
        options.log_severity_level = 4
        if optimization not in OPTIMIZATION:
            raise InputError(f"unknown graph optimization '{optimization}' "
                             f"(choose from {', '.join(OPTIMIZATION)})")
        options.graph_optimization_level = OPTIMIZATION[optimization]
        if threads is not None:  # a worker sharing the machine (dataset.ray_engine)
            options.intra_op_num_threads = threads
        size = payload_bytes(model)  # stubs count
        if size >= UNPACKED_FROM:
            options.add_session_config_entry("session.disable_prepacking", "1")
        # A missing CUDA install makes ORT log errors while it falls back to the CPU; the
        # fallback is reported through `providers`, so keep the console quiet meanwhile.
        ort.set_default_logger_severity(4)
        try:
            extra = {"disabled_optimizers": list(disabled)} if disabled else {}
            with _handed_over(model, options, weights, size) as source:
                self._session = ort.InferenceSession(source, options,
                                                     providers=self.requested, **extra)
        except OnnxplainError:  # a weight that cannot be read (graph.weights.tensor_value)
            raise
        except Exception as err:  # noqa: BLE001 - ORT raises several untyped errors
            raise SessionLoadError(f"ONNX Runtime could not load the model: {_short(err)}"
                                   ) from None
        finally:
            ort.set_default_logger_severity(2)
        # ORT's Python wrapper keeps the bytes a session was made from for as long as the
        # session lives; they only serve to remake it with other providers, which we never do.
        self._session._model_bytes = None
        # Likewise the options, which hold the handed-over arrays (ORT has copied them).
        self._session._sess_options_initial = None
        self.providers: list[str] = list(self._session.get_providers())
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

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


@contextlib.contextmanager
def _handed_over(model: onnx.ModelProto, options, weights: Weights | None, size: int
                 ) -> Iterator[bytes | str]:
    """What to open a session on: the serialised model, or for models with large weights a
    model that holds none of their bytes. File stubs (graph.weights) whose file is unchanged
    it names as external data in that file, which ONNX Runtime reads; the other large
    initializers name a placeholder, their arrays (views of protobuf's bytes, or read from
    a changed file's stub: refused) added to `options`. ONNX Runtime copies both in before
    it optimises; the arrays and the temporary file go once the session exists. `size`: the
    model's weight bytes; `weights`: those `model`'s stubs stand for."""
    if size < HAND_OVER_FROM:
        yield standalone(model, weights).SerializeToString()
        return
    shared = {} if weights is None or weights.proto is model else {
        init.name: init for init in weights.proto.graph.initializer}
    light = copy_without(model, "graph")
    copy_into(model.graph, light.graph, skip="initializer")
    # ONNX Runtime drops unread initializers before it takes the handed-over arrays, and
    # then refuses an array whose initializer is gone: unread ones are left out here.
    read = {name for node in model.graph.node for name in node_inputs(node)}
    read.update(output.name for output in model.graph.output)
    in_file, handed = None, []  # the file ONNX Runtime reads external data from
    for given in model.graph.initializer:
        init = shared.get(given.name) if is_stub(given) else given
        if init is None:
            raise OnnxplainError(f"internal error: initializer '{given.name}' stands for a "
                                 "shared one that was not given")
        span = file_span(init)
        if span is None and not shareable(init):
            light.graph.initializer.append(init)
        elif init.name not in read:
            continue
        elif span is not None and span.unchanged() and in_file in (None, span.path):
            in_file = span.path
            light.graph.initializer.append(
                _external(init, os.path.basename(span.path), span.offset, span.length))
        else:
            handed.append(init)
    # Handed-over arrays name any location: ONNX Runtime reads none for them.
    location = _PLACEHOLDER if in_file is None else os.path.basename(in_file)
    light.graph.initializer.extend(_external(init, location, 0, 0) for init in handed)
    # The arrays must outlive the session's creation: ONNX Runtime copies them in then.
    values = [ort.OrtValue.ortvalue_from_numpy(_array(init)) for init in handed]
    options.add_external_initializers([init.name for init in handed], values)
    if in_file is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         os.path.dirname(in_file))
        yield light.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnxplain-") as folder:
        open(os.path.join(folder, _PLACEHOLDER), "wb").close()
        path = os.path.join(folder, "model.onnx")
        onnx.save(light, path)
        del light
        yield path


def _array(init: onnx.TensorProto) -> np.ndarray:
    """The value of `init`: a view of its raw bytes where they are little-endian (the
    bytes are protobuf's one copy of the field, not a second one by numpy); a file stub's
    read from its file."""
    if sys.byteorder != "little" or file_span(init) is not None:
        return tensor_value(init)
    dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
    return np.frombuffer(init.raw_data, dtype=dtype).reshape(tuple(init.dims))


def _external(init: onnx.TensorProto, location: str, offset: int, length: int
              ) -> onnx.TensorProto:
    """A stub of `init` whose bytes are external data at `location` (an empty placeholder
    for a handed-over array)."""
    stub = TensorProto(name=init.name, data_type=init.data_type, dims=init.dims,
                       data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(length))):
        stub.external_data.add(key=key, value=value)
    return stub


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) < 400 else text[:397] + "..."
