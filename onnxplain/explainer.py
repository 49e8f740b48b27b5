"""The Explainer: the public API over one loaded model; methods run on its Engine."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np
import onnx

from .attribution import Attribution
from .autodiff.build import partial_cut_notes
from .autodiff.ops.quantize import straight_through_notes
from .errors import AttributionWarning, InputError
from .graph.attention import cached_inputs, check_not_fused
from .graph.model import Model
from .graph.sources import Source, find_sources
from .graph.taps import resolve_taps
from .inputs import Inputs, RowAxes, check_rows_layout, prepare_inputs, rows_axis
from .inputs import batch_size as batch_size_of
from .methods import MethodOutput, MethodSpec, get_method
from .methods._common import rows_text
from .methods._tokens import query_is_position
from .methods.options import is_count
from .objective import (
    DENSE,
    EVERYWHERE,
    NEXT_TOKEN,
    Dense,
    Objective,
    Place,
    check_output_seed,
    check_place,
    class_scores,
    make_place,
    output_form,
    require_objective,
    resolve_dense,
    token_inputs,
)
from .runtime.batching import DEFAULT_BUDGET_MB, RunPolicy
from .runtime.engine import (
    DenseObjective,
    Engine,
    GradientRun,
    OutputSeed,
    decisions,
    is_labels,
    pick_output,
)
from .runtime.session import fallback_note, resolve_providers

# Methods that hand the objective to one gradient program and read nothing else of it: their
# dense objective (next token, sequence, map) is computed in that program
# (engine.DenseObjective), which saves the clean forward run that would resolve it first.
SEEDED_IN_GRAPH = frozenset({"saliency", "input_x_gradient", "guided_backprop", "deconvnet",
                             "transformer_attribution",
                             "generic_attention", "attgrad", "partial_lrp", "attn_lrp"})


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
    overrides it for that call, and a method's `internal_batch_size` sets the rows of one
    iteration of its Loop (both held in one RunPolicy, `policy`). `progress=False` silences
    the progress bars of long perturbation runs. `threads`: ONNX Runtime's intra-op threads
    per session (None: one per physical core; a worker that shares the machine sets it).
    """

    def __init__(self, model: str | os.PathLike | bytes | onnx.ModelProto | Model,
                 providers: Sequence[str] | str | None = None, *, output: str | None = None,
                 attribute_at: Mapping[str, str] | None = None, optimization: str = "all",
                 memory_budget_mb: float = DEFAULT_BUDGET_MB, progress: bool = True,
                 threads: int | None = None):
        if threads is not None and not is_count(threads):
            raise InputError(f"threads must be a whole number, at least 1, got {threads!r}")
        self.model = model if isinstance(model, Model) else Model.load(model)
        self.output = pick_output(self.model, output)
        self.sources, self.unattributed = find_sources(self.model, attribute_at)
        self.engine = Engine(self.model, resolve_providers(providers), self.output,
                             self.sources, optimization, RunPolicy(memory_budget_mb), threads)
        self.engine.progress = progress
        self.provider_note = fallback_note(providers)

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    @property
    def policy(self) -> RunPolicy:
        """Rows per run and per Loop iteration when a call sets none (RunPolicy)."""
        return self.engine.policy

    @property
    def memory_budget_mb(self) -> float:
        return self.policy.memory_budget_mb

    def explain(self, inputs: Inputs, method: str = "saliency", target=None, *,
                output_seed: np.ndarray | None = None, batch_size: int | None = None,
                position: int | None = None, pixel: Sequence[int] | None = None,
                region: Sequence[Sequence[int]] | None = None, **options) -> Attribution:
        """Attributions for `inputs` (an array for single-input models, or a dict name ->
        array) of `target`: a class index, one per row, or None for the predicted class.

        Outputs scored per position have a default objective (objective): next-token logits
        [batch, sequence, vocabulary] explain the next token at the last non-padding
        position; other [batch, positions, classes] outputs (token tags, CTC) and maps
        [batch, classes, height, width] (segmentation) the summed score of the predicted
        class (or of `target`) at every position or pixel. `position` explains one position,
        `pixel` = (y, x) one pixel, `region` = ((y0, y1), (x0, x1)) a half-open box.

        `output_seed` replaces the class target by any weighting of the output: an array
        shaped like the output, the objective being sum(output_seed * output) per row.
        Method options (see `onnxplain.METHODS`) are keyword arguments. `batch_size`: rows
        per run for this call (default: as the memory budget allows).
        """
        spec = get_method(method)
        engine = self.engine.with_policy(self.policy.derive(batch_size=batch_size))
        check_rows_layout(self.model, spec.name)
        resolved = spec.resolve_options(options)
        feeds = prepare_inputs(self.model, inputs)
        place = make_place(position, pixel, region)
        if output_seed is None and self._reads_position(spec):
            resolved, place = _query_is_position(resolved, place, feeds, self.model)
        objective, target = self._objective(spec, feeds, target, output_seed, place)
        if not self.sources and spec.needs_sources:
            check_not_fused(self.model)  # the real cause when ORT fused the embeddings away
            raise InputError("no input of this model can be attributed: "
                             + "; ".join(f"{k}: {v}" for k, v in self.unattributed.items()))
        start = time.perf_counter()
        output = spec.run(engine, feeds, target, self.sources, **resolved)
        elapsed = time.perf_counter() - start
        if isinstance(objective, DenseObjective):  # seeded in the graph: report it now
            objective = resolve_dense(self.model, objective.form, self.output, feeds,
                                      output.run.outputs, objective.target, objective.place)
        if objective is None and output_seed is None and self._form == NEXT_TOKEN:
            # Attention methods read the explained position's row (query): report it.
            objective = resolve_dense(self.model, NEXT_TOKEN, self.output, feeds,
                                      output.run.outputs, target, place)
        return self._attribution(spec, resolved, output, elapsed, objective)

    def _objective(self, spec: MethodSpec, feeds: dict[str, np.ndarray], target,
                   output_seed, place: Place
                   ) -> tuple[Dense | DenseObjective | OutputSeed | None, object]:
        """What `spec` explains, resolved once (objective): (the objective to report, the
        target to run the method with)."""
        if output_seed is not None:
            if target is not None:
                raise InputError("give either target or output_seed, not both")
            if place != EVERYWHERE:
                raise InputError("give either an output seed or a position, pixel or "
                                 "region, not both")
            rows = batch_size_of(feeds, self.model.batch.of_inputs)
            seed = OutputSeed(check_output_seed(self.model, self.output, output_seed, rows))
            if spec.uses_objective:
                require_objective(self.model, self.output, seeded=True, targeted=False)
            return seed, seed
        check_place(self._form, place, self.model.output(self.output).describe())
        if not spec.uses_objective:
            if place != EVERYWHERE and not self._reads_position(spec):
                raise InputError(f"method '{spec.name}' does not explain a score of the "
                                 "output, so a position, pixel or region does not apply")
            return None, target
        require_objective(self.model, self.output, seeded=False, targeted=target is not None)
        if self._form not in DENSE:
            return target, target
        if spec.name in SEEDED_IN_GRAPH:
            lazy = DenseObjective(self._form, place, target)
            return lazy, lazy
        dense = self._dense(feeds, target, place)
        return dense, OutputSeed(dense.seed, dense.outputs)

    def forward(self, inputs: Inputs, taps: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The model's outputs plus any intermediate tensors (selected by tensor name, node
        name or op type), from one run; the original outputs are computed as in the model."""
        feeds = prepare_inputs(self.model, inputs)
        return self.engine.forward(feeds, resolve_taps(self.model.proto, taps))

    def gradients(self, inputs: Inputs, target=None, wrt: Sequence[str] | None = None,
                  taps: Sequence[str] = ()) -> GradientRun:
        """Outputs, the gradient of the target score w.r.t. `wrt` tensors (default: the
        attribution sources) and taps, from one run per chunk of rows."""
        feeds = prepare_inputs(self.model, inputs)
        if self._form in DENSE:  # computed in the gradient program
            target = DenseObjective(self._form, EVERYWHERE, target)
        return self.engine.gradients(feeds, target, wrt,
                                     taps=resolve_taps(self.model.proto, taps))

    def _reads_position(self, spec: MethodSpec) -> bool:
        """An attention method on a causal LM reads one query row: the explained position."""
        return "query" in spec.defaults and self._form == NEXT_TOKEN

    @cached_property
    def _form(self) -> str:
        return output_form(self.model, self.output)

    def _dense(self, feeds: dict[str, np.ndarray], target, place: Place = EVERYWHERE
               ) -> Dense:
        """The dense objective, resolved once on the clean forward run (objective)."""
        outputs = self.engine.forward(feeds)
        return resolve_dense(self.model, self._form, self.output, feeds, outputs, target,
                             place)

    @cached_property
    def _straight_through_notes(self) -> list[str]:
        return straight_through_notes(self.model.proto)

    @cached_property
    def _cut_notes(self) -> list[str]:
        """Paths the gradient treats as constant beside a differentiable one (warned once)."""
        notes = partial_cut_notes(self.model.proto.graph.node, [s.tensor for s in self.sources],
                                  self.output, self.model.infos)
        for note in notes:
            warnings.warn(note, AttributionWarning, stacklevel=4)
        return notes

    def _attribution(self, method: MethodSpec, options: dict, output: MethodOutput,
                     elapsed: float, objective) -> Attribution:
        per_input, tensors, sources = dict(output.at_inputs), dict(output.tensors), {}
        for source in self.sources:
            if source.tensor not in output.at_sources:
                continue
            value = output.at_sources[source.tensor]
            tensors[source.tensor] = value
            sources[source.input] = source.tensor
            if source.input not in per_input:  # a method's own per-token sums stand
                per_input[source.input] = _per_token(
                    value, self.model.input(source.input).dims, source, method.token_reduction)
        extras = _cached_block(per_input, cached_inputs(self.model) if method.needs_sources
                               else (), dict(output.extras))
        run = output.run
        logits = run.outputs[self.output]
        predicted = predicted_score = target_score = None
        target = run.target if run.target is not None else np.zeros(0, dtype=np.int64)
        scores = class_scores(logits)
        if scores is not None:
            predicted = scores.argmax(axis=1)
            predicted_score = scores.max(axis=1)
            target_score = scores[np.arange(len(target)), target] if target.size else None
        elif is_labels(logits):
            predicted = decisions(logits)
            target_score = Objective.given(target, logits).score(logits) if target.size else None
        elif logits.ndim == 1:
            target_score = logits
        explained = run.objective
        if isinstance(objective, OutputSeed):
            target_score = Objective.given(objective, logits).score(logits)
        if objective is None and not method.uses_objective and self._form in DENSE:
            explained = "none"  # e.g. rollout of a token tagger: no score is read
        if isinstance(objective, Dense):
            explained = objective.form
            target, predicted, predicted_score, target_score = _dense_scores(objective,
                                                                             logits)
            if objective.form == NEXT_TOKEN:
                extras["explained_positions"] = objective.positions.tolist()
            if objective.place != EVERYWHERE:
                extras["explained_place"] = objective.place.text()
        notes = [f"{name}: {reason}" for name, reason in self.unattributed.items()]
        notes += [self.provider_note] if self.provider_note else []
        notes += output.notes
        notes += self._straight_through_notes if method.needs_sources else []
        notes += self._cut_notes if method.needs_sources else []
        doubts = _ties(scores) if objective is None and scores is not None else []
        unreadable = unreadable_rows(per_input, self.model.batch.of_inputs)
        doubts += _unreadable_rows(unreadable, per_input, self.model.batch.of_inputs,
                                   method.family == "attention")
        for doubt in doubts:
            warnings.warn(doubt, AttributionWarning, stacklevel=3)
        notes += doubts
        return Attribution(method.name, per_input, tensors, sources, self.output, target,
                           predicted, predicted_score, target_score,
                           self.engine.session_providers, elapsed, options, run.outputs, notes,
                           explained, extras, output.signed,
                           objective.seed if isinstance(objective, Dense) else None,
                           unreadable)


def _dense_scores(objective: Dense, logits: np.ndarray) -> tuple:
    """(target, predicted, predicted score, explained score) per row of a dense objective;
    the prediction only where one place is explained."""
    explained = Objective.given(OutputSeed(objective.seed), logits).score(logits)
    target = np.zeros(0, np.int64) if objective.classes is None else objective.classes
    if objective.at is None:
        return target, None, None, explained
    return target, objective.at.argmax(axis=1), objective.at.max(axis=1), explained


def _ties(scores: np.ndarray) -> list[str]:
    """Rows whose top score is shared: the first of the tied classes was explained."""
    if scores.shape[1] < 2:
        return []
    top = np.sort(scores, axis=1)[:, -2:]
    rows = np.flatnonzero(top[:, 0] == top[:, 1])
    if not len(rows):
        return []
    first = rows[0]
    tied = np.flatnonzero(scores[first] == scores[first].max())
    return [f"{rows_text(rows)}: classes {', '.join(str(c) for c in tied[:4])} tie for the "
            f"highest score in row {first}; the first, {tied[0]}, was explained (pass a "
            "target to choose)"]


def _query_is_position(options: dict, place: Place, feeds: Mapping[str, np.ndarray],
                       model: Model) -> tuple[dict, Place]:
    """methods._tokens.query_is_position over the token count of the inputs."""
    lengths = [feeds[name].shape[1] for name in token_inputs(model) if feeds[name].ndim == 2]
    # The shortest: with a KV cache the mask also covers the cached positions.
    return query_is_position(options, place, min(lengths) if lengths else None)


# The kinds of map that are no explanation (unreadable_rows): a dataset row's `note`.
NOT_FINITE, ALL_ZERO, CONSTANT = "not finite", "all zero", "constant"


def unreadable_rows(attributions: Mapping[str, np.ndarray], axes: RowAxes
                    ) -> dict[str, np.ndarray]:
    """Per kind (NOT_FINITE, ALL_ZERO, CONSTANT), a bool [rows] mask of the rows whose
    attributions are NaN or infinite, every one exactly 0, or one same value (a constant map
    ranks no feature above another); {} where no input holds rows."""
    flat = _rows_flat(attributions, axes)
    if flat is None:
        return {}
    broken = ~np.all(np.isfinite(flat), axis=1)
    zero = ~np.any(flat, axis=1)
    same = ~zero & ~broken & (flat.shape[1] > 1) & np.all(flat == flat[:, :1], axis=1)
    return {NOT_FINITE: broken, ALL_ZERO: zero, CONSTANT: same}


def _rows_flat(attributions: Mapping[str, np.ndarray], axes: RowAxes) -> np.ndarray | None:
    """Every attribution of a row side by side, [rows, values]."""
    values = [np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1)
              for name, v in attributions.items()
              if (axis := rows_axis(axes, name, v)) is not None and v.size]
    return np.concatenate(values, axis=1) if values else None


def _unreadable_rows(kinds: Mapping[str, np.ndarray], attributions: Mapping[str, np.ndarray],
                     axes: RowAxes, attention: bool = False) -> list[str]:
    """What unreadable_rows found in `attributions` (`kinds`), in words: never to be shown as
    a result. `attention`: an attention method, whose map of a query is 0 when its row is
    its own one-hot in every layer."""
    found = []
    if np.any(kinds.get(NOT_FINITE, False)):
        found.append(f"attributions are NaN or infinite in "
                     f"{rows_text(np.flatnonzero(kinds[NOT_FINITE]))}: the method's arithmetic "
                     "overflowed or divided by 0 (a float16 model's range, or an op whose "
                     "derivative is infinite at the input, such as Sqrt at 0), so the map is no "
                     "explanation there")
    if np.any(kinds.get(ALL_ZERO, False)):
        found.append(f"every attribution is 0 in {rows_text(np.flatnonzero(kinds[ALL_ZERO]))}: "
                     + ("the maps read hold nothing beyond the explained query's own entry, "
                        "which is left out (the first token of a causal model attends only to "
                        "itself; gradient-weighted maps also when the gradient is 0), so the "
                        "map holds no information: explain a later query (-O query=N; by "
                        "default the explained position)"
                        if attention else
                        "the explained score does not change with the input where this method "
                        "looks (a constant output, a saturated activation, an input equal to "
                        "the baseline, or an op whose gradient is 0 almost everywhere on the "
                        "path)"))
    if np.any(kinds.get(CONSTANT, False)):
        rows = np.flatnonzero(kinds[CONSTANT])
        value = _rows_flat(attributions, axes)[rows[0], 0]
        found.append(f"every attribution has the same value ({value:.4g}) in "
                     f"{rows_text(rows)}: a constant map ranks no feature above another and "
                     "holds no information about what the score depends on")
    return found


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


def _cached_block(per_input: dict, cached: Sequence[str], extras: dict) -> dict:
    """A KV cache's inputs are no token map: their attributions leave `per_input` and are
    reported summed per row as one block (extras 'cached_block', 'cached_inputs')."""
    found = [name for name in cached if name in per_input]
    if found:
        blocks = [per_input.pop(name) for name in found]
        total = sum(np.asarray(b, np.float64).reshape(len(b), -1).sum(axis=1) for b in blocks)
        extras.update(cached_block=total.tolist(), cached_inputs=found)
    return extras
