"""The activation functions ONNX's LSTM, GRU and RNN accept in `activations`, applied and
differentiated by the recurrent rules (recurrent.py).

`activation_alpha` / `activation_beta` are consumed in order by the functions that take them,
as ONNX Runtime reads them. Where a function's argument is not given, LeakyRelu, HardSigmoid
and Elu take their operators' defaults (ONNX Runtime agrees); Affine, ThresholdedRelu and
ScaledTanh are refused instead: the spec defaults them to their operators' values and ONNX
Runtime to 0, so the forward that ran is not known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...graph.builder import GraphBuilder

# Whether each function takes alpha and beta, and the defaults both readings agree on.
TAKES = {"Relu": (False, False), "Tanh": (False, False), "Sigmoid": (False, False),
         "Softsign": (False, False), "Softplus": (False, False), "Affine": (True, True),
         "LeakyRelu": (True, False), "ThresholdedRelu": (True, False),
         "ScaledTanh": (True, True), "HardSigmoid": (True, True), "Elu": (True, False)}
DEFAULTS = {"LeakyRelu": (0.01, 0.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, 0.0)}
CANONICAL = {name.lower(): name for name in TAKES}


@dataclass(frozen=True)
class Activation:
    name: str
    alpha: float = 0.0
    beta: float = 0.0


def parse(names: Sequence[str], alphas: Sequence[float], betas: Sequence[float]
          ) -> list[Activation] | str:
    """The functions in order, or why not (a reason for a refusal)."""
    out, a, b = [], list(alphas), list(betas)
    for given in names:
        name = CANONICAL.get(given.lower())
        if name is None:
            return f"activation '{given}' is not one the ONNX recurrent ops define"
        alpha, beta = DEFAULTS.get(name, (None, None))
        takes_alpha, takes_beta = TAKES[name]
        alpha = a.pop(0) if takes_alpha and a else alpha
        beta = b.pop(0) if takes_beta and b else beta
        if (takes_alpha and alpha is None) or (takes_beta and beta is None):
            return (f"activation {name} without activation_alpha/activation_beta values (the "
                    f"spec and ONNX Runtime default them differently)")
        out.append(Activation(name, float(alpha or 0.0), float(beta or 0.0)))
    return out


def apply(b: GraphBuilder, act: Activation, x: str) -> str:
    name, alpha, beta = act.name, act.alpha, act.beta
    if name in ("Relu", "Tanh", "Sigmoid", "Softsign", "Softplus"):
        return b.op(name, x)
    if name == "Affine":
        return b.op("Add", b.op("Mul", x, b.scalar(alpha, x)), b.scalar(beta, x))
    if name == "ScaledTanh":
        return b.op("Mul", b.op("Tanh", b.op("Mul", x, b.scalar(beta, x))), b.scalar(alpha, x))
    if name == "HardSigmoid":
        return b.op("HardSigmoid", x, alpha=alpha, beta=beta)
    return b.op(name, x, alpha=alpha)  # LeakyRelu, ThresholdedRelu, Elu


def derivative(b: GraphBuilder, act: Activation, y: str, pre: Callable[[], str]) -> str:
    """f'(x) from the value y = f(x) where that suffices, else from x = pre()."""
    name, alpha = act.name, act.alpha
    if name == "Sigmoid":
        return b.op("Sub", y, b.op("Mul", y, y))
    if name == "Tanh":
        return b.op("Sub", b.scalar(1.0, y), b.op("Mul", y, y))
    if name == "Relu":
        return _indicator(b, b.op("Greater", y, b.scalar(0.0, y)), y)
    if name == "Affine":
        return b.op("Add", b.op("Mul", y, b.scalar(0.0, y)), b.scalar(alpha, y))
    if name == "HardSigmoid":  # alpha inside the linear part, 0 where it is cut to 0 or 1
        inside = b.op("And", b.op("Greater", y, b.scalar(0.0, y)),
                      b.op("Less", y, b.scalar(1.0, y)))
        return b.op("Mul", _indicator(b, inside, y), b.scalar(alpha, y))
    x = pre()
    return _FROM_INPUT[name](b, act, x, y)


def _indicator(b: GraphBuilder, condition: str, like: str) -> str:
    return b.op("Cast", condition, to=b.dtype(like))


def _leaky(b: GraphBuilder, act: Activation, x: str, y: str) -> str:
    negative = _indicator(b, b.op("Less", x, b.scalar(0.0, x)), x)
    return b.op("Add", b.op("Mul", negative, b.scalar(act.alpha - 1.0, x)), b.scalar(1.0, x))


def _thresholded(b: GraphBuilder, act: Activation, x: str, y: str) -> str:
    return _indicator(b, b.op("Greater", x, b.scalar(act.alpha, x)), x)


def _scaled_tanh(b: GraphBuilder, act: Activation, x: str, y: str) -> str:
    t = b.op("Tanh", b.op("Mul", x, b.scalar(act.beta, x)))
    slope = b.op("Sub", b.scalar(1.0, t), b.op("Mul", t, t))
    return b.op("Mul", slope, b.scalar(act.alpha * act.beta, x))


def _elu(b: GraphBuilder, act: Activation, x: str, y: str) -> str:
    # x < 0: alpha e^x = y + alpha; else 1
    negative = _indicator(b, b.op("Less", x, b.scalar(0.0, x)), x)
    offset = b.op("Sub", b.op("Add", y, b.scalar(act.alpha, y)), b.scalar(1.0, y))
    return b.op("Add", b.op("Mul", negative, offset), b.scalar(1.0, x))


def _softsign(b: GraphBuilder, act: Activation, x: str, y: str) -> str:
    root = b.op("Add", b.scalar(1.0, x), b.op("Abs", x))
    return b.op("Reciprocal", b.op("Mul", root, root))


def _softplus(b: GraphBuilder, act: Activation, x: str, y: str) -> str:
    return b.op("Sigmoid", x)


_FROM_INPUT = {"LeakyRelu": _leaky, "ThresholdedRelu": _thresholded,
               "ScaledTanh": _scaled_tanh, "Elu": _elu, "Softsign": _softsign,
               "Softplus": _softplus}
