"""Append standard-op nodes to a graph, hiding the opset differences of the ops we emit."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError
from .op_kinds import BOOLEAN_RESULTS, INT64_RESULTS, SCATTERS
from .shapes import FLOAT_TYPES, TensorInfo, ai_onnx_opset, constant_node_value
from .weights import Weights, is_stub, nested_graphs, tensor_value

HALF_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
# Ops ONNX Runtime's CPU provider has a half-precision kernel for that fails at run time
# ("MLFloat16 data type is not supported with ScatterElements opset 16 when reduction is
# 'add'"), instead of being run in float32 as it does for ops with no half kernel at all.
NO_HALF_REDUCTION = SCATTERS

Ints = Sequence[int]


class GraphBuilder:
    """Emits nodes into `model.graph` (in place) under fresh names starting with `prefix`.

    It tracks the element type of what it emits so later rules can make constants of the
    right type, and the rank where the op makes it obvious.
    """

    def __init__(self, model: onnx.ModelProto, infos: dict[str, TensorInfo],
                 prefix: str = "onnxplain", weights: Weights | None = None):
        """`weights`: those of the model `model` is a light copy of (graph.weights);
        static_value reads the stubs' values there."""
        self.model = model
        self.graph = model.graph
        opset = ai_onnx_opset(model)
        if opset is None:
            raise ModelError("the model does not import the ai.onnx opset")
        self.opset: int = opset
        self.infos: dict[str, TensorInfo] = dict(infos)
        self.prefix = prefix
        self._taken = self._all_names()
        self._counter = 0
        self._consts: dict[tuple, str] = {}
        self._memo: dict[tuple, str] = {}
        self._static: dict[str, np.ndarray] = {}
        # Tensors computed in the graph from constants only (ONNX Runtime folds them when the
        # session starts): rules may treat them as constants of their static shape.
        self.folded: set[str] = set()
        self._initializers = {init.name: init for init in self.graph.initializer}
        if weights is not None and weights.proto is not model:
            stubs = {name for name, init in self._initializers.items() if is_stub(init)}
            self._initializers.update((init.name, init) for init in weights.proto.graph.initializer
                                      if init.name in stubs)
        for node in self.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = constant_node_value(node)
                if value is not None:
                    self._static[node.output[0]] = value

    def _all_names(self) -> set[str]:
        """Every name of the graph and of the graphs nested in it: a fresh name must not be
        one a nested body defines either (the outer graph would then define it too)."""
        names: set[str] = set()
        for graph in nested_graphs(self.graph):
            names |= {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
            names |= {init.name for init in graph.initializer}
            for node in graph.node:
                names.add(node.name)
                names.update(node.input)
                names.update(node.output)
        return names

    # ---- names and facts -------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"{self.prefix}/{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def info(self, name: str) -> TensorInfo:
        return self.infos.get(name, TensorInfo(None, None))

    def dtype(self, name: str) -> int:
        dtype = self.info(name).dtype
        if dtype is None:
            raise ModelError(f"the element type of tensor '{name}' is unknown (shape inference "
                             "could not determine it)")
        return dtype

    def rank(self, name: str) -> int:
        rank = self.info(name).rank
        if rank is None:
            raise ModelError(f"the rank of tensor '{name}' is unknown (shape inference could not "
                             "determine it)")
        return rank

    def static_value(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant output, else None."""
        if not name:
            return None
        if name in self._static:
            return self._static[name]
        init = self._initializers.get(name)
        if init is None:
            return None
        found = tensor_value(init)  # a file stub's from the model's file
        self._static[name] = found
        return found

    def static_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of an initializer or Constant output, without reading its values."""
        if name in self._static:
            return self._static[name].shape
        init = self._initializers.get(name) if name else None
        return None if init is None else tuple(init.dims)

    def static_ints(self, name: str) -> list[int] | None:
        value = self.static_value(name)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    # ---- emission -------------------------------------------------------------------
    def node(self, op_type: str, inputs: Sequence[str], n_out: int = 1, *, domain: str = "",
             out_type: int | None = None, out_rank: int | None = None, **attrs) -> list[str]:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if n_out == 1 and self._lacks_half_kernel(op_type, inputs, attrs):
            return [self.in_float32(lambda *wide: self.op(op_type, *wide, out_rank=out_rank,
                                                          **attrs), *inputs)]
        outputs = [self.fresh(op_type) for _ in range(n_out)]
        node = helper.make_node(op_type, list(inputs), outputs, name=self.fresh(op_type + "_node"),
                                domain=domain or None, **attrs)
        self.graph.node.append(node)
        if out_type is None:
            out_type = self._default_dtype(op_type, inputs, attrs)
        for out in outputs:
            self.infos[out] = TensorInfo(out_type,
                                         None if out_rank is None else (None,) * out_rank)
        return outputs

    def op(self, op_type: str, *inputs: str, out_type: int | None = None,
           out_rank: int | None = None, **attrs) -> str:
        """Emit one node and return its output. `out_type`/`out_rank` record what the builder
        cannot derive; every other keyword is an ONNX attribute (`dtype` included)."""
        return self.node(op_type, inputs, 1, out_type=out_type, out_rank=out_rank, **attrs)[0]

    def in_float32(self, make: Callable[..., str], *tensors: str) -> str:
        """make(*tensors) computed on float32 copies of the half-precision ones (float16,
        bfloat16), its result cast back to their type; other tensors pass unchanged. For
        backward islands ONNX Runtime cannot run (or runs badly) in half precision; sums
        inside the island accumulate in float32."""
        half = next((self.info(t).dtype for t in tensors if self.info(t).dtype in HALF_TYPES),
                    None)
        if half is None:
            return make(*tensors)
        wide = [self.op("Cast", t, to=TensorProto.FLOAT) if self.info(t).dtype in HALF_TYPES
                else t for t in tensors]
        return self.op("Cast", make(*wide), to=half)

    def _lacks_half_kernel(self, op_type: str, inputs: Sequence[str], attrs: dict) -> bool:
        reduction = attrs.get("reduction", "none")
        return (op_type in NO_HALF_REDUCTION and reduction not in ("none", b"none")
                and self.info(inputs[0]).dtype in HALF_TYPES)

    def _default_dtype(self, op_type: str, inputs: Sequence[str], attrs: dict) -> int | None:
        if op_type in BOOLEAN_RESULTS:
            return TensorProto.BOOL
        if op_type in INT64_RESULTS:
            return TensorProto.INT64
        if op_type == "Cast":
            return attrs["to"]
        if op_type == "ConstantOfShape":
            value = attrs.get("value")
            return value.data_type if value is not None else TensorProto.FLOAT
        if op_type == "Where":
            return self.info(inputs[1]).dtype
        for name in inputs:
            if name:
                return self.info(name).dtype
        return None

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        value = np.require(value, requirements="C")  # keeps 0-d arrays 0-d
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.graph.initializer.append(numpy_helper.from_array(value, name))
            self.infos[name] = TensorInfo(helper.np_dtype_to_tensor_dtype(value.dtype),
                                          tuple(value.shape))
            self._static[name] = value
            self._consts[key] = name
        return self._consts[key]

    def initializer(self, value: np.ndarray, name: str) -> str:
        """A named initializer (a parameter, not a shared constant): `name` itself when free."""
        if name in self._taken:
            name = self.fresh(name)
        self._taken.add(name)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.infos[name] = TensorInfo(helper.np_dtype_to_tensor_dtype(value.dtype),
                                      tuple(value.shape))
        return name

    def np_dtype(self, like: str | int) -> np.dtype:
        dtype = like if isinstance(like, int) else self.dtype(like)
        return np.dtype(helper.tensor_dtype_to_np_dtype(dtype))

    def scalar(self, value: float, like: str | int) -> str:
        """A 0-d constant with the element type of tensor `like` (or the TensorProto type)."""
        return self.const(np.array(value, dtype=self.np_dtype(like)), "scalar")

    def cast_like(self, value: str, like: str) -> str:
        return self.op("Cast", value, to=self.dtype(like))

    def ints(self, values: Ints) -> str:
        return self.const(np.array(list(values), dtype=np.int64), "ints")

    def memo(self, key: tuple, make) -> str:
        """Emit `make()` once per key: shapes and masks are shared by every rule that asks."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @contextmanager
    def own_memo(self) -> Iterator[None]:
        """Emit nodes that will be moved earlier in the graph: inside, memo() reuses nothing
        emitted before (it may be defined after their new place), and keeps nothing after."""
        saved, self._memo = self._memo, {}
        try:
            yield
        finally:
            self._memo = saved

    # ---- shapes ----------------------------------------------------------------------
    def shape(self, x: str) -> str:
        return self.memo(("Shape", x), lambda: self.op("Shape", x, out_rank=1))

    def dims(self, x: str, start: int, end: int | None = None) -> str:
        """Shape(x)[start:end] as a 1-D int64 tensor."""
        def make() -> str:
            stop = end if end is not None else np.iinfo(np.int64).max
            return self.slice(self.shape(x), [start], [stop], [0])
        return self.memo(("dims", x, start, end), make)

    def dim(self, x: str, axis: int) -> str:
        """Shape(x)[axis] as a 1-D tensor of one element."""
        return self.dims(x, axis, None if axis == -1 else axis + 1)

    def size(self, x: str, like: str) -> str:
        """Number of elements of x as a scalar of like's element type."""
        return self.memo(("size", x, like), lambda: self.op(
            "Cast", self.op("Size", x), to=self.dtype(like)))

    def zeros_like(self, x: str) -> str:
        zero = numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype(x)))
        out = self.op("ConstantOfShape", self.shape(x), value=zero)
        self.infos[out] = self.info(x)
        return out

    def reshape(self, x: str, shape: str | Ints) -> str:
        target = shape if isinstance(shape, str) else self.ints(shape)
        return self.op("Reshape", x, target)

    # ---- ops whose signature changed across opsets -----------------------------------
    def reduce(self, op_type: str, x: str, axes: Ints | str | None, keepdims: bool) -> str:
        """ReduceX over `axes` (static ints, a tensor name, or None for all axes)."""
        keep = int(keepdims)
        takes_input = self.opset >= (13 if op_type == "ReduceSum" else 18)
        if axes is None:
            return self.op(op_type, x, keepdims=keep)
        if isinstance(axes, str):
            if not takes_input:
                raise ModelError(f"{op_type} over computed axes needs opset 13/18, model has "
                                 f"opset {self.opset}")
            return self.op(op_type, x, axes, keepdims=keep)
        axes = list(axes)
        if not axes:
            return x
        if takes_input:
            return self.op(op_type, x, self.ints(axes), keepdims=keep)
        return self.op(op_type, x, axes=axes, keepdims=keep)

    def unsqueeze(self, x: str, axes: Ints | str) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, axes if isinstance(axes, str) else self.ints(axes))
        if isinstance(axes, str):
            raise ModelError(f"Unsqueeze over computed axes needs opset 13, model has {self.opset}")
        return self.op("Unsqueeze", x, axes=list(axes))

    def squeeze(self, x: str, axes: Ints) -> str:
        if self.opset >= 13:
            return self.op("Squeeze", x, self.ints(axes))
        return self.op("Squeeze", x, axes=list(axes))

    def slice(self, x: str, starts: Ints | str, ends: Ints | str, axes: Ints | str,
              steps: Ints | str | None = None) -> str:
        if self.opset < 10:
            if any(isinstance(v, str) for v in (starts, ends, axes)) or steps is not None:
                raise ModelError(f"a computed Slice needs opset 10, model has {self.opset}")
            return self.op("Slice", x, starts=list(starts), ends=list(ends), axes=list(axes))
        args = [x] + [v if isinstance(v, str) else self.ints(v) for v in (starts, ends, axes)]
        if steps is not None:
            args.append(steps if isinstance(steps, str) else self.ints(steps))
        return self.op("Slice", *args)

    def pad(self, x: str, pads: Ints | str) -> str:
        """Zero padding; `pads` lists all begins then all ends, as ONNX does."""
        if self.opset >= 11:
            return self.op("Pad", x, pads if isinstance(pads, str) else self.ints(pads))
        if isinstance(pads, str):
            raise ModelError(f"a computed Pad needs opset 11, model has {self.opset}")
        return self.op("Pad", x, pads=list(pads))

    def concat(self, items: Sequence[str], axis: int) -> str:
        return items[0] if len(items) == 1 else self.op("Concat", *items, axis=axis)

    def add_all(self, items: Sequence[str]) -> str:
        return items[0] if len(items) == 1 else self.op("Sum", *items)

    def equal(self, a: str, b: str) -> str:
        """Equal, also for floats before opset 11 (Equal-7 takes integers and bools only)."""
        if self.opset >= 11 or self.info(a).dtype not in FLOAT_TYPES:
            return self.op("Equal", a, b)
        return self.op("Not", self.op("Or", self.op("Less", a, b), self.op("Greater", a, b)))

    def keep(self, g: str, cond: str) -> str:
        """g where cond holds, 0 elsewhere, as g * Cast(cond): ONNX Runtime's CPU Where with a
        scalar branch is about twice as slow (15 against 7.5 ms on 32x64x56x56)."""
        return self.op("Mul", g, self.op("Cast", cond, to=self.dtype(g)))

    def where(self, cond: str, a: str, b: str) -> str:
        return self.op("Where", cond, a, b)

    def range(self, start: str, limit: str, delta: str) -> str:
        if self.opset < 11:
            raise ModelError(f"Range needs opset 11, model has {self.opset}")
        return self.op("Range", start, limit, delta, out_rank=1)
