"""SmoothGrad, SmoothGrad-squared and VarGrad baked into the graph: the noisy copies are drawn
by a RandomNormalLike node with a `seed` attribute and run in a Loop, about
`internal_batch_size` rows per iteration (export.loop), so memory does not grow with
n_samples.

ONNX Runtime seeds that generator when the session is created and each draw continues its
sequence, so the first run of a fresh session is reproducible and later runs are new samples."""

from __future__ import annotations

from ..autodiff.registry import GRADIENT
from ..errors import InputError
from ..rules.guided import DECONVNET, GUIDED_BACKPROP
from .graph import ExplainerGraph
from .loop import Walk, aliases, gradient_loop, repeated, weighted_blocks
from .methods import declare_per_input, float_inputs, register_export

BASES = {"saliency": GRADIENT, "input_x_gradient": GRADIENT,
         "guided_backprop": GUIDED_BACKPROP, "deconvnet": DECONVNET}


def _noise_tunnel(kind: str):
    def build(eg: ExplainerGraph, options: dict) -> None:
        base, samples = options["base"], int(options["n_samples"])
        level, per_run = float(options["noise_level"]), int(options["internal_batch_size"])
        if base not in BASES:
            raise InputError(f"exported {kind} runs over {', '.join(BASES)}, not '{base}'")
        if samples < 1 or level < 0 or per_run < 1:
            raise InputError(f"{kind} needs n_samples >= 1, noise_level >= 0 and "
                             "internal_batch_size >= 1")
        b, inputs = eg.b, float_inputs(eg)
        eg.take_model_nodes()
        sigmas = {name: _sigma(b, name, level) for name in inputs}
        walk = _noisy_walk(eg, inputs, sigmas, samples, base, float(options["seed"]))
        sums = dict(zip([(name, power) for name in inputs for power in (1, 2)],
                        gradient_loop(eg, walk, per_run, BASES[base]), strict=True))
        values = {}
        for name in inputs:
            mean, square = (b.op("Div", sums[name, power], b.scalar(float(samples), name))
                            for power in (1, 2))
            variance = b.op("Sub", square, b.op("Mul", mean, mean))
            values[name] = {"smoothgrad": mean, "smoothgrad_sq": square,
                            # rounding can leave it just below 0; a variance is not
                            "vargrad": b.op("Max", variance, b.scalar(0.0, name))}[kind]
        declare_per_input(eg, values, f"{kind} over {base} ({samples} noisy copies)")
    return build


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


def _noisy_walk(eg: ExplainerGraph, inputs: list[str], sigmas: dict[str, str], samples: int,
                base: str, seed: float) -> Walk:
    """The model at `samples` noisy copies of every row; per input, the sums of the base
    method's gradient and of its square."""
    model = eg.model
    rows = aliases(eg, [spec.name for spec in model.inputs])
    noisy: dict[str, str] = {}

    def feeds(bb, chunk) -> dict[str, str]:
        made = {name: repeated(bb, chunk, alias) for name, alias in rows.items()}
        for name in inputs:
            draws = bb.op("RandomNormalLike", made[name], dtype=bb.dtype(rows[name]), seed=seed)
            scale = repeated(bb, chunk, sigmas[name])
            made[name] = noisy[name] = bb.op("Add", made[name], bb.op("Mul", draws, scale))
        return made

    def contributions(bb, chunk, grads) -> list[str]:
        parts = []
        for name in inputs:
            g = grads[name]
            if base == "saliency":
                g = bb.op("Abs", g)
            elif base == "input_x_gradient":
                g = bb.op("Mul", g, noisy[name])
            parts += [weighted_blocks(bb, chunk, value, None, rows[name])
                      for value in (g, bb.op("Mul", g, g))]
        return parts

    sums_like = [rows[name] for name in inputs for _ in (1, 2)]
    return Walk(model, samples, rows, 1, inputs, feeds, contributions, sums_like)


for _kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
    register_export(_kind)(_noise_tunnel(_kind))
