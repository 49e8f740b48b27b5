"""Check backward rules against central finite differences, in float64.

A case is one op with its inputs. Float inputs become graph inputs (optionally with symbolic
dims, so rules must read shapes at run time) and are differentiated; `Const` inputs become
initializers. The objective is sum(seed * output) with a random seed per output.

The float64 check runs model and gradient graph in onnx's reference evaluator (ONNX Runtime
lacks float64 kernels for several ops), with the corrections of reference_fixes.py. The same
gradient graph built in float32 must then run in ONNX Runtime and agree with the float64
gradient, and pass the full ONNX checker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxplain.autodiff import differentiate
from onnxplain.graph.load import set_runtime_ir_version

from .reference_fixes import CORRECTED_OPS


def evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """onnx's reference evaluator with every op class of reference_fixes.py. (Its module-level
    corrections are applied around each test by tests/autodiff/conftest.py.)"""
    return ReferenceEvaluator(model, new_ops=CORRECTED_OPS)


@dataclass
class Const:
    """An input fed as an initializer: not differentiated (axes, shapes, indices, weights).

    A float value takes the model's float type unless `keep_dtype` (for inputs the spec types
    apart from the data, such as Resize's float32 scales).
    """

    value: np.ndarray
    keep_dtype: bool = False


@dataclass
class OpCase:
    id: str
    op: str
    inputs: list
    attrs: dict = field(default_factory=dict)
    opset: int = 17
    n_outputs: int = 1
    # Output indices that get a seed (default: every float output).
    seeded: tuple[int, ...] | None = None
    # Inputs whose gradient is checked (default: every non-Const float input).
    wrt: tuple[int, ...] | None = None
    rtol: float = 1e-6
    eps: float = 1e-6
    # Ops the spec defines for float32 only (Celu): finite differences in float32 instead.
    float32_only: bool = False
    domain: str = ""

    def __repr__(self) -> str:
        return self.id


def _is_float(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def build_model(case: OpCase, dtype: np.dtype, symbolic: bool) -> tuple[onnx.ModelProto, dict]:
    feeds, inputs, inits, names = {}, [], [], []
    for i, value in enumerate(case.inputs):
        if value is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(value, Const):
            cast = value.value.dtype.kind == "f" and not value.keep_dtype
            arr = value.value.astype(dtype) if cast else value.value
            inits.append(numpy_helper.from_array(arr, name))
            continue
        arr = value.astype(dtype) if value.dtype.kind == "f" else value
        dims = [f"{name}_d{k}" for k in range(arr.ndim)] if symbolic else list(arr.shape)
        inputs.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(arr.dtype), dims))
        feeds[name] = arr
    outs = [f"out{k}" for k in range(case.n_outputs)]
    node = helper.make_node(case.op, names, outs, domain=case.domain or None, **case.attrs)
    graph = helper.make_graph([node], case.id, inputs, [
        helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs], inits)
    opsets = [helper.make_opsetid("", case.opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    set_runtime_ir_version(model)
    # Declared outputs need a type for the checker and ORT: take it from a reference run.
    values = evaluator(model).run(None, feeds)
    del model.graph.output[:]
    for name, value in zip(outs, values, strict=True):
        dims = [None] * value.ndim if symbolic else list(value.shape)
        model.graph.output.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), dims))
    return model, feeds


def _wrt(case: OpCase) -> list[int]:
    if case.wrt is not None:
        return list(case.wrt)
    return [i for i, v in enumerate(case.inputs) if _is_float(v)]


def check_case(case: OpCase, symbolic: bool, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    if case.float32_only:
        case = OpCase(**{**case.__dict__, "rtol": max(case.rtol, 2e-3),
                         "eps": max(case.eps, 1e-2)})
    model, feeds = build_model(case, np.float32 if case.float32_only else np.float64, symbolic)
    ref = evaluator(model)
    outputs = ref.run(None, feeds)
    seeded = case.seeded if case.seeded is not None else [
        k for k, o in enumerate(outputs) if np.asarray(o).dtype.kind == "f"]
    seed_type = np.asarray(outputs[seeded[0]]).dtype if seeded else np.float64
    seeds = {f"out{k}": rng.standard_normal(np.shape(outputs[k])).astype(seed_type)
             for k in seeded}
    wrt = [f"in{i}" for i in _wrt(case)]
    diff = differentiate(model, wrt, outputs=list(seeds))
    onnx.checker.check_model(diff.model, full_check=True)
    grad_ref = evaluator(diff.model)
    grad_feeds = dict(feeds)
    grad_feeds.update({diff.seeds[o]: s for o, s in seeds.items()})
    names = [diff.grads[w] for w in wrt]
    grads = dict(zip(wrt, grad_ref.run(names, grad_feeds), strict=True))

    def objective(perturbed: dict) -> float:
        values = ref.run(list(seeds), perturbed)
        return float(sum(np.sum(s * v) for s, v in zip(seeds.values(), values, strict=True)))

    eps = case.eps
    for name in wrt:
        grad = np.asarray(grads[name])
        assert grad.shape == feeds[name].shape, (name, grad.shape, feeds[name].shape)
        for _ in range(3):
            direction = rng.standard_normal(feeds[name].shape).astype(feeds[name].dtype)
            plus, minus = dict(feeds), dict(feeds)
            plus[name] = feeds[name] + eps * direction
            minus[name] = feeds[name] - eps * direction
            numeric = (objective(plus) - objective(minus)) / (2 * eps)
            analytic = float(np.sum(grad * direction))
            scale = max(1.0, abs(numeric), float(np.abs(grad).sum()) * 1e-3)
            assert abs(numeric - analytic) <= case.rtol * 10 * scale + 1e-7, (
                f"{case.id} d/d{name}: finite differences {numeric!r}, rule {analytic!r}")
    _check_onnxruntime(case, symbolic, seeds, grads, wrt)


def _check_onnxruntime(case: OpCase, symbolic: bool, seeds: dict, grads: dict, wrt: list) -> None:
    """The float32 gradient graph runs in ONNX Runtime and agrees with the float64 one."""
    model, feeds = build_model(case, np.float32, symbolic)
    diff = differentiate(model, wrt, outputs=list(seeds))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(diff.model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    run_feeds = dict(feeds)
    run_feeds.update({diff.seeds[o]: s.astype(np.float32) for o, s in seeds.items()})
    got = session.run([diff.grads[w] for w in wrt], run_feeds)
    for name, value in zip(wrt, got, strict=True):
        expected = np.asarray(grads[name])
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(value, expected, rtol=2e-3, atol=2e-4 * scale,
                                   err_msg=f"{case.id}: ONNX Runtime float32 d/d{name}")
