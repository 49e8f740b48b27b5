"""SmoothGrad, SmoothGrad-squared and VarGrad as one graph: methods.smoothgrad runs it in
process and `export` saves it. The noisy copies run in a Loop, about `internal_batch_size`
rows per iteration (export.loop), so memory does not grow with n_samples.

The noise comes from export.random's counter-based generator, keyed by the seed input
SEED, the sample index and the element index within the row: copy s of model input i's row
is x + sigma * normal(seed, i * STREAM + s, elements), the same numbers in every run and
every runtime. The row's index is no part of the key. SEED takes one seed for all rows
(the export's default: the rows share the unit draws, each scaled by its own range) or one
per row; in process each row's seed is `row_seeds`, the option seed mixed with a digest of
the row's bytes, so rows draw independent noise and a row draws the same alone or anywhere
in a batch. The Loop's sums are carried in double: VarGrad's E[g^2] - E[g]^2 cancels."""

from __future__ import annotations

import hashlib

import numpy as np
from onnx import TensorProto

from ..autodiff.registry import GRADIENT
from ..errors import InputError
from ..graph.shapes import TensorInfo
from ..rules.guided import DECONVNET, GUIDED_BACKPROP
from .graph import ExplainerGraph, is_fed
from .loop import Walk, aliases, gradient_loop, repeated, weighted_blocks
from .methods import declare_per_input, float_inputs, register_export
from .noise_program import PROGRAM_BASES, program_sums
from .random import WORD, normal

BASES = {"saliency": GRADIENT, "input_x_gradient": GRADIENT,
         "guided_backprop": GUIDED_BACKPROP, "deconvnet": DECONVNET}
# The seed of the noise: int64 [1 or N] (one seed for all rows, or one per row).
SEED = "noise/seed"
# Model input i draws samples i * STREAM + s: inputs of one shape get different noise.
STREAM = 1 << 24


def _noise_tunnel(kind: str):
    def build(eg: ExplainerGraph, options: dict) -> None:
        base, samples = options["base"], int(options["n_samples"])
        level, per_run = float(options["noise_level"]), int(options["internal_batch_size"])
        if base not in BASES and base not in PROGRAM_BASES:
            raise InputError(f"{kind} runs over {', '.join([*BASES, *PROGRAM_BASES])}, not "
                             f"'{base}'")
        if samples < 1 or level < 0 or per_run < 1:
            raise InputError(f"{kind} needs n_samples >= 1, noise_level >= 0 and "
                             "internal_batch_size >= 1")
        b = eg.b
        inputs = list(eg.sources) if eg.sources is not None else float_inputs(eg)
        eg.take_model_nodes()
        sigmas = {name: _sigma(b, name, level) for name in inputs}
        seed = seed_input(eg, options["seed"])
        if base in BASES:
            parts = gradient_loop(eg, _noisy_walk(eg, inputs, sigmas, samples, base, seed),
                                  per_run, BASES[base])
        else:
            parts = program_sums(eg, base, options["base_options"], inputs,
                                 _copies_of(eg, inputs, sigmas, seed), samples, per_run,
                                 [as_double(b, name) for name in inputs for _ in (1, 2)])
        sums = dict(zip([(name, power) for name in inputs for power in (1, 2)], parts,
                        strict=True))
        values = {}
        for name in inputs:
            mean, square = (b.op("Div", sums[name, power],
                                 b.scalar(float(samples), TensorProto.DOUBLE))
                            for power in (1, 2))
            variance = b.op("Sub", square, b.op("Mul", mean, mean))
            value = {"smoothgrad": mean, "smoothgrad_sq": square,
                     # rounding can leave it just below 0; a variance is not
                     "vargrad": b.op("Max", variance, b.scalar(0.0, TensorProto.DOUBLE))}[kind]
            values[name] = b.op("Cast", value, to=b.dtype(name))
            b.infos[values[name]] = b.info(name)
        declare_per_input(eg, values, f"{kind} over {base} ({samples} noisy copies)")
    return build


def as_double(b, name: str) -> str:
    """`name` cast to double (the sums' type and shape)."""
    cast = b.op("Cast", name, to=TensorProto.DOUBLE)
    b.infos[cast] = TensorInfo(TensorProto.DOUBLE, b.info(name).shape)
    return cast


def row_size(b, name: str) -> str:
    """Elements per row of `name`, int64 [1]."""
    return b.reduce("ReduceProd", b.concat([b.ints([1]), b.dims(name, 1)], 0), [0], True)


def _noisy_copies(bb, index: str, x: str, sigma: str, seed: str, size: str, stream: int
                  ) -> str:
    """x + sigma * z for samples `index` [k]: k blocks of the N rows, z [k, S, *row] from
    the generator (S seeds: 1 or N) broadcast over the rows."""
    samples = bb.op("Add", index, bb.ints([stream * STREAM]))
    draws = normal(bb, seed, samples, size, bb.dtype(x))
    draws = bb.reshape(draws, bb.concat([bb.ints([-1]), bb.shape(seed), bb.dims(x, 1)], 0))
    copies = bb.op("Add", bb.unsqueeze(x, [0]), bb.op("Mul", draws, bb.unsqueeze(sigma, [0])))
    return bb.reshape(copies, bb.concat([bb.ints([-1]), bb.dims(x, 1)], 0))


