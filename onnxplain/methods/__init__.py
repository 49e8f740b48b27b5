"""Attribution methods: one module and one verb each, listed in METHODS with their defaults."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import InputError
from ..runtime.budget import MAX_RUNS, Work, check_work
from ..runtime.engine import GradientRun
from .options import MAX_RUNS_OPTION, Option


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
    """A method as the API and CLI show it: its verb, one-line summary, options (declared
    once, see options.Option) and paper."""

    name: str
    run: Callable
    summary: str
    reference: str
    family: str
    options: tuple[Option, ...] = ()
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
    # Why the method runs in process only (export names it), where it has no graph builder.
    in_process_only: str = ""

    @property
    def defaults(self) -> dict:
        """{option: default}, derived from the declarations."""
        return {option.name: option.default for option in self.options}

    def option(self, key: str) -> Option:
        """The declaration of option `key`; an unknown one is a one-line InputError."""
        for option in self.options:
            if option.name == key:
                return option
        known = ", ".join(sorted(self.defaults)) or "none"
        raise InputError(f"method '{self.name}' has no option '{key}'"
                         f"{did_you_mean(key, self.defaults)} (its options: {known})")

    def resolve_options(self, options: Mapping[str, object]) -> dict:
        """Defaults overridden by `options`, each checked by its declaration (strings, as
        the CLI gives them, are parsed)."""
        checked = {key: self.option(str(key)).check(self.name, value)
                   for key, value in options.items()}
        return {**self.defaults, **checked}


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.work is not None:
        spec = replace(spec, run=_budgeted(spec), options=(*spec.options, MAX_RUNS_OPTION))
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
    attn_lrp,
    blur_ig,
    cam,
    cat,
    deconvnet,
    deeplift,
    feature_ablation,
    grad_cam,
    grad_cam_plus_plus,
    gradient_shap,
    guided_backprop,
    guided_grad_cam,
    guided_ig,
    input_x_gradient,
    integrated_gradients,
    kernel_shap,
    layer_conductance,
    layer_integrated_gradients,
    lime,
    lrp,
    neuron_conductance,
    occlusion,
    rise,
    saliency,
    shapley_sampling,
    smoothgrad,
    xrai,
)

__all__ = ["METHODS", "MethodOutput", "MethodSpec", "Option", "did_you_mean", "get_method",
           "register"]
