"""What an explanation explains, decided once from the form of the explained output, with
one rule for every method family.

- Class scores: [N, C], where axes of size 1 after the class axis do not count, so the
  [N, C, 1, 1] outputs of the classic ONNX model zoo's SqueezeNet and DenseNet are
  classifiers too. A class per row is explained (the predicted one by default).
- One value per row: [N]. The value itself is explained; a class target is an error.
- Class labels: an integer [N] or [N, k] output (an ArgMax or TopK head). Perturbation
  methods explain whether the target class was chosen; gradient methods need scores.
- Next-token logits: a float [N, T, V] output of a model with integer [N, T] inputs (a
  causal language model; checked on the run that T is the token ids' length). The logit of the
  next token at the last non-padding position of each row is explained (the predicted
  token unless a target names one); padding is read from the attention-mask inputs. It is
  resolved once on the clean forward run into an output seed (a one-hot at [row, position,
  token]) that every family already applies; methods that run one gradient program compute
  the same seed inside it (autodiff.seed.dense_weights), with no clean forward before it.
- Scores per position: a float [N, T, C] output that is not over the vocabulary (a CTC
  recogniser, a token classifier). The summed score of the predicted class at every
  position is explained; positions where an attention-mask input is 0 are left out.
  `position` explains one position instead.
- Scores per pixel: a float [N, C, H, W] output (segmentation logits). The summed score of
  the predicted class at every pixel; `pixel` (y, x) explains one pixel, `region` the box
  rows y0:y1, columns x0:x1 (half-open, as in Python slices).
  A target names one class (or one per row) that replaces the predicted class at every
  explained position or pixel.
  These three "dense" objectives are resolved once on the clean forward run into an output
  seed (1 at each explained [position, class]) that every family applies: gradient methods
  seed the backward pass with it, perturbation methods score sum(seed * output) per row.
- Anything else (rank 5 and more) has no single score per row: every family refuses it
  unless the user weights the output with an output seed.

The result is one typed value, Objective (a class per row, labels, one value per row, or
output-seed weights, dense objectives included), resolved once on the clean run: methods
select its rows for their copies (take, repeat, tile), score output batches with it and
feed it to the gradient program, instead of each writing that selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import InputError, OnnxplainError
from .graph.attention import find_attention
from .graph.model import Model
from .graph.op_kinds import CASTS, CONCATS, CONTROL_FLOW, VALUE_MOVERS
from .graph.padding import real_positions
from .graph.sources import embedding_rows
from .inputs import batch_size, prepare_target

CLASS, VALUE, LABELS, OTHER = "class", "value", "labels", "other"
NEXT_TOKEN = "next_token"  # [N, T, V] logits: the next token at the last real position
SEQUENCE = "sequence"  # [N, T, C] scores per position: the predicted class at every position
SPATIAL = "spatial"  # [N, C, H, W] scores per pixel: the predicted class at every pixel
DENSE = (NEXT_TOKEN, SEQUENCE, SPATIAL)  # objectives read at positions of the output
UNKNOWN = "unknown"  # no shape facts: decided on the arrays a run returns


def class_axes(dims: Sequence) -> tuple:
    """`dims` without the axes of size 1 that follow the class axis (axis 1)."""
    dims = tuple(dims)
    end = len(dims)
    while end > 2 and dims[end - 1] == 1:
        end -= 1
    return dims[:end]


def output_form(model: Model, output: str) -> str:
    """CLASS, VALUE, LABELS, OTHER or UNKNOWN for the declared (or inferred) shape of
    `output`."""
    info = model.infos.get(output)
    if info is None or info.shape is None:
        return UNKNOWN
    rank = len(class_axes(info.shape))
    if info.dtype is not None and not info.is_float and info.numpy_dtype.kind in "iub":
        return LABELS if rank in (1, 2) else OTHER
    if rank == 3:  # a language model's logits per position, else a tag/CTC sequence
        return NEXT_TOKEN if _over_the_vocabulary(model, info.shape[-1]) else SEQUENCE
    return {2: CLASS, 1: VALUE, 4: SPATIAL}.get(rank, OTHER)


def _over_the_vocabulary(model: Model, classes) -> bool:
    """Whether an [N, T, V] output scores the token vocabulary (V = the rows of the table the
    token ids look up): a language model. A token classifier's [N, T, C] is not one."""
    return isinstance(classes, int) and any(
        embedding_rows(model, name) == classes for name in token_inputs(model))


