"""GradientSHAP (expected gradients) as one graph: methods.gradient_shap runs it in process
and `export` saves it. Its draws run in a Loop, about `internal_batch_size` rows per
iteration (export.loop), so memory does not grow with n_samples.

Point p < n_samples of a row is draw p: background row j_p, alpha_p and, for stdevs > 0,
the noisy input x~_p = x + stdevs * z_p; the model runs at b + alpha (x~ - b), and the sum
of grad * (x~ - b) over the draws, divided by n_samples, is the attribution. The points
after the draws are the B background rows themselves (alpha 0, no weight in that sum): the
Loop sums the model's outputs there, whose mean is E_b[f(b)], the reference of completeness
(Erion et al. 2021: the attributions sum to S(x) - E_b[S(b)] in expectation), so the
program reports the convergence delta as Integrated Gradients does. They are packed N to a
point (point n_samples + q, block row i: background row q N + i; the last point's rows past
B repeat row B - 1 and are not summed), so B rows cost ceil(B / N) points, not B; where
the model has inputs that are not drawn (an integer mask: each row's own value pairs with
every background row), each background row is one point over all N rows.

The draws are export.random's generator, keyed by the seed input (export.noise.SEED, one
seed or one per row), the sample index and the element: alpha and j from the uniform stream
at sample DRAWS * STREAM + p (two doubles: alpha, cast to the input's type, and
floor(u * B)), shared by all inputs; input i's noise from the normal stream at i * STREAM +
p, as SmoothGrad draws it. Rows with one seed share the draws."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from onnx import TensorProto

from ..errors import InputError
from ..graph.shapes import TensorInfo
from .coalitions import BACKGROUND
from .graph import ExplainerGraph
from .loop import (
    Chunk,
    Walk,
    aliases,
    ceil_div,
    gradient_loop,
    int_min,
    repeated,
    weighted_blocks,
)
from .methods import (
    BASELINE_SCORE,
    SCORE,
    declare_delta,
    declare_per_input,
    explained_score,
    float_inputs,
    register_export,
)
from .noise import STREAM, as_double, row_size, seed_input
from .perturb import zeros
from .random import indices, normal, uniform

# The uniform stream of the draws' alpha and background row: past the inputs' noise streams.
DRAWS = 255


def background_sets(baselines, names: Sequence[str], rows: Mapping[str, tuple],
                    dtypes: Mapping[str, np.dtype]) -> dict[str, np.ndarray]:
    """Each input's background rows [B, *row] ([1, ..., 1] for a number, which broadcasts to
    any row) from the option: "zeros", a number, an array (rows [B, *row] or one row; one
    input) or a dict of them by input. `rows`: each input's row shape where known (None
    entries: a dim known only at run time). All inputs draw row j together: their B agree
    (or are 1). A dim of 1 broadcasts to the input's."""
    found = {name: _rows_of(_entry(baselines, name, names), name, rows[name], dtypes[name])
             for name in names}
    counts = {len(array) for array in found.values()} - {1}
    if len(counts) > 1:
        raise InputError(f"gradient_shap draws one background row for every input at once, "
                         f"so their background sets need the same number of rows (got "
                         f"{', '.join(f'{n}: {len(a)}' for n, a in found.items())})")
    return found


def _entry(baselines, name: str, names: Sequence[str]):
    if isinstance(baselines, Mapping):
        if name not in baselines:
            raise InputError(f"the baselines dict has no entry for input '{name}'")
        return baselines[name]
    if len(names) > 1 and np.ndim(baselines) > 0:
        raise InputError("the model has several inputs: pass gradient_shap's baselines as a "
                         "dict of background rows by input name")
    return baselines


def _rows_of(value, name: str, row: tuple, dtype) -> np.ndarray:
    if isinstance(value, str):
        if value.strip().lower() != "zeros":
            raise InputError(f"gradient_shap's baselines are 'zeros', a number or background "
                             f"rows, not '{value}'")
        value = 0.0
    array = np.asarray(value, dtype)
    if array.ndim == 0:
        return array.reshape((1,) * (len(row) + 1))
    if array.ndim == len(row):
        array = array[None]
    fits = array.ndim == len(row) + 1 and all(
        want is None or have in (1, want) for have, want in zip(array.shape[1:], row,
                                                                  strict=True))
    if not fits or len(array) == 0:
        shown = ", ".join("?" if d is None else str(d) for d in row)
        raise InputError(f"background rows for '{name}' must be shaped [B, {shown}] (or one "
                         f"row), got {array.shape}")
    return np.ascontiguousarray(array)


def row_dims(eg: ExplainerGraph, name: str) -> tuple:
    """One row's dims of input `name` as the model declares them (None: known at run time)."""
    shape = eg.b.info(name).shape or (None,) * eg.b.rank(name)
    return tuple(d if isinstance(d, int) else None for d in shape[1:])


@register_export("gradient_shap", ("n_samples", "stdevs", "baselines", "seed",
                                   "internal_batch_size"))
