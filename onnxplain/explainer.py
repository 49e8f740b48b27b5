"""The Explainer: one loaded model, cached rewritten programs and sessions, methods on top."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .attribution import Attribution
from .autodiff import GRADIENT, RuleSet
from .autodiff.program import GradientProgram, build_gradient_program
from .errors import InputError, ModelError, OnnxplainError
from .graph.model import Model
from .graph.sources import Source, find_sources
from .graph.taps import add_taps
from .inputs import Inputs, check_target_range, prepare_inputs, prepare_target
from .inputs import batch_size as batch_size_of
from .methods import MethodSpec, get_method
from .runtime.batching import DEFAULT_BUDGET_MB, rows_per_run
from .runtime.session import Session, resolve_providers


class BatchNotice(UserWarning):
    """The model's batch axis is fixed, so rows run in chunks of that size (slower)."""


@dataclass(frozen=True)
class OutputSeed:
    """An objective given as weights on the explained output: sum(values * output) per row."""

    values: np.ndarray


@dataclass
class GradientRun:
    """Outputs of one gradient program over a batch, in input row order."""

    outputs: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    target: np.ndarray | None
    taps: dict[str, np.ndarray] = field(default_factory=dict)
    objective: str = "class"  # "class", "output_seed", or "sum" for one-value outputs