def token_inputs(model: Model) -> list[str]:
    """Integer inputs shaped [batch, sequence]: token ids (or their mask)."""
    return [spec.name for spec in model.inputs
            if spec.info.dtype is not None and spec.numpy_dtype.kind in "iu"
            and spec.dims is not None and len(spec.dims) == 2]


def class_count(model: Model, output: str) -> int | None:
    """The static number of classes of a CLASS output, else None."""
    info = model.infos.get(output)
    if info is None or output_form(model, output) != CLASS:
        return None
    count = class_axes(info.certain or info.shape)[1]
    return count if isinstance(count, int) else None


ROWS_ADVICE = ("its rows are not the input's rows (a Flatten, Tile, Concat or reduction over the "
               "batch axis?): explain an output with one row per input row (--output)")


# Ops that pass class labels on unchanged in value (input 0 holds them: a Concat's other
# inputs may not), and the outputs of standard ops that are class labels.
_LABEL_CARRIERS = (VALUE_MOVERS - CONCATS) | CASTS
_LABEL_MAKERS = {"ArgMax": 0, "ArgMin": 0, "TopK": 1}


def label_source(model: Model, output: str) -> bool | None:
    """Whether the integer tensor `output` holds class labels by the graph that makes it: True
    when an ArgMax/ArgMin or TopK's indices make it (through casts and reshapes), False when a
    standard op makes it from anything else (a BitCast, arithmetic, an input as it is), None
    where the graph cannot tell (an op outside the standard domain, control flow)."""
    made = model.node_by_output
    name, seen = output, set()
    while name in made and name not in seen:
        seen.add(name)
        node = made[name]
        if node.domain not in ("", "ai.onnx") or node.op_type in CONTROL_FLOW:
            return None
        if _LABEL_MAKERS.get(node.op_type) == list(node.output).index(name):
            return True
        if node.op_type not in _LABEL_CARRIERS or not node.input:
            return False
        name = node.input[0]
    return False


def check_labels(model: Model, output: str) -> None:
    """An InputError unless the integer `output` read as class labels is made as labels are:
    any other integer tensor (a BitCast of floats, a count) would be read as class indices."""
    if label_source(model, output) is False:
        raise InputError(f"output {model.output(output).describe()} holds integers that no "
                         "ArgMax or TopK makes, so they are neither class labels nor scores: "
                         "choose a float output with --output")


def declared_rows(model: Model, output: str) -> bool | None:
    """Whether `output` has one row per input row by its declared dims: True where the
    inputs' batch symbol is in them (or axis 0 is the fixed batch size), False for a scalar
    or another fixed size, None where only a run can tell."""
    dims = model.output(output).dims
    batch = model.batch
    if dims is None:
        return None
    if not dims:
        return False
    if batch.symbol is not None and batch.symbol in dims:
        return True
    if not batch.symbolic and isinstance(dims[0], int):
        return dims[0] == batch.size
    return None


def check_rows(model: Model, output: str, shape: Sequence[int] | None = None,
               rows: int | None = None) -> None:
    """An InputError unless `output` has one row per input row: on its declared dims where
    they tell (a scalar; a size other than the fixed batch), else on the `shape` a run gave
    for `rows` input rows. Scores are read row by row: any other output would be indexed as
    if it were, or fail inside ONNX Runtime."""
    dims = model.output(output).dims
    batch = model.batch
    if declared_rows(model, output) is False:
        declared = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
        fixed = "" if batch.symbolic else f" for inputs whose batch is fixed to {batch.size}"
        raise InputError(f"output '{output}' is declared {declared}{fixed}: {ROWS_ADVICE}")
    if shape is None or rows is None:
        return
    axis = batch.axis_in(dims)
    if axis is None or len(shape) <= axis or shape[axis] != rows:
        raise InputError(f"output '{output}' has shape {list(shape)} for {rows} input "
                         f"row{'s' * (rows != 1)}: {ROWS_ADVICE}")


