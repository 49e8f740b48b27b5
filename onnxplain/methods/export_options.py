"""The options an exported method reads, checked against the method's declarations
(methods.options) with the defaults filled in: `export` builds its program with them, and a
noise tunnel run in process builds its base's program with them (with_base_options)."""

from __future__ import annotations

from ..errors import InputError
from ..export import EXPORTS, LOOP_ROWS
from ..export.noise_program import PROGRAM_BASES
from ..runtime.batching import DEFAULT_BUDGET_MB
from ..runtime.budget import check_work
from . import METHODS, Option, did_you_mean
from .options import MAX_RUNS_OPTION


def exported_options(method: str, options: dict) -> dict:
    """The options the exported graph reads, checked by the method's own declarations
    (methods.options.Option) with defaults filled in, and the work they ask for checked
    against the same budget as in-process (max_runs, the memory the builder holds)."""
    export = EXPORTS.get(method)
    if export is None and method in METHODS and METHODS[method].in_process_only:
        raise InputError(f"method '{method}' runs in process only: "
                         f"{METHODS[method].in_process_only}")
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
    if resolved.get("n_steps") == "auto":  # methods.ig_auto picks orders per row, in process
        raise InputError(f"{method}: n_steps=auto runs in process; export a fixed n_steps")
    if resolved.get("internal_batch_size") == 0:  # as the budget allows: export's default,
        resolved["internal_batch_size"] = LOOP_ROWS  # the program run in process (rows_fed)
    if spec is not None and spec.work is not None:
        check_work(method, spec.work(resolved, {}), resolved.pop("max_runs"), DEFAULT_BUDGET_MB)
    return with_base_options(resolved)


def with_base_options(options: dict) -> dict:
    """A noise tunnel over a method with a program of its own (export.noise_program) runs
    that program with the method's export defaults: they join the options (`base_options`,
    in the explainer's metadata too)."""
    base = options.get("base")
    if base not in PROGRAM_BASES:
        return options
    return {**options, "base_options": exported_options(base, {})}


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