class Explainer:
    """Explain an ONNX model with ONNX Runtime, without the framework it came from.

    `model` is a path, serialized bytes or an onnx.ModelProto (never modified). `providers`
    defaults to CUDA when it works, then CPU; `output` picks the explained output (default:
    the first float output). `attribute_at` maps an input to another float tensor where its
    attributions are taken (token ids default to their embedding lookup's output).
    `optimization` is ONNX Runtime's graph optimisation level ("all", "extended", "basic" or
    "none"); below "extended" no fusion can change the last bits of the outputs when tensors
    are tapped, at some cost in speed. Large batches run in chunks whose gradient programs
    fit `memory_budget_mb` (estimated from the activations); `batch_size` in explain()
    overrides it.
    """

    def __init__(self, model: str | os.PathLike | bytes | onnx.ModelProto | Model,
                 providers: Sequence[str] | str | None = None, *, output: str | None = None,
                 attribute_at: Mapping[str, str] | None = None, optimization: str = "all",
                 memory_budget_mb: float = DEFAULT_BUDGET_MB):
        if memory_budget_mb <= 0:
            raise InputError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
        self.model = model if isinstance(model, Model) else Model.load(model)
        self.memory_budget_mb = memory_budget_mb
        self.providers = resolve_providers(providers)
        self.optimization = optimization
        self.output = self._pick_output(output)
        self.sources, self.unattributed = find_sources(self.model, attribute_at)
        self._programs: dict[tuple, tuple[GradientProgram, Session]] = {}
        self._forward: dict[tuple, Session] = {}
        self._noticed = False
        self._chunk: int | None = None
        self._last_providers: list[str] | None = None

    def _pick_output(self, output: str | None) -> str:
        names = [spec.name for spec in self.model.outputs]
        if output is not None:
            if output not in names:
                raise InputError(f"unknown output '{output}' (outputs: {', '.join(names)})")
            return output
        for spec in self.model.outputs:
            if spec.is_float:
                return spec.name
        raise ModelError("the model has no float output to explain")

    # ---- public API --------------------------------------------------------------------
    def explain(self, inputs: Inputs, method: str = "saliency", target=None, *,
                output_seed: np.ndarray | None = None, batch_size: int | None = None,
                **options) -> Attribution:
        """Attributions for `inputs` (an array for single-input models, or a dict name ->
        array) of `target`: a class index, one per row, or None for the predicted class.

        `output_seed` replaces the class target by any weighting of the output: an array
        shaped like the output, the objective being sum(output_seed * output) per row.
        """
        spec = get_method(method)
        resolved = spec.resolve_options(options)
        feeds = prepare_inputs(self.model, inputs)
        if output_seed is not None:
            if target is not None:
                raise InputError("give either target or output_seed, not both")
            target = OutputSeed(self._check_seed(output_seed, batch_size_of(feeds)))
        if not self.sources:
            raise InputError("no input of this model can be attributed: "
                             + "; ".join(f"{k}: {v}" for k, v in self.unattributed.items()))
        start = time.perf_counter()
        with self._chunking(batch_size):
            values, run = spec.run(self, feeds, target, self.sources, **resolved)
        elapsed = time.perf_counter() - start
        return self._attribution(spec, resolved, values, run, elapsed)

    @property
    def session_providers(self) -> list[str]:
        """Providers of the most recent session (what really ran), else the requested ones."""
        return list(self._last_providers or self.providers)

    # ---- engine API used by the methods ------------------------------------------------
    def gradients(self, feeds: Mapping[str, np.ndarray], target=None,
                  wrt: Sequence[str] | None = None, *, rules: RuleSet = GRADIENT,
                  taps: Sequence[str] = ()) -> GradientRun:
        """Run the gradient program for `wrt` tensors over all rows of `feeds`.

        `target` is a class index per row (None: predicted) or an OutputSeed.
        """
        wrt = tuple(wrt) if wrt is not None else tuple(s.tensor for s in self.sources)
        seed = target.values if isinstance(target, OutputSeed) else None
        if seed is not None:
            target = None
        program, session = self.program(wrt, rules, seed is not None, tuple(taps))
        rows = batch_size_of(feeds)
        extra: dict[str, np.ndarray] = {}
        if program.target_input:
            classes = self._static_classes()
            extra[program.target_input] = prepare_target(target, rows, classes)
        elif target is not None:
            raise InputError(f"output '{self.output}' has no class axis; leave target unset")
        if program.seed_input:
            extra[program.seed_input] = seed
        names = [o.name for o in self.model.outputs] + list(program.grads.values())
        if program.target_output:
            names.append(program.target_output)
        names += [t for t in program.taps if t not in names]
        results = self._run_rows(session, names, dict(feeds), extra, rows)
        used = results.get(program.target_output) if program.target_output else None
        if used is not None and target is not None:
            check_target_range(used, results[self.output].shape[1])
        for name, out in program.grads.items():
            if name in feeds and results[out].shape != feeds[name].shape:
                # A wrong static shape fact would show here first: never return such a result.
                raise OnnxplainError(f"internal error: the gradient of '{name}' has shape "
                                     f"{results[out].shape}, the input {feeds[name].shape}")
        return GradientRun(
            outputs={o.name: results[o.name] for o in self.model.outputs},
            grads={name: results[out] for name, out in program.grads.items()},
            target=used,
            taps={t: results[t] for t in program.taps},
            objective=("output_seed" if program.seed_input else
                       "class" if program.target_input else "sum"))

    def forward(self, feeds: Mapping[str, np.ndarray], taps: Sequence[str] = ()
                ) -> dict[str, np.ndarray]:
        """Original outputs, plus the tapped intermediate tensors, for all rows of `feeds`."""
        key = tuple(taps)
        if key not in self._forward:
            model = add_taps(self.model.proto, self.model.infos, list(taps)) if taps \
                else self.model.proto
            self._forward[key] = Session(model, self.providers, self.optimization)
        session = self._forward[key]
        return self._run_rows(session, session.output_names, dict(feeds), {},
                              batch_size_of(feeds))

    # ---- internals ---------------------------------------------------------------------
    def program(self, wrt: tuple[str, ...], rules: RuleSet = GRADIENT, seeded: bool = False,
                taps: tuple[str, ...] = ()) -> tuple[GradientProgram, Session]:
        """The rewritten model for these gradients and its cached session (built once)."""
        key = (self.output, wrt, rules.name, seeded, taps)
        if key not in self._programs:
            program = build_gradient_program(self.model, self.output, wrt, rules=rules,
                                             seeded=seeded, taps=taps)
            self._programs[key] = (program, Session(program.model, self.providers,
                                                    self.optimization))
        return self._programs[key]

    def _check_seed(self, seed, rows: int) -> np.ndarray:
        spec = self.model.output(self.output)
        values = np.asarray(seed)
        if values.dtype.kind not in "fiu":
            raise InputError(f"output_seed must be numeric, got {values.dtype}")
        dims = spec.dims
        expected = "?" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"
        shape_ok = dims is None or (values.ndim == len(dims) and all(
            not isinstance(d, int) or d == n for d, n in zip(dims[1:], values.shape[1:],
                                                              strict=True)))
        if not shape_ok or (values.ndim and values.shape[0] != rows):
            raise InputError(f"output_seed has shape {tuple(values.shape)}; output "
                             f"'{self.output}' is {expected} with {rows} rows")
        return np.ascontiguousarray(values, dtype=spec.numpy_dtype)

    def _static_classes(self) -> int | None:
        dims = self.model.output(self.output).dims
        return dims[1] if dims and len(dims) == 2 and isinstance(dims[1], int) else None

    @contextlib.contextmanager
    def _chunking(self, size: int | None) -> Iterator[None]:
        """Rows per run for the duration of one explain call (None: the whole batch)."""
        if size is not None and size < 1:
            raise InputError(f"batch_size must be at least 1, got {size}")
        self._chunk = size
        try:
            yield
        finally:
            self._chunk = None

    def _row_chunks(self, rows: int, feeds: Mapping[str, np.ndarray]
                    ) -> Iterator[tuple[slice, int]]:
        """Row slices to run, and the batch size each must be padded to (0: no padding)."""
        fixed = None if self.model.batch.symbolic else self.model.batch.size
        if fixed is not None and rows != fixed and not self._noticed:
            self._noticed = True
            warnings.warn(f"the model's batch axis is fixed to {fixed}; running {rows} rows "
                          f"in chunks of {fixed}", BatchNotice, stacklevel=4)
        step = fixed or self._chunk or min(
            rows, rows_per_run(self.model, feeds, self.memory_budget_mb)) or 1
        for start in range(0, max(rows, 1), step):
            yield slice(start, min(start + step, rows)), fixed or 0

    def _run_rows(self, session: Session, names: list[str], feeds: dict[str, np.ndarray],
                  extra: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for rows_slice, pad_to in self._row_chunks(rows, feeds):
            chunk = {k: v[rows_slice] for k, v in {**feeds, **extra}.items()}
            taken = next(iter(chunk.values())).shape[0] if chunk else 0
            if pad_to and taken < pad_to:
                chunk = {k: _pad_rows(v, pad_to) for k, v in chunk.items()}
            out = session.run(names, chunk)
            self._last_providers = session.providers
            for name in names:
                value = out[name]
                parts[name].append(value[:taken] if pad_to and value.ndim else value)
        return {name: _join(values) for name, values in parts.items()}

    def _attribution(self, method: MethodSpec, options: dict, values: dict[str, np.ndarray],
                     run: GradientRun, elapsed: float) -> Attribution:
        per_input, tensors, sources = {}, {}, {}
        for source in self.sources:
            value = values[source.tensor]
            tensors[source.tensor] = value
            sources[source.input] = source.tensor
            per_input[source.input] = _per_token(value, self.model.input(source.input).dims,
                                                 source, method.token_reduction)
        logits = run.outputs[self.output]
        predicted = predicted_score = target_score = None
        target = run.target if run.target is not None else np.zeros(0, dtype=np.int64)
        if logits.ndim == 2:
            predicted = logits.argmax(axis=1)
            predicted_score = logits.max(axis=1)
            target_score = logits[np.arange(len(target)), target] if target.size else None
        elif logits.ndim == 1:
            target_score = logits
        notes = [f"{name}: {reason}" for name, reason in self.unattributed.items()]
        return Attribution(method.name, per_input, tensors, sources, self.output, target, predicted,
                           predicted_score, target_score, self.session_providers, elapsed,
                           options, run.outputs, notes, run.objective)


def _per_token(value: np.ndarray, dims, source: Source, reduction: str) -> np.ndarray:
    """One value per token id: the method's reduction over the embedding axes."""
    if not source.per_token:
        return value
    rank = len(dims) if dims is not None else 2
    axes = tuple(range(rank, value.ndim))
    if not axes:
        return value
    if reduction == "norm":
        return np.sqrt(np.square(value, dtype=np.float64).sum(axis=axes)).astype(value.dtype)
    return value.sum(axis=axes)


def _pad_rows(value: np.ndarray, size: int) -> np.ndarray:
    if not value.ndim or value.shape[0] >= size:
        return value
    filler = np.repeat(value[-1:], size - value.shape[0], axis=0)
    return np.concatenate([value, filler], axis=0)


def _join(values: list[np.ndarray]) -> np.ndarray:
    if len(values) == 1:
        return values[0]
    if values[0].ndim == 0:
        return values[0]
    return np.concatenate(values, axis=0)