def require_objective(model: Model, output: str, *, seeded: bool, targeted: bool) -> str:
    """The output's form, or an InputError saying what to do when it has no score per row
    (`seeded`: an output seed is given; `targeted`: explicit classes are)."""
    check_rows(model, output)
    form = output_form(model, output)
    spec = model.output(output)
    if spec.info.dtype is not None and not spec.is_float and (
            seeded or form not in (LABELS, UNKNOWN)):
        raise InputError(f"output {spec.describe()} holds integers, not scores, so no score "
                         "per row can be read from it (only [batch] or [batch, k] class "
                         "labels are explained as such): choose a float output with --output")
    if spec.info.dtype is not None and not spec.is_float:
        check_labels(model, output)  # read as class labels below
    if seeded:
        return form
    if form == OTHER:
        raise InputError(f"output {spec.describe()} is neither class scores [batch, classes], "
                         "scores per position ([batch, positions, classes] or [batch, classes, "
                         "height, width]) nor one value per row, so no score per row can be "
                         "explained: pass "
                         "an output seed (--output-seed w.npy: explains sum(w * output)) or "
                         "choose another output with --output")
    if form == VALUE and targeted:
        raise InputError(f"output {spec.describe()} has one value per row and no class axis: "
                         "leave the target unset (the value itself is explained)")
    return form


def check_output_seed(model: Model, output: str, seed, rows: int) -> np.ndarray:
    """`seed` as weights on `output` for `rows` rows: numeric, shaped like the output (the
    declared static axes), in its type; else an InputError."""
    spec = model.output(output)
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
                         f"'{output}' is {expected} with {rows} rows")
    return np.ascontiguousarray(values, dtype=spec.numpy_dtype)


def class_scores(output: np.ndarray) -> np.ndarray | None:
    """The [N, C] view of a class-score array (trailing axes of size 1 dropped), else None."""
    if output.dtype.kind != "f" or output.ndim < 2:
        return None
    core = class_axes(output.shape)
    return output.reshape(core) if len(core) == 2 else None


def describe_objective(objective: str, output: str, place: str = "") -> str:
    """One plain sentence: what was differentiated or scored, for the console and summary
    (`place`: Place.text() of a dense objective read at one place)."""
    return {
        "class": f"the score of the target class in output '{output}'",
        "labels": f"whether output '{output}' chose the target class",
        "output_seed": f"sum(output_seed * {output}) per row",
        "sum": f"the value of output '{output}' per row",
        "next_token": f"the logit of the next token "
                      f"{place or 'at the last non-padding position'} in output '{output}'",
        "sequence": f"the score of the target class (default: the predicted one) "
                    f"{place or 'summed over every non-padding position'} of output "
                    f"'{output}'",
        "spatial": f"the score of the target class (default: the predicted one) "
                   f"{place or 'summed over every pixel'} of output '{output}'",
        "none": f"no score of output '{output}': the method reads the model's attention "
                "alone",
    }.get(objective, objective)


def mask_inputs(model: Model) -> tuple[str, ...]:
    """Graph inputs that mask padding: those the attention masks are computed from, else
    inputs named like an attention mask."""
    try:
        names = {name for layer in find_attention(model) for name in layer.mask_inputs}
    except OnnxplainError:  # fused attention: no maps to read the masks from
        names = set()
    if not names:
        names = {spec.name for spec in model.inputs if "attention_mask" in spec.name.lower()}
    return tuple(sorted(names))


def last_positions(feeds: Mapping[str, np.ndarray], masks: Sequence[str], rows: int,
                   length: int) -> np.ndarray:
    """The last non-padding position of each row (padding: 0 in a [rows, length] mask
    input, or in the last `length` columns of a [rows, past + length] one: a KV cache's
    mask covers the cached positions first), else length - 1."""
    real = real_positions(feeds, masks, rows, length, cached=True)
    empty = np.flatnonzero(~real.any(axis=1))
    if len(empty):
        raise InputError(f"row {int(empty[0])} is all padding: its attention mask has no "
                         "non-zero entry, so there is no next token to explain")
    return (length - 1 - np.argmax(real[:, ::-1], axis=1)).astype(np.int64)


Box = tuple[tuple[int, int], tuple[int, int]]  # ((y0, y1), (x0, x1)), half-open


