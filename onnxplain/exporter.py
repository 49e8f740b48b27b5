"""Exporting a method: its options checked against the method's declarations
(methods.options), then its program saved as one standalone ONNX file (export). The one
place that reads both the methods' registry and the graph builders, so the builders in
export/ never import methods/.
"""

from __future__ import annotations

import onnx

from .errors import InputError
from .export import EXPORTS, LOOP_ROWS, explainer_model
from .graph.model import Model
from .local import head  # noqa: F401 - registers the local head's export (prototypes)
from .methods import METHODS, Option, did_you_mean
from .methods._tokens import query_is_position
from .methods.options import MAX_RUNS_OPTION
from .objective import NEXT_TOKEN, make_place, output_form
from .runtime.batching import DEFAULT_BUDGET_MB
from .runtime.budget import check_work
from .runtime.engine import pick_output


def export_explainer(model, method: str = "saliency", *, output: str | None = None,
                     target_input: str = "optional", output_seed=None,
                     position: int | None = None, pixel=None, region=None,
                     **options) -> onnx.ModelProto:
    """One ONNX model computing the model's outputs and `method`'s attributions together.

    `target_input="optional"` gives the `target` input a default (-1, the predicted class)
    through an initializer of the same name; "required" makes it a plain input, for
    runtimes that cannot feed inputs with defaults (onnxruntime-node ignores such feeds).
    `output_seed` (one row of weights shaped like a row of the output) replaces the class
    target: the explainer gets an `output_seed` input instead of `target`, defaulting to
    these weights (export.seed). Sequence outputs and maps explain their dense objective
    (objective), computed in the graph on each input: `position`, `pixel` and `region` as
    in Explainer.explain, `target` naming the class."""
    loaded = model if isinstance(model, Model) else Model.load(model)
    options = exported_options(method, options)
    place = make_place(position, pixel, region)
    if output_seed is None and "query" in options \
            and output_form(loaded, pick_output(loaded, output)) == NEXT_TOKEN:
        # As Explainer.explain: the query row is the explained position.
        options, place = query_is_position(options, place, None)
    return explainer_model(loaded, method, options, output, target_input, output_seed, place)


def exported_options(method: str, options: dict) -> dict:
    """The options the exported graph reads, checked by the method's own declarations
    (methods.options.Option) with defaults filled in, and the work they ask for checked
    against the same budget as in-process (max_runs, the memory the builder holds)."""
    export = EXPORTS.get(method)
    if export is None:
        hint = did_you_mean(method, EXPORTS) if method not in METHODS else ""
        raise InputError(f"method '{method}' cannot be exported{hint} (exportable methods: "
                         f"{', '.join(sorted(EXPORTS))})")
    spec = METHODS.get(method)
    declared = export_options(method)
    for key in options:
        if key not in declared:
            _refuse_option(method, str(key), spec, declared)
    resolved = {name: option.default for name, option in declared.items()}
    resolved.update({key: declared[key].check(method, value) for key, value in options.items()})
    if resolved.get("internal_batch_size") == 0:  # as the budget allows: export's default,
        resolved["internal_batch_size"] = LOOP_ROWS  # the program run in process (rows_fed)
    if spec is not None and spec.work is not None:
        check_work(method, spec.work(resolved, {}), resolved.pop("max_runs"), DEFAULT_BUDGET_MB)
    return resolved


def export_options(method: str) -> dict[str, Option]:
    """{name: declaration} of the options an exported `method` reads (max_runs too where
    its work is counted); empty for a method that does not export."""
    spec, export = METHODS.get(method), EXPORTS.get(method)
    if spec is None or export is None:
        return {}
    return {option.name: option for option in spec.options if export.reads is None
            or option.name in export.reads or option is MAX_RUNS_OPTION}


def _refuse_option(method: str, key: str, spec, declared: dict) -> None:
    known = ", ".join(declared) or "none"
    if spec is not None and key in spec.defaults:
        raise InputError(f"option '{key}' of method '{method}' applies in-process only; an "
                         f"exported {method} reads: {known}")
    raise InputError(f"method '{method}' has no export option '{key}'"
                     f"{did_you_mean(key, declared)} (its export options: {known})")
