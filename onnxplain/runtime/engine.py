"""The engine methods run on: cached rewritten programs and sessions, and chunked runs.

Methods ask it for gradients (of the explained output w.r.t. any tensors, under any rule
set, with taps) and for forward runs; they never touch graph internals.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..autodiff import GRADIENT, POST_PREFIX, RuleSet, add_output
from ..autodiff.program import GradientProgram, Pass, Post, Pre, build_gradient_program
from ..errors import InputError, ModelError, OnnxplainError
from ..graph.builder import GraphBuilder
from ..graph.model import Model
from ..graph.shape_fold import fold_static_shapes
from ..graph.sources import Source
from ..graph.stem import affine_stem
from ..graph.taps import append_outputs
from ..graph.weights import Weights, light_copy, payload_bytes
from ..inputs import batch_size as batch_size_of
from ..inputs import check_target_range, join_rows, pad_rows, prepare_target, rows_axis, take_rows
from ..objective import (  # OutputSeed, DenseObjective, is_labels, decisions: re-exported
    SPATIAL,
    DenseObjective,
    OutputSeed,
    Place,
    check_rows,
    class_count,
    decisions,  # noqa: F401
    declared_rows,
    is_labels,  # noqa: F401
    output_form,
)
from .batching import RunPolicy
from .progress import progress_bar
from .session import Session

# A gradient program built for the exact feed shapes has every dim static, so the runtime
# shape work symbolic dims need (broadcast checks, shape arithmetic, no-op reductions) goes:
# 10-20% faster on a small BERT. Each shape costs a build and a session, so only the first
# few shapes of a program are specialised (the others run the generic one), and not on
# models big enough for another copy of the weights to matter: programs share the model's
# weights, but each ONNX Runtime session holds its own copy (a 511 MB decoder's saliency
# at batch 8 peaked at 2.33 GB with two specialised sessions, 1.1 GB less without).
SPECIALISED_SHAPES = 3
SPECIALISE_MAX_BYTES = 1 << 27
# Fusions ONNX Runtime applies only once shapes are static. SkipLayerNormalization rounds
# the residual sum and normalisation differently from the model's own forward, and LRP
# amplifies that on sums that nearly cancel: keep the generic program's numbers.
STATIC_ONLY_FUSIONS = ("SkipLayerNormFusion",)
# ONNX Runtime 1.31's FastGeluFusion drops the tanh-GELU's inner products even when a
# backward rule reads them (partial LRP on GPT-2: "Node input ... is not a graph input").
# QDQPropagationTransformer: ONNX Runtime 1.31 aborts the process on a Loop body holding a
# quantized model's Q/DQ pairs (Integrated Gradients' path Loop).
QDQ_PROPAGATION = "QDQPropagationTransformer"
PROGRAM_FUSIONS_OFF = ("FastGeluFusion", QDQ_PROPAGATION)

ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]
Built = tuple[GradientProgram, Session]


class BatchNotice(UserWarning):
    """The model's batch axis is fixed, so rows run in chunks of that size (slower)."""


@dataclass
class GradientRun:
    """Outputs of one gradient program over a batch, in input row order."""

    outputs: dict[str, np.ndarray]  # the model's tensor outputs (Engine.tensor_outputs)
    grads: dict[str, np.ndarray]
    target: np.ndarray | None
    taps: dict[str, np.ndarray] = field(default_factory=dict)
    objective: str = "class"  # "class", "output_seed", or "sum" for one-value outputs
    passes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    post: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """A method's target split the one way the programs read it: `classes` (a class per row
    or None: predicted), `seed` (an OutputSeed's values) or `dense` (a DenseObjective), and
    `count`, the static class count the classes are checked against."""

    classes: object
    seed: np.ndarray | None
    dense: DenseObjective | None
    count: int | None


