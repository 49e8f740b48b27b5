"""Standalone explainer models: a method baked into one ONNX file that any ONNX Runtime runs,
in any language, without onnxplain.

The exported model's inputs are the original ones plus `target` (int64 [N], optional:
-1 or absent explains the predicted class); its outputs are the original ones plus
`target_used` and the method's results (`attribution/<input>`, and per method
`convergence_delta`, `layer_map`, or a layer's `pre_activation` and `post_activation`). Its
metadata (`metadata_props`) records the method, its options, the onnxplain version and the
meaning of every added input and output.
"""

from __future__ import annotations

import re
import warnings

import onnx
from onnx import helper, numpy_helper

from ..autodiff.ops.recurrent import finish_gate_forwards
from ..autodiff.program import drop_unread
from ..engine import QDQ_PROPAGATION, pick_output
from ..errors import ExportWarning, InputError, ModelError
from ..graph.load import set_runtime_ir_version
from ..graph.model import Model
from ..graph.op_kinds import QUANTIZERS
from ..graph.walk import used_initializers
from ..graph.weights import payload_bytes, standalone
from ..inputs import check_rows_layout
from ..methods import METHODS, Option, did_you_mean
from ..methods._budget import MAX_RUNS_OPTION, check_work
from ..objective import EVERYWHERE, Place, make_place
from ..runtime.batching import DEFAULT_BUDGET_MB
from . import (  # noqa: F401 - register their exports
    attention,
    cat,
    coalitions,
    layer_maps,
    noise,
    occlusion,
    rise,
    tokens,
)
from .graph import TARGET, TARGET_USED, ExplainerGraph
from .loop import ROWS_PER_ITERATION
from .methods import ATTRIBUTION, EXPORTS, metadata

__all__ = ["ATTRIBUTION", "EXPORTS", "TARGET", "TARGET_USED", "emit_explainer",
           "export_explainer", "export_options", "exported_options"]


# Rows per Loop iteration when internal_batch_size is 0 ("as the memory budget allows"
# in-process: an exported model cannot know the budget of where it runs).
LOOP_ROWS = 16


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
    if resolved.get("internal_batch_size") == 0:
        resolved["internal_batch_size"] = LOOP_ROWS
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
    if not loaded.batch.symbolic:
        raise InputError(f"the model's batch axis is {loaded.batch.describe()}; an exported "
                         "explainer needs a symbolic batch axis (re-export with dynamic axes)")
    check_rows_layout(loaded, "an exported explainer", frozenset())
    eg = emit_explainer(loaded, method, options, pick_output(loaded, output), target_input,
                        output_seed, make_place(position, pixel, region))
    _check_size(eg.proto)
    proto = standalone(eg.proto, loaded.weights)  # weights embedded (graph.weights)
    helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                   **metadata(method, options, eg), **_loop_rows(proto)})
    proto.producer_name = "onnxplain"
    _warn_quantized_loop(proto)
    _drop_unread_initializers(proto.graph)
    set_runtime_ir_version(proto)
    _check_exported(proto)
    return proto


def emit_explainer(model: Model, method: str, options: dict, output: str,
                   target_input: str = "optional", output_seed=None, place: Place = EVERYWHERE,
                   sources: dict[str, str] | None = None) -> ExplainerGraph:
    """The program of `method` (resolved `options`) explaining `output`: the one graph that
    `export` saves and the in-process method runs (methods._graph), so both compute the same
    numbers. `sources`: see ExplainerGraph."""
    eg = ExplainerGraph(model, output, target_input, output_seed, place, sources,
                        EXPORTS[method].any_output)
    start = len(eg.proto.graph.node)
    EXPORTS[method].build(eg, options)
    finish_gate_forwards(eg.b)  # LSTM kernels give way to the Scans that keep gates
    drop_unread(eg.proto.graph, start)
    return eg


def _loop_rows(proto: onnx.ModelProto) -> dict[str, str]:
    """The default rows per Loop iteration (export.loop), where the explainer has a Loop."""
    defaults = {init.name: init for init in proto.graph.initializer}
    if ROWS_PER_ITERATION not in defaults:
        return {}
    value = int(numpy_helper.to_array(defaults[ROWS_PER_ITERATION]))
    return {"onnxplain." + ROWS_PER_ITERATION: str(value)}


# One protobuf message holds at most 2 GiB; the explainer embeds the model's weights.
PROTOBUF_LIMIT = (1 << 31) - 1


def _check_size(proto: onnx.ModelProto) -> None:
    """An explainer past protobuf's limit cannot be one file: say so, not fail in onnx."""
    size = payload_bytes(proto)  # file stubs count
    if size >= PROTOBUF_LIMIT:
        raise ModelError(f"the exported explainer would hold {size / 2**30:.1f} GiB of "
                         "weights, over ONNX's 2 GiB limit for one file; exporting with "
                         "external data is not supported yet")


def _warn_quantized_loop(proto: onnx.ModelProto) -> None:
    """ONNX Runtime 1.31 aborts the whole process while it optimises a Loop body holding
    Q/DQ pairs (an assertion in QDQPropagationTransformer): the metadata names the
    optimiser to disable, and the user hears it now rather than from a crash."""
    bodies = [a.g for node in proto.graph.node if node.op_type == "Loop"
              for a in node.attribute if a.HasField("g")]
    if any(n.op_type in QUANTIZERS for body in bodies for n in body.node):
        helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                       "onnxplain.disable_optimizers": QDQ_PROPAGATION})
        warnings.warn(f"ONNX Runtime 1.31 aborts when it optimises this explainer's Loop of "
                      f"quantized ops: load it with the optimizer '{QDQ_PROPAGATION}' "
                      f"disabled (Python: InferenceSession(..., disabled_optimizers="
                      f"['{QDQ_PROPAGATION}'])) or with graph optimizations off",
                      ExportWarning, stacklevel=3)


def _check_exported(proto: onnx.ModelProto) -> None:
    """The checker re-runs shape inference, stricter than the loader's: a model attribute it
    rejects (a Conv group that does not divide the channels) is the model's fault, one line."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        text = " ".join(str(err).split())
        node = re.search(r"\(op_type:(\w+), node name: ([^)]*)\)", text)
        where = f" at {node[1]} node '{node[2]}'" if node else ""
        if node and node[2].startswith("onnxplain/"):
            # A node of the explainer: shapes derived from the model's weights and attributes
            # disagree (a Conv group that does not divide its input's channels).
            where += " of the explainer built from the model's weights and attributes"
        reason = re.sub(r"\(op_type:[^)]*\):?\s*", "", text.rsplit("] ", 1)[-1])
        raise ModelError(f"the model cannot be exported: ONNX shape inference fails{where}: "
                         f"{reason[:300]}") from None


def _drop_unread_initializers(graph: onnx.GraphProto) -> None:
    """Weights only a Loop body reads now live in that body (export.loop)."""
    read = {init.name for init in used_initializers(graph, graph.node)}
    read |= {v.name for v in list(graph.input) + list(graph.output)}  # e.g. target's default
    kept = [init for init in graph.initializer if init.name in read]
    if len(kept) < len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)