def gradient_shap(eg: ExplainerGraph, options: dict) -> None:
    """phi_i = mean_p (x~_p - b_p)_i d S(b_p + alpha_p (x~_p - b_p)) / d x_i (the module);
    extra outputs: the score at x, E_b[S(b)] and the convergence delta."""
    samples, stdev = int(options["n_samples"]), float(options["stdevs"])
    per_run = int(options["internal_batch_size"])
    if samples < 1 or stdev < 0 or per_run < 1:
        raise InputError("gradient_shap needs n_samples >= 1, stdevs >= 0 and "
                         "internal_batch_size >= 1")
    b = eg.b
    inputs = list(eg.sources) if eg.sources is not None else float_inputs(eg)
    eg.take_model_nodes()
    found = background_sets(options["baselines"], inputs,
                            {name: row_dims(eg, name) for name in inputs},
                            {name: b.np_dtype(name) for name in inputs})
    count = max(len(rows) for rows in found.values())
    backgrounds = {name: _background_input(eg, name, rows, count)
                   for name, rows in found.items()}
    seed = seed_input(eg, options["seed"])
    walk = _walk(eg, inputs, backgrounds, count, samples, stdev, seed)
    sums = gradient_loop(eg, walk, per_run)
    values = {}
    for name, total in zip(inputs, sums[:-1], strict=True):
        mean = b.op("Div", total, b.scalar(float(samples), TensorProto.DOUBLE))
        values[name] = b.op("Cast", mean, to=b.dtype(name))
        b.infos[values[name]] = b.info(name)
    declare_per_input(eg, values, f"GradientSHAP ({samples} draws over {count} background "
                      "rows)")
    _declare_completeness(eg, values, sums[-1], count)


def _background_input(eg: ExplainerGraph, name: str, rows: np.ndarray, count: int) -> str:
    """BACKGROUND + name, defaulting to `rows` (in process: the rows given, baked in and
    keyed by their digest, as Kernel SHAP's), expanded to [B, *row]."""
    b = eg.b
    key = eg.add_input(BACKGROUND + name, b.dtype(name), [len(rows), *[None] * (rows.ndim - 1)],
                       rows, f"the background rows of input '{name}' that gradient_shap draws "
                       f"its baselines from ({count} rows)")
    expanded = b.op("Expand", key, b.concat([b.ints([count]), b.dims(name, 1)], 0))
    shape = b.info(name).shape
    b.infos[expanded] = TensorInfo(b.dtype(name), None if shape is None else
                                   (count, *shape[1:]))
    return expanded


def _walk(eg: ExplainerGraph, inputs: list[str], backgrounds: dict[str, str], count: int,
          samples: int, stdev: float, seed: str) -> Walk:
    """The model at the draws' points and at the background points after them (the
    module); sums: per input, grad * (x~ - b) over the draws (double), then the outputs
    over the background rows (double: [elements of an output row] packed, else [N,
    elements])."""
    model, b = eg.model, eg.b
    order = [spec.name for spec in model.inputs]
    rows = aliases(eg, order)
    sizes = {name: row_size(b, name) for name in inputs} if stdev > 0 else {}
    n = eg.rows
    # A background row pairs with each row's own values of the inputs that are not drawn.
    packed = n if set(inputs) == set(order) else None
    differences: dict[str, str] = {}

    def feeds(bb, chunk: Chunk) -> dict[str, str]:
        drawn = bb.op("Less", chunk.index, bb.ints([samples]))
        alpha, row = _alpha_and_row(bb, seed, chunk.index, drawn, samples, count, packed)
        made = {name: repeated(bb, chunk, alias) for name, alias in rows.items()
                if name not in inputs}
        for name in inputs:
            x = rows[name]
            start = bb.op("Gather", backgrounds[name], row, axis=0)  # [k, S or N, *row]
            end = bb.unsqueeze(x, [0])
            if stdev > 0:
                end = _noisy(bb, end, seed, chunk.index, sizes[name], order.index(name), stdev)
            differences[name] = bb.op("Sub", end, start)  # [k, N, *row]
            scaled = bb.unsqueeze(bb.op("Cast", alpha, to=bb.dtype(name)),
                                  list(range(2, bb.rank(name) + 1)))
            points = bb.op("Add", start, bb.op("Mul", scaled, differences[name]))
            made[name] = bb.reshape(points, bb.concat([bb.ints([-1]), bb.dims(x, 1)], 0))
        return made

    def contributions(bb, chunk: Chunk, grads: dict[str, str]) -> list[str]:
        drawn = bb.op("Cast", bb.op("Less", chunk.index, bb.ints([samples])),
                      to=TensorProto.DOUBLE)
        parts = []
        for name in inputs:
            difference = differences[name]
            product = bb.op("Mul", bb.reshape(grads[name], bb.shape(difference)), difference)
            parts.append(weighted_blocks(bb, chunk, bb.op("Cast", product,
                                                          to=TensorProto.DOUBLE),
                                         drawn, rows[name]))
        return [*parts, _background_outputs(bb, eg.output, chunk, n, drawn, samples, count,
                                            packed)]

    if packed is not None:  # ceil(B / N) background points
        points = b.op("Add", ceil_div(b, b.ints([count]), n), b.ints([samples]))
        summed = zeros(b, [1])  # becomes [elements] in the first iteration
    else:  # the sum starts [N, 1] and becomes [N, elements] in the first iteration
        points, summed = samples + count, zeros(b, [n, 1])
    sums_like = [*(as_double(b, name) for name in inputs), summed]
    return Walk(model, points, rows, 1, inputs, feeds, contributions, sums_like)


