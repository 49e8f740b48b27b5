"""Attribution methods: one module and one verb each, listed in METHODS with their defaults."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..engine import GradientRun
from ..errors import InputError
from ._budget import MAX_RUNS, Work, check_work


@dataclass
class MethodOutput:
    """What a method returns: the run whose outputs and targets describe the explanation,
    attributions at the source tensors (the Explainer maps them to inputs) and/or already per
    input (layer methods), extra tensors, and extras such as convergence deltas."""

    run: GradientRun
    at_sources: dict[str, np.ndarray] = field(default_factory=dict)
    at_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Whether the sign means something (heatmaps then use a diverging colormap).
    signed: bool = True


@dataclass(frozen=True)
class MethodSpec:
    """A method as the API and CLI show it: its verb, one-line summary, defaults and paper."""

    name: str
    run: Callable
    summary: str
    reference: str
    family: str
    defaults: dict = field(default_factory=dict)
    # How an attribution at a token embedding becomes one value per token: "sum" over the
    # embedding axis (for products like input x gradient), or the vector "norm" for raw
    # gradients, whose sum is ~0 whenever a LayerNorm follows the embedding.
    token_reduction: str = "sum"
    # Gradient methods need an attributable float tensor; forward-only methods do not.
    needs_sources: bool = True
    # Whether the method explains a score per row (see objective); forward-only attention
    # and activation methods read the model without one.
    uses_objective: bool = True
    # What a method's count options ask for (work(options, feeds) -> Work), checked against
    # the `max_runs` option (added with MAX_RUNS) and the memory budget before it runs.
    work: Callable[[Mapping[str, object], Mapping[str, np.ndarray]], Work] | None = None

    def resolve_options(self, options: Mapping[str, object]) -> dict:
        """Defaults overridden by `options`; strings (from the CLI) take the default's type."""
        unknown = [key for key in options if key not in self.defaults]
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise InputError(f"method '{self.name}' has no option '{unknown[0]}' "
                             f"(its options: {known})")
        resolved = dict(self.defaults)
        for key, value in options.items():
            resolved[key] = coerce_option(self.name, key, value, self.defaults[key])
        return resolved


def coerce_option(method: str, key: str, value: object, default: object) -> object:
    """`value` as the default's type (the CLI gives strings); numbers must be finite, since
    NaN or Inf (`-O noise_level=nan`) would only make every attribution NaN."""
    found = _coerced(method, key, value, default)
    if isinstance(found, float | np.floating) and not np.isfinite(found):
        raise InputError(f"option '{key}' of method '{method}' must be a finite number "
                         f"(not NaN or infinite), got {value}")
    # Every method's `seed` goes to numpy's generators, which take integers 0 .. 2**128-1.
    if key == "seed" and isinstance(found, int | np.integer) and not 0 <= found < 2**128:
        raise InputError(f"option 'seed' of method '{method}' must be an integer from 0 to "
                         f"2**128 - 1, got {value}")
    return found


def _coerced(method: str, key: str, value: object, default: object) -> object:
    # Float options may also take arrays (baselines), which their methods check, and None
    # is checked by the methods with their own reason; counts and flags are numbers only.
    array_or_none = value is None or isinstance(value, np.ndarray | list)
    if isinstance(default, bool | int | float) and not isinstance(value, str) and not (
            isinstance(default, float) and array_or_none):
        return _number(method, key, value, default)
    if not isinstance(value, str) or isinstance(default, str) or default is None:
        return value
    text = value.strip().lower()
    try:
        if isinstance(default, bool):
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise InputError(f"option '{key}' of method '{method}' expects "
                         f"{_a(type(default))}, got '{value}'") from None
    return value


def _number(method: str, key: str, value: object, default: bool | int | float) -> object:
    """An API value for a number option: a number of the default's kind (an integral float
    for an integer), else one line naming its type (never the value itself: it may be a
    large array)."""
    kind = type(default)
    number = isinstance(value, int | float | np.integer | np.floating) and not (
        kind is not bool and isinstance(value, bool | np.bool_))
    if kind is bool:
        number = isinstance(value, bool | np.bool_) or (number and value in (0, 1))
    if number and kind is int and not isinstance(value, int | np.integer):
        number = np.isfinite(value) and float(value).is_integer()
    if not number:
        got = repr(value) if np.isscalar(value) else f"a value of type {type(value).__name__}"
        raise InputError(f"option '{key}' of method '{method}' expects {_a(kind)}, got {got}")
    return kind(value)


def _a(kind: type) -> str:
    return f"{'an' if kind is int else 'a'} {kind.__name__}"


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.work is not None:
        spec = replace(spec, run=_budgeted(spec), defaults={**spec.defaults,
                                                            "max_runs": MAX_RUNS})
    METHODS[spec.name] = spec
    return spec


def _budgeted(spec: MethodSpec) -> Callable:
    """spec.run behind the work budget: nothing is allocated or run past it."""
    inner, work = spec.run, spec.work

    @functools.wraps(inner)
    def run(engine, feeds, target, sources, *, max_runs=MAX_RUNS, **options):
        check_work(spec.name, work(options, feeds), max_runs, engine.memory_budget_mb)
        return inner(engine, feeds, target, sources, **options)

    return run


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method '{name}'{did_you_mean(name, METHODS)} (methods: "
                         f"{', '.join(sorted(METHODS))})") from None


def did_you_mean(name: str, known) -> str:
    """': did you mean 'x'?' for the closest known name, else ''."""
    import difflib

    text = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    close = difflib.get_close_matches(text, list(known), n=1, cutoff=0.6)
    return f": did you mean '{close[0]}'?" if close else ""


# Each module registers its method(s) on import.
from . import (  # noqa: E402,F401
    activation_maps,
    attention_flow,
    cam,
    cat,
    deconvnet,
    deeplift,
    grad_cam,
    grad_cam_plus_plus,
    guided_backprop,
    guided_grad_cam,
    input_x_gradient,
    integrated_gradients,
    kernel_shap,
    layer_integrated_gradients,
    lime,
    lrp,
    occlusion,
    rise,
    saliency,
    smoothgrad,
)

__all__ = ["METHODS", "MethodOutput", "MethodSpec", "did_you_mean", "get_method", "register"]