def _sigma(b, name: str, level: float) -> str:
    """level * (max - min) of each row, 1 * level for a constant row."""
    axes = list(range(1, b.rank(name)))
    spread = b.op("Sub", b.reduce("ReduceMax", name, axes, True),
                  b.reduce("ReduceMin", name, axes, True))
    flat = b.equal(spread, b.scalar(0.0, name))
    sigma = b.op("Mul", b.where(flat, b.op("Add", spread, b.scalar(1.0, name)), spread),
                 b.scalar(level, name))
    b.infos[sigma] = b.info(name)
    return sigma


def check_seed(seed) -> int:
    """The noise seed: one of the generator's 2**32 streams, 0 .. 2**32 - 1."""
    if not 0 <= int(seed) < WORD:
        raise InputError(f"the noise seed must be in 0 .. 2**32 - 1, not {int(seed)}")
    return int(seed)


def row_seeds(rows: list[np.ndarray], seed: int) -> np.ndarray:
    """One seed per row (int64 [N], each in [0, 2**32)): a digest of the option seed and the
    row's bytes in every array of `rows` ([N, ...] each). Identical rows get one seed, other
    rows independent ones; the same row gets the same seed alone or in any batch."""
    seed = check_seed(seed).to_bytes(4, "little")
    count = len(rows[0]) if rows else 1
    out = np.empty(count, np.int64)
    for row in range(count):
        digest = hashlib.blake2b(seed, digest_size=4)
        for array in rows:
            digest.update(np.ascontiguousarray(array[row]).tobytes())
        out[row] = int.from_bytes(digest.digest(), "little")
    return out


def seed_input(eg: ExplainerGraph, seed) -> str:
    """SEED, defaulting to the option's seed (one for all rows); with FED it has no default
    (in-process runs feed `row_seeds`)."""
    default = None if is_fed(seed) else np.array([check_seed(seed)], np.int64)
    seeds = eg.add_input(SEED, TensorProto.INT64, ["seed_rows"], default,
                         "the seed of the noise, 0 .. 2**32 - 1 (feed one seed per row for "
                         "independent noise across rows; rows with one seed share the unit "
                         "draws, scaled to their range)")
    return _one_if_equal(eg.b, seeds)


def _one_if_equal(b, seeds: str) -> str:
    """The first seed alone where all are equal (in-process feeds one per row): the rows
    then share one set of draws, computed once instead of N times."""
    same = b.op("Equal", b.reduce("ReduceMin", seeds, [0], True),
                b.reduce("ReduceMax", seeds, [0], True))
    count = b.where(same, b.ints([1]), b.shape(seeds))
    return b.slice(seeds, [0], count, [0])


def _copies_of(eg: ExplainerGraph, inputs: list[str], sigmas: dict[str, str], seed: str):
    """copies(builder, sample indices, input): the noisy copies of the input's rows, as the
    Loop of _noisy_walk draws them."""
    order = [spec.name for spec in eg.model.inputs]
    sizes = {name: row_size(eg.b, name) for name in inputs}

    def copies(bb, index: str, name: str, rows: str | None = None) -> str:
        """`rows`: where the body reads the input's N rows (the input itself by default)."""
        return _noisy_copies(bb, index, rows or name, sigmas[name], seed, sizes[name],
                             order.index(name))
    return copies


def _noisy_walk(eg: ExplainerGraph, inputs: list[str], sigmas: dict[str, str], samples: int,
                base: str, seed: str) -> Walk:
    """The model at `samples` noisy copies of every row; per input, the sums of the base
    method's gradient and of its square."""
    model = eg.model
    rows = aliases(eg, [spec.name for spec in model.inputs])
    copies = _copies_of(eg, inputs, sigmas, seed)
    noisy: dict[str, str] = {}

    def feeds(bb, chunk) -> dict[str, str]:
        made = {name: repeated(bb, chunk, alias) for name, alias in rows.items()
                if name not in inputs}
        for name in inputs:
            made[name] = noisy[name] = copies(bb, chunk.index, name, rows[name])
        return made

    def contributions(bb, chunk, grads) -> list[str]:
        parts = []
        for name in inputs:
            g = grads[name]
            if base == "saliency":
                g = bb.op("Abs", g)
            elif base == "input_x_gradient":
                g = bb.op("Mul", g, noisy[name])
            g = bb.op("Cast", g, to=TensorProto.DOUBLE)
            parts += [weighted_blocks(bb, chunk, value, None, rows[name])
                      for value in (g, bb.op("Mul", g, g))]
        return parts

    doubles = {name: as_double(eg.b, name) for name in inputs}
    sums_like = [doubles[name] for name in inputs for _ in (1, 2)]
    return Walk(model, samples, rows, 1, inputs, feeds, contributions, sums_like)


for _kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
    register_export(_kind)(_noise_tunnel(_kind))