def _noisy(bb, x: str, seed: str, index: str, size: str, stream: int, stdev: float) -> str:
    """x [1, N, *row] + stdev z, z [k, S, *row] input `stream`'s normal draws of the
    samples `index` (export.noise's streams)."""
    z = normal(bb, seed, bb.op("Add", index, bb.ints([stream * STREAM])), size, bb.dtype(x))
    z = bb.reshape(z, bb.concat([bb.ints([-1]), bb.shape(seed), bb.dims(x, 2)], 0))
    return bb.op("Add", x, bb.op("Mul", z, bb.scalar(stdev, x)))


def _background_outputs(bb, output: str, chunk: Chunk, rows: str, drawn: str, samples: int,
                        count: int, packed: str | None) -> str:
    """The model's outputs summed over the background rows of the chunk's background points
    (double [elements of an output row] packed, else [N, elements]). The chunk's points are
    the model run's last k N rows (export.loop feeds the clean rows first)."""
    at_points = bb.slice(output, bb.op("Neg", bb.op("Mul", chunk.k, rows)),
                         [np.iinfo(np.int64).max], [0])
    flat = bb.reshape(bb.op("Cast", at_points, to=TensorProto.DOUBLE),
                      bb.concat([chunk.k, rows, bb.ints([-1])], 0))
    background = bb.unsqueeze(bb.op("Sub", bb.const(np.array(1.0)), drawn), [1])
    if packed is None:
        return bb.reduce("ReduceSum", bb.op("Mul", flat, bb.unsqueeze(background, [2])),
                         [0], False)
    held = bb.op("Less", _background_rows(bb, chunk.index, samples, packed),
                 bb.ints([count]))  # [k, N]: not a packed point's padding
    weights = bb.op("Mul", background, bb.op("Cast", held, to=TensorProto.DOUBLE))
    return bb.reduce("ReduceSum", bb.op("Mul", flat, bb.unsqueeze(weights, [2])), [0, 1],
                     False)


def _alpha_and_row(bb, seed: str, index: str, drawn: str, samples: int, count: int,
                   packed: str | None) -> tuple[str, str]:
    """Each point's alpha (double [k, S]) and background row (int64 [k, S], or [k, N]
    packed): drawn for the draws, 0 and the background point's own rows for the others."""
    u = uniform(bb, seed, bb.op("Add", index, bb.ints([DRAWS * STREAM])), bb.ints([2]),
                TensorProto.DOUBLE)  # [k, S, 2]
    alpha, pick = (bb.squeeze(bb.slice(u, [i], [i + 1], [2]), [2]) for i in (0, 1))
    picked = bb.op("Cast", bb.op("Floor", bb.op("Mul", pick, bb.const(np.array(
        float(count))))), to=TensorProto.INT64)
    column = bb.unsqueeze(drawn, [1])
    alpha = bb.where(column, alpha, bb.const(np.array(0.0)))
    own = _background_rows(bb, index, samples, packed)
    if packed is not None:  # a packed point's padding repeats the last row (not summed)
        own = int_min(bb, own, bb.ints([count - 1]))
    return alpha, bb.where(column, picked, own)


def _background_rows(bb, index: str, samples: int, packed: str | None) -> str:
    """Each background point's background row (int64 [k, 1]); packed (`packed`: N), point
    samples + q holds rows q N .. q N + N - 1, one per block row ([k, N]; past B in the
    last point's padding). Negative at the draws."""
    own = bb.unsqueeze(bb.op("Sub", index, bb.ints([samples])), [1])
    if packed is None:
        return own
    return bb.op("Add", bb.op("Mul", own, packed), bb.unsqueeze(indices(bb, packed), [0]))


def _declare_completeness(eg: ExplainerGraph, values: dict[str, str], summed: str,
                          count: int) -> None:
    """The explained score at x, its mean E_b[S(b)] over the background rows (the scores
    are linear in the outputs: the score of the mean output) and the delta between the
    attributions' sum and their difference."""
    b = eg.b
    clean = eg.block(eg.batched(eg.output), 0)
    mean = b.op("Div", summed, b.const(np.array(float(count))))  # one row or N
    mean = b.op("Expand", b.reshape(mean, b.concat([b.ints([-1]), b.dims(clean, 1)], 0)),
                b.shape(clean))
    mean = b.op("Cast", mean, to=b.dtype(eg.output))
    b.infos[mean] = b.info(eg.output)
    ends = []
    for name, at, where in ((SCORE, clean, "input"),
                            (BASELINE_SCORE, mean, "background rows (their mean)")):
        ends.append(explained_score(eg, at))
        eg.declare(ends[-1], name, f"float [N]: the explained score at the {where}",
                   TensorInfo(b.dtype(eg.output), ("N",)))
    declare_delta(eg, values, b.op("Sub", *ends))
