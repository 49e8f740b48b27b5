"""SmoothGrad, SmoothGrad-squared and VarGrad baked into the graph: the noisy copies are drawn
by a RandomNormalLike node with a `seed` attribute, folded into the batch axis.

ONNX Runtime seeds that generator when the session is created and each run draws new noise,
so the first run of a fresh session is reproducible and later runs are new samples."""

from __future__ import annotations

from ..autodiff.registry import GRADIENT
from ..errors import InputError
from ..rules.guided import DECONVNET, GUIDED_BACKPROP
from .graph import ExplainerGraph
from .methods import declare_per_input, float_inputs, register_export

BASES = {"saliency": GRADIENT, "input_x_gradient": GRADIENT,
         "guided_backprop": GUIDED_BACKPROP, "deconvnet": DECONVNET}
_DEFAULTS = {"base": "saliency", "noise_level": 0.15, "n_samples": 25, "seed": 0}


def _noise_tunnel(kind: str):
    def build(eg: ExplainerGraph, options: dict) -> None:
        base, samples = options["base"], int(options["n_samples"])
        level = float(options["noise_level"])
        if base not in BASES:
            raise InputError(f"exported {kind} runs over {', '.join(BASES)}, not '{base}'")
        if samples < 1 or level < 0:
            raise InputError(f"{kind} needs n_samples >= 1 and noise_level >= 0")
        b, inputs = eg.b, float_inputs(eg)
        noisy: dict[str, str] = {}

        def copies(b, name: str) -> str:
            rank = b.rank(name)
            axes = list(range(1, rank))
            spread = b.op("Sub", b.reduce("ReduceMax", name, axes, True),
                          b.reduce("ReduceMin", name, axes, True))
            flat = b.op("Equal", spread, b.scalar(0.0, name))
            sigma = b.op("Mul", b.where(flat, b.op("Add", spread, b.scalar(1.0, name)),
                                        spread), b.scalar(level, name))
            repeated = b.concat([name] * samples, axis=0)
            draws = b.op("RandomNormalLike", repeated, dtype=b.dtype(name),
                         seed=float(options["seed"]))
            scale = b.concat([sigma] * samples, axis=0)
            noisy[name] = b.op("Add", repeated, b.op("Mul", draws, scale))
            return noisy[name]

        eg.run_on_copies(samples, {name: copies for name in inputs})
        grads = eg.gradients([eg.feeds[name] for name in inputs], BASES[base])
        values = {}
        for name in inputs:
            g = eg.blocks(grads[eg.feeds[name]], samples)
            if base == "saliency":
                g = b.op("Abs", g)
            elif base == "input_x_gradient":
                g = b.op("Mul", g, eg.blocks(noisy[name], samples))
            mean = b.reduce("ReduceMean", g, [0], False)
            square = b.reduce("ReduceMean", b.op("Mul", g, g), [0], False)
            values[name] = {"smoothgrad": mean, "smoothgrad_sq": square,
                            "vargrad": b.op("Sub", square, b.op("Mul", mean, mean))}[kind]
        declare_per_input(eg, values, f"{kind} over {base} ({samples} noisy copies)")
    return build


for _kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
    register_export(_kind, dict(_DEFAULTS))(_noise_tunnel(_kind))