@dataclass(frozen=True)
class Place:
    """Where a dense objective is read: every (real) position or pixel by default (all None);
    `position` one position of a sequence (for next-token logits: the position whose logits
    predict the next token), `pixel` one (y, x) of a map, `region` a box of it."""

    position: int | None = None
    pixel: tuple[int, int] | None = None
    region: Box | None = None

    def text(self) -> str:
        if self.position is not None:
            return f"at position {self.position}"
        if self.pixel is not None:
            return f"at pixel (y={self.pixel[0]}, x={self.pixel[1]})"
        if self.region is not None:
            (y0, y1), (x0, x1) = self.region
            return f"summed over the region y {y0}:{y1}, x {x0}:{x1}"
        return ""


EVERYWHERE = Place()


def make_place(position=None, pixel=None, region=None) -> Place:
    """A Place from the API's options, their types checked: position an int, pixel (y, x),
    region ((y0, y1), (x0, x1))."""
    try:
        return Place(None if position is None else _index(position),
                     None if pixel is None else _pair(pixel),
                     None if region is None else (_pair(region[0]), _pair(region[1])))
    except (TypeError, ValueError, IndexError, KeyError):
        raise InputError("position is an int, pixel (y, x) and region ((y0, y1), (x0, x1)); "
                         f"got position={position!r}, pixel={pixel!r}, region={region!r}"
                         ) from None