@dataclass
class _Shared:
    """What an engine and its views (Engine.with_policy) share besides the caches."""

    noticed: bool = False  # a fixed batch axis or coupled rows were reported
    providers: list[str] | None = None  # of the most recent session
    small: bool | None = None  # the weights are small enough to specialise programs


@dataclass(frozen=True)
class StemEngines:
    """Engines over the affine stem of an input (its output is `frontier`) and over the rest
    of the model, which reads `frontier` in place of the input (see graph.stem)."""

    frontier: str
    prefix: Engine
    suffix: Engine


class Engine:
    """Runs a model's rewritten programs on ONNX Runtime, rows in chunks of `policy`'s size.

    The policy is fixed for an engine: `with_policy` gives a view with another one (an
    explain call's batch_size), so no call changes another's policy. A view shares with
    its engine the programs and sessions (each built once, by whichever call first needs
    it), the providers the most recent session ran on, and the one notice of a fixed
    batch axis or coupled rows (given once, whichever call runs first)."""

    def __init__(self, model: Model, providers: Sequence[str], output: str,
                 sources: Sequence[Source], optimization: str, policy: RunPolicy,
                 threads: int | None = None):
        self.policy = policy
        self.threads = threads  # ONNX Runtime's intra-op threads per session (None: its own)
        self._base: Engine | None = None  # set on views (with_policy); no cycle to itself
        self.model = model
        self.providers = list(providers)
        self.output = output
        self.sources = list(sources)
        self.optimization = optimization
        self._programs: dict[tuple, Built] = {}
        self._specialised: dict[tuple, dict[ShapeKey, Built | None]] = {}
        # One static copy (and its shape inference) per input shape, shared by the programs.
        self._static_models: dict[ShapeKey, Model | None] = {}
        self._input_names = frozenset(spec.name for spec in model.inputs)
        self._forward: dict[tuple, Session] = {}
        self._stems: dict[str, StemEngines | None] = {}
        self._shared = _Shared()
        # Sequences and maps (skl2onnx's ZipMap) cannot be joined across chunks: runs of
        # the model return its tensor outputs only.
        self.tensor_outputs = tuple(o.name for o in model.proto.graph.output
                                    if o.type.HasField("tensor_type"))
        self.progress = True  # progress bars on runs longer than a second

    def with_policy(self, policy: RunPolicy) -> Engine:
        """This engine under `policy`: itself if the policy is its own, else a view sharing
        its programs, sessions and caches (nothing of this engine changes)."""
        if policy == self.policy:
            return self
        view = copy.copy(self)
        view.policy, view._base = policy, self.base
        return view

    @property
    def base(self) -> Engine:
        """The engine this is a view of (itself if none): caches key on it."""
        return self._base or self

    @property
    def memory_budget_mb(self) -> float:
        return self.policy.memory_budget_mb

    @property
    def session_providers(self) -> list[str]:
        """Providers of the most recent session (what really ran), else the requested ones."""
        return list(self._shared.providers or self.providers)

    def gradients(self, feeds: Mapping[str, np.ndarray], target=None,
                  wrt: Sequence[str] | None = None, *, rules: RuleSet = GRADIENT,
                  taps: Sequence[str] = (), passes: Sequence[Pass] = (),
                  post: Post | None = None, active_from: Sequence[str] = (),
                  pre: Pre | None = None) -> GradientRun:
        """Run the gradient program for `wrt` tensors over all rows of `feeds`.

        `target` is a class index per row (None: predicted) or an OutputSeed. `passes` add
        backward passes under other rule sets to the same run, `post` reduces tensors in
        the graph, `active_from` see autodiff.build.differentiated_region, `pre` see
        autodiff.program.Pre.
        """
        self.check_scores()
        wrt = tuple(wrt) if wrt is not None else tuple(s.tensor for s in self.sources)
        split = self.split_target(target)
        seed, target = split.seed, split.classes
        dense = None if split.dense is None else (split.dense.form, split.dense.place)
        spec = (wrt, rules, seed is not None, tuple(taps), tuple(passes), post,
                tuple(active_from), dense, pre)
        rows = batch_size_of(feeds, self.model.batch.of_inputs)
        first = next(self._chunks(dict(feeds), {}, rows))[0]
        program, _ = self.program(*spec, shapes=self._shape_key(first))
        extra: dict[str, np.ndarray] = {}
        if program.target_input:
            extra[program.target_input] = prepare_target(target, rows, split.count)
        elif target is not None:
            raise InputError(f"output '{self.output}' has no class axis; leave target unset")
        if program.seed_input:
            extra[program.seed_input] = seed
        # Output names do not depend on the shapes a program was specialised to. Tensor
        # outputs only, as Engine.forward: sequences and maps cannot be joined across chunks.
        names = [*self.tensor_outputs, *program.grads.values()]
        if program.target_output:
            names.append(program.target_output)
        names += [t for t in program.taps if t not in names]
        extra_names = [o for grads in program.passes.values() for o in grads.values()]
        names += extra_names + list(program.post.values())

        def session_for(chunk: Mapping[str, np.ndarray]) -> Session:
            return self.program(*spec, shapes=self._shape_key(chunk))[1]

        axes = {out: self.model.batch.of_inputs.get(name, 0)
                for name, out in program.grads.items()}
        results = self._rowwise_run(session_for, names, dict(feeds), extra, rows, axes, first)
        used = results.get(program.target_output) if program.target_output else None
        if used is not None and target is not None:
            check_target_range(used, results[self.output].shape[1])
        for name, out in program.grads.items():
            if name in feeds and results[out].shape != feeds[name].shape:
                # A wrong static shape fact would show here first: never return such a result.
                raise OnnxplainError(f"internal error: the gradient of '{name}' has shape "
                                     f"{results[out].shape}, the input {feeds[name].shape}")
        return GradientRun(
            outputs={name: results[name] for name in self.tensor_outputs},
            grads={name: results[out] for name, out in program.grads.items()},
            target=used,
            taps={t: results[t] for t in program.taps},
            objective=(dense[0] if dense else "output_seed" if program.seed_input else
                       "class" if program.target_input else "sum"),
            passes={label: {name: results[out] for name, out in grads.items()}
                    for label, grads in program.passes.items()},
            post={label: results[out] for label, out in program.post.items()})

    def check_scores(self) -> None:
        """Gradient methods need a float output to differentiate."""
        if not self.model.output(self.output).is_float:
            raise InputError(f"output '{self.output}' is not a float tensor (class labels?); "
                             "gradient methods need scores: name a float output with "
                             "--output, or use a perturbation method")

    def stem(self, name: str) -> StemEngines | None:
        """Engines over the affine stem of input `name` and over the rest of the model, built
        once; None where the input has none or rows are computed together."""
        if name not in self._stems:
            stem = None if self.model.rows_coupled else affine_stem(self.model, name)
            self._stems[name] = None if stem is None else StemEngines(
                stem.frontier, self.part(stem.prefix, stem.frontier, name),
                self.part(stem.suffix, self.output, stem.frontier))
        found = self._stems[name]
        if found is None:
            return None
        return StemEngines(found.frontier, self.as_part(found.prefix),
                           self.as_part(found.suffix))

    def part(self, model: Model, output: str, source: str) -> Engine:
        """An engine over a piece of this model (`model`, reading `source` in place of what
        computes it), to be cached by the caller and used through as_part. Built with the
        base engine's policy: a view's (one call's batch_size) is no part's for good."""
        part = Engine(model, self.providers, output, [Source(source, source)],
                      self.optimization, self.base.policy, self.threads)
        part._shared.noticed = True  # a fixed batch axis is this engine's to report, once
        return part

    def as_part(self, part: Engine) -> Engine:
        """`part` (see part) under this engine's policy and progress bars: a view of it
        where they differ, so the cached part itself never changes."""
        if part.policy == self.policy and part.progress == self.progress:
            return part
        view = part.with_policy(self.policy)
        if view is part:
            view = copy.copy(part)
            view._base = part.base
        view.progress = self.progress
        return view

    def forward(self, feeds: Mapping[str, np.ndarray], taps: Sequence[str] = (),
                post: Post | None = None) -> dict[str, np.ndarray]:
        """Original outputs, plus the tapped intermediate tensors, for all rows of `feeds`;
        the outputs of `post` (given no gradients) under POST_PREFIX + label."""
        key = (tuple(taps), post.key if post is not None else None)
        if key not in self._forward:
            model = self.model.proto
            if taps:  # a light copy: the session reads the weights from self.model
                model = light_copy(model)
                append_outputs(model.graph, self.model.infos, list(taps))
            if post is not None:
                model = _with_post(model, self.model.infos, post, self.model.weights)
            self._forward[key] = Session(model, self.providers, self.optimization,
                                         weights=self.model.weights, threads=self.threads)
        session = self._forward[key]
        names = [n for n in session.output_names  # taps, posts, and the tensor outputs
                 if n in self.tensor_outputs or n not in self._output_axes]
        rows = batch_size_of(feeds, self.model.batch.of_inputs)
        outputs = [n for n in names if n in self._output_axes]
        # Outputs not declared per row may not be (a Flatten over the batch, a scalar):
        # chunks of one row would look per row and be joined wrongly: all rows run at once.
        whole = self.model.batch.symbolic and not self.model.rows_coupled and any(
            declared_rows(self.model, n) is not True for n in outputs)
        # Where rows must run in chunks, a declared scalar stays the first run's value.
        rowwise = [n for n in outputs if self._output_axes[n] is not None]
        engine = self.with_policy(self.policy.derive(batch_size=max(rows, 1))) if whole else self
        try:
            return engine._run_rows(lambda _: session, names, dict(feeds), {}, rows,
                                    rowwise=rowwise)
        except _Unjoinable as err:
            raise InputError(f"output '{err.name}' has shape {list(err.shape)} for {err.rows} "
                             f"input rows, so runs of fewer rows cannot be joined: give "
                             f"{err.rows} rows at a time") from None

    def program(self, wrt: tuple[str, ...], rules: RuleSet = GRADIENT, seeded: bool = False,
                taps: tuple[str, ...] = (), passes: tuple[Pass, ...] = (),
                post: Post | None = None, active_from: tuple[str, ...] = (),
                dense: tuple[str, Place] | None = None, pre: Pre | None = None,
                shapes: ShapeKey | None = None) -> Built:
        """The rewritten model for these gradients and its cached session (built once), or
        one specialised to the input `shapes` where that is allowed."""
        key = (self.output, wrt, rules.name, seeded, taps,
               tuple((p.label, p.rules.name, p.wrt, p.active_from) for p in passes),
               post.key if post is not None else None, active_from, dense,
               pre.key if pre is not None else None)

        def build(model: Model, disabled: tuple[str, ...] = PROGRAM_FUSIONS_OFF) -> Built:
            program = build_gradient_program(model, self.output, wrt, rules=rules,
                                             seeded=seeded, taps=taps, passes=passes,
                                             post=post, active_from=active_from, dense=dense,
                                             pre=pre)
            session = Session(program.model, self.providers, self.optimization, disabled,
                              weights=program.weights, threads=self.threads)
            program.model = None  # the session has the weights: do not hold a second copy
            return program, session

        return self._built(key, shapes, build)

    def _built(self, key: tuple, shapes: ShapeKey | None, build: Callable) -> Built:
        """What `build` made of the model for `key`, built once, or of a copy specialised to
        the input `shapes` where that is allowed."""
        if shapes is not None:
            specialised = self._specialised_program(key, shapes, build)
            if specialised is not None:
                return specialised
        if key not in self._programs:
            self._programs[key] = build(self.model)
        return self._programs[key]

    def run_program(self, key: tuple, emit: Callable[[Model], onnx.ModelProto],
                    feeds: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray],
                    names: Callable[[Session], list[str]], axes: Mapping[str, int | None],
                    specialise: bool = True) -> dict[str, np.ndarray]:
        """Run the program `emit` makes of the model (built and cached as gradient programs
        are: once per `key`, specialised to the first input shapes unless `specialise` is
        False: a Loop body runs the model on other row counts) over all rows of
        `feeds` in chunks; `extra` (one row per row) goes where the program reads it, and
        `names(session)` picks what comes back, its rows on `axes` (default 0)."""
        def build(model: Model, disabled: tuple[str, ...] = PROGRAM_FUSIONS_OFF
                  ) -> tuple[frozenset[str], Session]:
            proto = emit(model)  # its inputs, those with defaults too (ORT lists only others)
            return frozenset(i.name for i in proto.graph.input), Session(
                proto, self.providers, self.optimization, disabled, weights=model.weights,
                threads=self.threads)

        def session_for(chunk: Mapping[str, np.ndarray]) -> Session:
            return self._built(key, self._shape_key(chunk) if specialise else None, build)[1]

        rows = batch_size_of(feeds, self.model.batch.of_inputs)
        first = next(self._chunks(dict(feeds), {}, rows))[0]
        read, session = self._built(key, self._shape_key(first) if specialise else None,
                                    build)
        extra = {k: v for k, v in extra.items() if k in read}
        return self._rowwise_run(session_for, names(session), dict(feeds), extra, rows, axes,
                                 first)

    def _specialised_program(self, key: tuple, shapes: ShapeKey,
                             build: Callable[[Model, tuple[str, ...]], Built]
                             ) -> Built | None:
        """The program for `key` built for these input shapes (None: use the generic one)."""
        variants = self._specialised.setdefault(key, {})
        if shapes not in variants:
            if len(variants) >= SPECIALISED_SHAPES or not self._small_enough():
                return None
            if shapes not in self._static_models:
                self._static_models[shapes] = self._static_model(shapes)
            model = self._static_models[shapes]
            variants[shapes] = None
            if model is not None:
                # A build that fails here leaves the generic program, which reports real errors.
                with contextlib.suppress(Exception):
                    variants[shapes] = build(model, PROGRAM_FUSIONS_OFF + STATIC_ONLY_FUSIONS)
        return variants[shapes]

    def _small_enough(self) -> bool:
        if self._shared.small is None:  # once per engine and its views (a walk of weights)
            self._shared.small = payload_bytes(self.model.proto) <= SPECIALISE_MAX_BYTES
        return self._shared.small

    def _static_model(self, shapes: ShapeKey) -> Model | None:
        """A copy of the model whose inputs are declared with these shapes (None: they are
        declared so already, or an input's declared rank differs and the run would fail)."""
        fixed = dict(shapes)
        declared = {spec.name: spec.dims for spec in self.model.inputs if spec.name in fixed}
        if any(dims is None or len(dims) != len(fixed[name])
               for name, dims in declared.items()):
            return None
        if all(tuple(dims) == fixed[name] for name, dims in declared.items()):
            return None
        proto = light_copy(self.model.proto)
        for value in proto.graph.input:
            if value.name in declared:
                for dim, size in zip(value.type.tensor_type.shape.dim, fixed[value.name],
                                     strict=True):
                    dim.Clear()
                    dim.dim_value = size
        # Shapes computed at run time (paddle2onnx) are constants once the inputs' are.
        return fold_static_shapes(Model(proto, self.model.path, weights=self.model.weights))

    def _shape_key(self, chunk: Mapping[str, np.ndarray]) -> ShapeKey:
        """The shapes of the model's inputs in one run."""
        return tuple(sorted((name, tuple(int(d) for d in value.shape))
                            for name, value in chunk.items() if name in self._input_names))

    def rows_per_run(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Rows one gradient run may take under the policy (RunPolicy.rows_per_run)."""
        return self.policy.rows_per_run(self.model, feeds)

    def static_classes(self) -> int | None:
        return class_count(self.model, self.output)

    def split_target(self, target) -> Target:
        """`target` (a class per row or None, an OutputSeed, or a DenseObjective) as the
        programs read it, with the class count it is checked against."""
        if isinstance(target, OutputSeed):
            return Target(None, target.values, None, self.static_classes())
        if isinstance(target, DenseObjective):
            return Target(target.target, None, target, self._dense_classes())
        return Target(target, None, None, self.static_classes())

    def _dense_classes(self) -> int | None:
        """The static class count of a dense output (axis 1 of a map, else the last)."""
        dims = self.model.output(self.output).dims
        if not dims:
            return None
        count = dims[1] if output_form(self.model, self.output) == SPATIAL else dims[-1]
        return count if isinstance(count, int) else None

    def notice(self, message: str, stacklevel: int) -> None:
        """A BatchNotice, given once per engine (whichever call runs first)."""
        if not self._shared.noticed:
            self._shared.noticed = True
            warnings.warn(message, BatchNotice, stacklevel=stacklevel)

    def notice_coupled(self, stacklevel: int) -> None:
        """Say that the model's rows are coupled (see Model.rows_coupled), once."""
        self.notice(f"{self.model.rows_coupled} computes over the whole batch, so rows run one "
                    "at a time (each as if explained alone)", stacklevel + 1)

    def _row_chunks(self, rows: int, feeds: Mapping[str, np.ndarray]
                    ) -> Iterator[tuple[slice, int]]:
        """Row slices to run, and the batch size each must be padded to (0: no padding)."""
        fixed = None if self.model.batch.symbolic else self.model.batch.size
        if fixed is not None and rows == 0:  # no row to pad the fixed batch with
            raise InputError(f"the inputs have no rows, and the model's batch axis is fixed "
                             f"to {fixed}: give at least one row")
        if fixed is not None and rows != fixed:
            self.notice(f"the model's batch axis is fixed to {fixed}; running {rows} rows in "
                        f"chunks of {fixed}", stacklevel=6)
        step = fixed or min(rows, self.rows_per_run(feeds)) or 1
        if self.model.rows_coupled and rows > 1:
            self.notice_coupled(stacklevel=6)
            step = 1
        for start in range(0, max(rows, 1), step):
            yield slice(start, min(start + step, rows)), fixed or 0

    def _chunks(self, feeds: dict[str, np.ndarray], extra: dict[str, np.ndarray], rows: int
                ) -> Iterator[tuple[dict[str, np.ndarray], int, int]]:
        """(inputs of one run, rows of it that are real, batch size padded to or 0).

        Rows lie on each input's batch axis (Model.batch); inputs that are not per row go
        to every run as they are."""
        axes = self.model.batch.of_inputs
        for rows_slice, pad_to in self._row_chunks(rows, feeds):
            chunk = take_rows({**feeds, **extra}, axes, rows_slice)
            taken = min(rows_slice.stop, rows) - rows_slice.start
            if pad_to and taken < pad_to:
                chunk = {k: pad_rows(v, rows_axis(axes, k, v), pad_to) for k, v in chunk.items()}
            yield chunk, taken, pad_to

    def _run_rows(self, session_for: Callable[[Mapping[str, np.ndarray]], Session],
                  names: list[str], feeds: dict[str, np.ndarray],
                  extra: dict[str, np.ndarray], rows: int,
                  axes: Mapping[str, int | None] | None = None, rowwise: Sequence[str] = ()
                  ) -> dict[str, np.ndarray]:
        """Results of `names` over all rows; `axes`: where rows lie in results that are not
        model outputs (default axis 0). A model output without one row per input row (a
        Flatten or Tile over the batch) is returned as it is from a single unpadded run;
        split into chunks or padded it cannot be joined: _Unjoinable for those in
        `rowwise`, else the first chunk's value (as for scalars)."""
        axes = {**self._output_axes, **(axes or {})}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        whole: set[str] = set()  # model outputs whose rows are not the chunk's rows
        with progress_bar(self.progress, rows, "rows", "row") as bar:
            for chunk, taken, pad_to in self._chunks(feeds, extra, rows):
                session = session_for(chunk)
                out = session.run(names, chunk)
                self._shared.providers = session.providers
                for name in names:
                    value = out[name]
                    axis = rows_axis(axes, name, value)
                    if name in self._output_axes and (
                            axis is None or value.shape[axis] != (pad_to or taken)):
                        whole.add(name)
                        if name in rowwise and (parts[name] or taken < pad_to):
                            raise _Unjoinable(name, value.shape, pad_to or taken)
                    elif pad_to and axis is not None and taken < pad_to:
                        value = take_rows({name: value}, axes, slice(0, taken))[name]
                    parts[name].append(value)
                bar.update(taken)
        return {name: values[0] if name in whole else
                join_rows(values, rows_axis(axes, name, values[0]))
                for name, values in parts.items()}

    @functools.cached_property
    def _output_axes(self) -> dict[str, int | None]:
        """Model output -> the axis its rows lie on, from the batch symbol in its dims."""
        batch = self.model.batch
        return {spec.name: batch.axis_in(spec.dims) for spec in self.model.outputs}

    def _rowwise_run(self, session_for: Callable[[Mapping[str, np.ndarray]], Session],
                     names: list[str], feeds: dict[str, np.ndarray],
                     extra: dict[str, np.ndarray], rows: int, axes: Mapping[str, int | None],
                     first: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """_run_rows of a gradient program, whose seed and target are per row: an output
        without one row per input row is an InputError saying so (objective.check_rows),
        never an ONNX Runtime failure on the seed's shape or a misread score."""
        check_rows(self.model, self.output)
        try:
            results = self._run_rows(session_for, names, feeds, extra, rows, axes,
                                     rowwise=[self.output])
        except _Unjoinable as err:
            check_rows(self.model, self.output, err.shape, err.rows)
            raise
        except OnnxplainError as err:
            if isinstance(err, InputError):
                raise
            try:  # the generated seed failed: a forward run of the first rows tells why
                clean = self.forward(first)[self.output]
            except OnnxplainError:
                raise err from None
            check_rows(self.model, self.output, clean.shape,
                       batch_size_of(first, self.model.batch.of_inputs))
            raise
        check_rows(self.model, self.output, results[self.output].shape, rows)
        return results


class _Unjoinable(Exception):
    """A model output whose rows are not the input's (Model.batch) from a run of part of
    the rows or a padded run: it cannot be joined into the output for all rows."""

    def __init__(self, name: str, shape: tuple[int, ...], rows: int):
        super().__init__(name)
        self.name, self.shape, self.rows = name, tuple(shape), rows


def _with_post(model: onnx.ModelProto, infos, post: Post, weights: Weights):
    """A light copy of `model` that also returns the outputs of `post` (forward only)."""
    proto = light_copy(model)
    b = GraphBuilder(proto, dict(infos), weights=weights)
    for label, tensor in post.emit(b, {"": {}}).items():
        add_output(b, POST_PREFIX + label, tensor)
    return proto


def pick_output(model: Model, output: str | None) -> str:
    """The explained output: the one named, else the first float output, else the first
    integer tensor (class labels of an ArgMax head: perturbation methods explain those)."""
    names = [spec.name for spec in model.outputs]
    if output is not None:
        if output not in names:
            raise InputError(f"unknown output '{output}' (outputs: {', '.join(names)})")
        return output
    for spec in model.outputs:
        if spec.is_float:
            return spec.name
    for spec in model.outputs:
        if spec.info.dtype is not None and spec.numpy_dtype.kind in "iu":
            return spec.name
    raise ModelError("the model has no float or integer tensor output to explain")

