"""TCAV, Testing with Concept Activation Vectors (Kim et al., ICML 2018, arXiv:1711.11279):
does a concept (striped, the digit 7, ...) push the model towards a class, over a set of inputs?

At a layer l, a linear classifier separates the concept set's activations from a random set's;
its unit normal pointing to the concept is the CAV v. For each input x the directional
derivative of the class score S_c along v is S_c,v(x) = grad_l S_c(x) . v, and

    sign_count = |{x : S_c,v(x) > 0}| / |X|,        magnitude = mean_x S_c,v(x)

(Captum's TCAV.interpret scores, which also give the random set's scores, taken along -v).
Repeated against several random sets, a two-sided Student t-test (scipy.stats.ttest_ind, as
Captum's TCAV tutorial applies it) of the concept's scores against the random sets' scores.
The random set's scores are the same CAV read along -v (1 - sign_count where no derivative
is 0), so this asks whether the sign count differs from 0.5. Random directions alone often
give sign counts far from 0.5, so null_p_value is Kim et al.'s test: the concept's sign
counts against those of CAVs trained between each pair of random sets (at least three
random sets give it at least three samples). Read either with the CAV's accuracy.

The activations and layer gradients come from the Explainer's tapped forward and gradient
program. The CAV classifier is a closed-form ridge (least-squares) classifier on +-1 labels,
deterministic where Captum's default trains an SGD classifier with a random split; `cavs`
takes precomputed CAVs instead (one per concept and random set).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._text import counted
from .errors import AttributionWarning, InputError
from .explainer import Explainer
from .graph.layers import resolve_layer


@dataclass(frozen=True)
class ConceptTest:
    """One concept against each random set: scores, the t-test's p-value, and the CAVs'
    training accuracy (a CAV that cannot separate its sets means nothing)."""

    name: str
    sign_count: np.ndarray  # [random sets]
    magnitude: np.ndarray
    random_sign_count: np.ndarray  # the random set's scores, along -CAV
    random_magnitude: np.ndarray
    p_value: float | None  # None: fewer than two random sets, or no variance at all
    accuracy: np.ndarray
    cavs: np.ndarray  # [random sets, layer features], unit length
    # Against the sign counts of CAVs trained between two random sets (Kim et al.'s null).
    null_p_value: float | None = None

    def as_dict(self) -> dict:
        return {"sign_count": self.sign_count.tolist(), "magnitude": self.magnitude.tolist(),
                "random_sign_count": self.random_sign_count.tolist(),
                "random_magnitude": self.random_magnitude.tolist(),
                "mean_sign_count": float(self.sign_count.mean()),
                "p_value": self.p_value, "null_p_value": self.null_p_value,
                "cav_accuracy": self.accuracy.tolist()}


@dataclass(frozen=True)
class TcavResult:
    """TCAV of every concept at one layer, for the explained class of each input."""

    layer: str
    targets: np.ndarray  # the class explained per input
    concepts: dict[str, ConceptTest]
    # Sign counts of the CAVs between each pair of random sets: what chance gives.
    null_sign_count: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def as_dict(self) -> dict:
        return {"layer": self.layer, "targets": self.targets.tolist(),
                "null_sign_count": self.null_sign_count.tolist(),
                "concepts": {name: test.as_dict() for name, test in self.concepts.items()}}


def tcav(model: Explainer | str | os.PathLike, inputs, concepts: Mapping[str, np.ndarray],
         random_sets: Sequence[np.ndarray], *, layer: str | None = None, target=None,
         cavs: Mapping[str, np.ndarray] | None = None, ridge: float = 1e-2) -> TcavResult:
    """TCAV scores of each concept (name -> example array, rows like `inputs`) against each
    of `random_sets` at `layer` (tensor or node name; default the last conv block), for
    `target` (a class, one per input, or None: the predicted class).

    `cavs`: name -> [random sets, layer features] to test instead of training (e.g. CAVs
    from another tool). `ridge`: the CAV classifier's L2 penalty, relative to the mean
    squared activation. Returns a TcavResult (as_dict() for JSON).
    """
    _check_ridge(ridge)
    explainer = model if isinstance(model, Explainer) else Explainer(model, progress=False)
    if not concepts:
        raise InputError("give at least one concept")
    if not random_sets:
        raise InputError("give at least one random set")
    tensor = resolve_layer(explainer.model, layer)
    run = explainer.gradients(inputs, target, wrt=[tensor])
    grads = _rows(run.grads[tensor])
    dead = ~np.any(grads, axis=1)
    if dead.any():  # a zero derivative is not 'the concept lowers the class': it says nothing
        inputs = counted(int(dead.sum()), "input")
        warnings.warn(f"the class score's gradient at '{tensor}' is 0 for {inputs} of "
                      f"{len(grads)}: their directional derivatives are 0, so they count "
                      "against every concept (sign counts) and say nothing; test another "
                      "layer or class", AttributionWarning, stacklevel=2)
    randoms = [_activations(explainer, tensor, array, f"random set {i}")
               for i, array in enumerate(random_sets)]
    null = np.array([np.mean(grads @ fit_cav(randoms[i], randoms[j], ridge)[0] > 0)
                     for i in range(len(randoms)) for j in range(i + 1, len(randoms))])
    tests = {}
    for name, examples in concepts.items():
        given = None if cavs is None or name not in cavs else np.asarray(cavs[name], float)
        if given is None:
            activations = _activations(explainer, tensor, examples, f"concept '{name}'")
            fits = [fit_cav(activations, random, ridge) for random in randoms]
            vectors = np.stack([vector for vector, _ in fits])
            accuracy = np.array([score for _, score in fits])
        else:
            vectors = _checked_cavs(name, given, len(randoms), grads.shape[1])
            accuracy = np.full(len(randoms), np.nan)
        tests[name] = _test(name, grads, vectors, accuracy, null)
    return TcavResult(tensor, np.asarray(run.target), tests, null)


def fit_cav(concept: np.ndarray, random: np.ndarray, ridge: float = 1e-2
            ) -> tuple[np.ndarray, float]:
    """(unit CAV pointing from the random activations to the concept's, its leave-one-out
    accuracy).

    Ridge regression of +-1 labels on centred activations, w = X^T (X X^T + lambda n I)^-1 y,
    solved over examples (they are far fewer than a layer's features). The accuracy is each
    example's prediction by the fit without it (centring included: the fit is ridge with an
    unpenalised intercept, whose hat matrix is G (G + lambda n I)^-1 + 11^T / n, so
    y_i - (y_i - f_i) / (1 - H_ii) is that prediction), not the training accuracy, which is
    ~1 whenever features outnumber examples, even for noise."""
    _check_ridge(ridge)
    x = np.concatenate([concept, random]).astype(np.float64)
    y = np.concatenate([np.ones(len(concept)), -np.ones(len(random))])
    centre = x.mean(axis=0)
    centred = x - centre
    gram = centred @ centred.T
    penalty = ridge * max(float(np.trace(gram)) / len(x), 1e-12)
    inverse = np.linalg.inv(gram + penalty * np.eye(len(x)))
    labels = y - y.mean()  # centred features: the fitted intercept is the mean label
    weights = centred.T @ (inverse @ labels)
    norm = float(np.linalg.norm(weights))
    if norm == 0.0:
        raise InputError("the concept and random activations are identical at this layer: "
                         "no concept direction to test")
    hat = gram @ inverse
    fitted, leverage = hat @ labels + y.mean(), np.diag(hat) + 1.0 / len(x)
    left_out = y - (y - fitted) / np.maximum(1.0 - leverage, 1e-12)
    accuracy = float(np.mean(np.sign(left_out) == y))
    return weights / norm, accuracy


def _check_ridge(ridge) -> None:
    if isinstance(ridge, bool) or not isinstance(ridge, int | float) \
            or not math.isfinite(ridge) or ridge <= 0:
        raise InputError(f"ridge must be a finite number above 0, got {ridge!r}")


def ttest_pvalue(first: np.ndarray, second: np.ndarray) -> float | None:
    """Two-sided p-value of Student's two-sample t-test with pooled variance (scipy's
    ttest_ind default): t = (m1 - m2) / (s_p sqrt(1/n1 + 1/n2)), p = I_{df/(df+t^2)}(df/2,
    1/2). 0 where neither sample varies but their means differ (every input on the
    concept's side against every random set, as scipy); None where it is undefined (a
    sample under two values, or identical constant samples)."""
    first, second = np.asarray(first, float), np.asarray(second, float)
    n1, n2 = len(first), len(second)
    if n1 < 2 or n2 < 2:
        return None
    df = n1 + n2 - 2
    pooled = ((n1 - 1) * first.var(ddof=1) + (n2 - 1) * second.var(ddof=1)) / df
    gap = float(first.mean() - second.mean())
    if pooled == 0.0:
        return None if gap == 0.0 else 0.0
    t = gap / math.sqrt(pooled * (1 / n1 + 1 / n2))
    return float(_betainc(df / 2, 0.5, df / (df + t * t)))


def _test(name: str, grads: np.ndarray, vectors: np.ndarray, accuracy: np.ndarray,
          null: np.ndarray) -> ConceptTest:
    derivatives = grads @ vectors.T  # [inputs, random sets]
    sign = np.mean(derivatives > 0, axis=0)
    random_sign = np.mean(-derivatives > 0, axis=0)
    return ConceptTest(name, sign, derivatives.mean(axis=0), random_sign,
                       -derivatives.mean(axis=0), ttest_pvalue(sign, random_sign), accuracy,
                       vectors, ttest_pvalue(sign, null))


def _activations(explainer: Explainer, tensor: str, examples, what: str) -> np.ndarray:
    try:
        values = explainer.forward(examples, taps=[tensor])[tensor]
    except InputError as err:
        raise InputError(f"{what}: {err}") from None
    if len(values) < 1:
        raise InputError(f"{what} has no examples")
    return _rows(values)


def _checked_cavs(name: str, given: np.ndarray, randoms: int, features: int) -> np.ndarray:
    if given.shape != (randoms, features):
        raise InputError(f"cavs['{name}'] has shape {list(given.shape)}; expected "
                         f"[{randoms} random sets, {features} layer features]")
    return given


def _rows(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float64).reshape(len(values), -1)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta I_x(a, b), by its continued fraction (Lentz), using
    the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b
    return front * _beta_fraction(a, b, x) / a


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return value