def _index(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(value)
    return int(value)


def _pair(values) -> tuple[int, int]:
    first, second = values
    return _index(first), _index(second)


@dataclass(frozen=True)
class Dense:
    """A dense objective resolved on the clean forward run (`outputs`): `seed` is 1 at each
    explained [position, class] of the output. `classes`: per row the explained class where
    one is (a target, or the class at the one explained place); `at`: the [rows, classes]
    scores at the one explained place (next token, position, pixel), else None."""

    form: str
    seed: np.ndarray
    place: Place
    outputs: Mapping[str, np.ndarray]
    classes: np.ndarray | None = None
    at: np.ndarray | None = None
    positions: np.ndarray | None = None  # sequences: the one explained position per row


def check_place(form: str, place: Place, spec_text: str) -> None:
    """An InputError when `place` does not fit the output's form."""
    if place == EVERYWHERE:
        return
    chosen = [n for n in ("position", "pixel", "region") if getattr(place, n) is not None]
    if len(chosen) > 1:
        raise InputError(f"give one of position, pixel or region, not {' and '.join(chosen)}")
    spatial = place.position is None
    if form not in DENSE or spatial != (form == SPATIAL):
        wanted = {SPATIAL: "[batch, classes, height, width] map",
                  SEQUENCE: "[batch, positions, classes] sequence"}
        kind = "a " + (wanted[SPATIAL] if spatial else wanted[SEQUENCE])
        raise InputError(f"{chosen[0]} needs {kind} output; output {spec_text} is not one")


def check_place_fits(form: str, place: Place, dims: Sequence | None) -> None:
    """The checks resolve_dense makes, on the declared static axes (an exported explainer
    fixes its place before any input is seen; symbolic axes are not checked)."""
    if place == EVERYWHERE or dims is None or form not in DENSE:
        return
    if form != SPATIAL and isinstance(dims[1], int):
        _position(place.position, dims[1])
    if form == SPATIAL and all(isinstance(d, int) for d in dims[2:4]):
        _spatial_mask((dims[2], dims[3]), place, 1)


def resolve_dense(model: Model, form: str, output: str, feeds: Mapping[str, np.ndarray],
                  outputs: Mapping[str, np.ndarray], target, place: Place = EVERYWHERE
                  ) -> Dense:
    """The dense objective of `output` (objective): its seed on the clean `outputs`."""
    scores = outputs[output]
    check_rows(model, output, scores.shape, batch_size(feeds, model.batch.of_inputs))
    spatial = form == SPATIAL
    view = np.moveaxis(scores, 1, -1) if spatial else scores  # classes last
    rows, classes = view.shape[0], view.shape[-1]
    where = (_spatial_mask(view.shape[1:3], place, rows) if spatial else
             _sequence_mask(model, form, feeds, view.shape[1], place, rows))
    given = None if target is None else prepare_target(target, rows, classes)
    chosen = (view.argmax(axis=-1) if given is None else np.broadcast_to(
        given.reshape((rows,) + (1,) * (view.ndim - 2)), view.shape[:-1]))
    hot = (chosen[..., None] == np.arange(classes)) & where[..., None]
    seed = np.ascontiguousarray(np.moveaxis(hot, -1, 1) if spatial else hot, scores.dtype)
    flat = where.reshape(rows, -1)
    if flat.sum(axis=1).max() != 1:  # summed over several places
        return Dense(form, seed, place, outputs, given)
    index = flat.argmax(axis=1)
    at = view.reshape(rows, -1, classes)[np.arange(rows), index]
    return Dense(form, seed, place, outputs,
                 chosen.reshape(rows, -1)[np.arange(rows), index].astype(np.int64), at,
                 None if spatial else index)


def _sequence_mask(model: Model, form: str, feeds: Mapping[str, np.ndarray], length: int,
                   place: Place, rows: int) -> np.ndarray:
    """[rows, length]: the explained positions: the next-token one (last real), the given
    one, or every position not masked as padding."""
    masks = mask_inputs(model)
    if form == NEXT_TOKEN:
        if not any(feeds[name].shape == (rows, length) for name in token_inputs(model)):
            raise InputError(f"the explained output has {length} positions but no token-id "
                             f"input has {length}, so it holds no next-token logits: pass an "
                             "output seed (--output-seed w.npy)")
        positions = (last_positions(feeds, masks, rows, length) if place.position is None
                     else np.full(rows, _position(place.position, length)))
        return np.arange(length) == positions[:, None]
    real = real_positions(feeds, masks, rows, length, cached=False)
    if place.position is None:
        if not real.any(axis=1).all():
            raise InputError(f"row {int(np.argmin(real.any(axis=1)))} is all padding: its "
                             "attention mask has no non-zero entry")
        return real
    position = _position(place.position, length)
    padded = np.flatnonzero(~real[:, position])
    if len(padded):
        raise InputError(f"position {position} is padding in row {int(padded[0])} (its "
                         "attention mask is 0 there)")
    return np.broadcast_to(np.arange(length) == position, (rows, length))


def _position(position: int, length: int) -> int:
    if not 0 <= position < length:
        raise InputError(f"position {position} is out of range: the output has {length} "
                         f"positions (0 to {length - 1})")
    return position


def _spatial_mask(size: tuple[int, int], place: Place, rows: int) -> np.ndarray:
    """[rows, H, W]: the explained pixels (all, one, or a box)."""
    height, width = size
    where = np.zeros(size, dtype=bool)
    if place.pixel is not None:
        y, x = place.pixel
        if not (0 <= y < height and 0 <= x < width):
            raise InputError(f"pixel (y={y}, x={x}) is outside the {height}x{width} output "
                             "map")
        where[y, x] = True
    elif place.region is not None:
        (y0, y1), (x0, x1) = place.region
        if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
            raise InputError(f"region y {y0}:{y1}, x {x0}:{x1} is empty or outside the "
                             f"{height}x{width} output map (half-open: 0 <= y0 < y1 <= "
                             f"{height}, 0 <= x0 < x1 <= {width})")
        where[y0:y1, x0:x1] = True
    else:
        where[:] = True
    return np.broadcast_to(where, (rows, height, width))


def is_labels(output: np.ndarray) -> bool:
    """Class labels per row rather than scores: an ArgMax head [N], or a TopK head's
    indices [N, k] (best first)."""
    return output.ndim in (1, 2) and output.dtype.kind in "iub"


def decisions(output: np.ndarray) -> np.ndarray:
    """The class each row was given by a label output: the label, or the first of k."""
    return output if output.ndim == 1 else output[:, 0]


@dataclass(frozen=True)
class OutputSeed:
    """An objective given as weights on the explained output: sum(values * output) per row.
    `clean`: the outputs of the clean forward run the weights were resolved on (a dense
    objective), so that methods do not run it again."""

    values: np.ndarray
    clean: Mapping[str, np.ndarray] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class DenseObjective:
    """A dense objective (DENSE) the gradient program computes from its own outputs
    (autodiff.seed.dense_weights) rather than from a separate clean forward run: `form` and
    `place` as resolve_dense takes them, `target` the class (or None: the predicted one).
    The explainer resolves the reported pieces from the run's outputs."""

    form: str
    place: Place
    target: object = None


SEEDED = "output_seed"  # Objective.kind: weights on the output (an output seed, a dense one)


@dataclass(frozen=True, eq=False)
class Objective:
    """The explained score of each row, resolved once from the target and the clean outputs;
    every method selects, repeats and scores it through here rather than by hand.

    `kind` CLASS: `values` holds the class per row ([N] int64), the score is that class's;
    LABELS: the class per row, the score whether the label output chose it (0 or 1);
    SEEDED: `values` holds weights on the output per row, the score is sum(values * output);
    VALUE: one value per row is the score (`values`: the target as given, which the engine
    refuses for want of a class axis; an output of other shapes is refused when scored)."""

    kind: str
    values: np.ndarray | None = None

    @classmethod
    def resolve(cls, target, output: np.ndarray) -> Objective:
        """From the user's target (None: the predicted class, a class or one per row, an
        OutputSeed) and the explained output of the clean run."""
        if isinstance(target, OutputSeed):
            return cls(SEEDED, target.values)
        if is_labels(output):
            return cls(LABELS, decisions(output).astype(np.int64) if target is None
                       else prepare_target(target, output.shape[0], None))
        scores = class_scores(output)
        if scores is None:
            return cls(VALUE, target)
        if target is None:
            return cls(CLASS, scores.argmax(axis=1).astype(np.int64))
        return cls(CLASS, prepare_target(target, scores.shape[0], scores.shape[1]))

    @classmethod
    def given(cls, target, output: np.ndarray) -> Objective:
        """From a target already explicit per row (resolve's `feed()`), for `output`'s form;
        an Objective is returned as it is."""
        if isinstance(target, Objective):
            return target
        if isinstance(target, OutputSeed):
            return cls(SEEDED, target.values)
        if is_labels(output):
            return cls(LABELS, np.asarray(target))
        return cls(CLASS if class_scores(output) is not None else VALUE, target)

    def take(self, rows) -> Objective:
        """The objective of rows `rows` (indices or a mask), e.g. the row each copy came from."""
        if self.values is None or np.ndim(self.values) == 0:  # no per-row values to select
            return self
        return replace(self, values=np.asarray(self.values)[rows])

    def repeat(self, times: int) -> Objective:
        """For inputs whose rows were repeated `times` times each, interleaved (copies of a row
        next to each other: SmoothGrad's samples, perturbed copies)."""
        return self.take(np.repeat(np.arange(self._rows()), times))

    def tile(self, times: int) -> Objective:
        """For inputs stacked `times` times, block after block (IG's path points, DeepLIFT's
        input and reference halves)."""
        return self.take(np.tile(np.arange(self._rows()), times))

    def _rows(self) -> int:
        return 0 if self.values is None or np.ndim(self.values) == 0 else len(self.values)

    def score(self, output: np.ndarray) -> np.ndarray:
        """[rows] float64: the explained score of each row of an output batch."""
        if self.kind == SEEDED:
            weights = self.values.reshape(self.values.shape[0], -1)
            return (weights * output.reshape(output.shape[0], -1)).sum(axis=1, dtype=np.float64)
        if self.kind == LABELS:
            return (decisions(output) == np.asarray(self.values)).astype(np.float64)
        scores = class_scores(output) if self.kind == CLASS else None
        if scores is not None:
            return scores[np.arange(scores.shape[0]), self.values].astype(np.float64)
        if output.ndim == 1:
            return output.astype(np.float64)
        raise InputError(f"the explained output has shape {tuple(output.shape)}: neither "
                         "class scores [batch, classes] nor one value per row; pass an "
                         "output seed")

    def feed(self):
        """What Engine.gradients takes: the class per row, an OutputSeed, or the target as
        given (None for one value per row)."""
        return OutputSeed(self.values) if self.kind == SEEDED else self.values

    @property
    def name(self) -> str:
        """The run's objective: "class", "output_seed" or "sum" (describe_objective's keys)."""
        return {CLASS: "class", LABELS: "class", SEEDED: "output_seed"}.get(self.kind, "sum")

    @property
    def classes(self) -> np.ndarray | None:
        """The explained class per row, where a class is explained."""
        return np.asarray(self.values, dtype=np.int64) if self.name == "class" else None

    def describe(self, output: str) -> str:
        """The `explained: ...` sentence."""
        return describe_objective(self.name, output)
