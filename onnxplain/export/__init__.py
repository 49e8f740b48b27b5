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

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autodiff.ops.recurrent import finish_gate_forwards
from ..autodiff.program import drop_unread
from ..errors import ExportWarning, InputError, ModelError
from ..graph.load import set_runtime_ir_version
from ..graph.model import Model
from ..graph.weights import payload_bytes, standalone
from ..inputs import check_rows_layout
from ..objective import EVERYWHERE, Place
from ..runtime.engine import pick_output
from . import (  # noqa: F401 - register their exports
    attention,
    blur_ig,
    cat,
    coalitions,
    conductance,
    feature_ablation,
    gradient_shap,
    guided_ig,
    layer_maps,
    noise,
    occlusion,
    rise,
    shapley,
    tokens,
)
from .graph import TARGET, TARGET_USED, ExplainerGraph, freed_model
from .loop import ROWS_PER_ITERATION
from .methods import ATTRIBUTION, EXPORTS, metadata
from .optimizers import optimizers_to_disable

__all__ = ["ATTRIBUTION", "EXPORTS", "LOOP_ROWS", "TARGET", "TARGET_USED", "emit_explainer",
           "explainer_model"]


# Rows per Loop iteration when internal_batch_size is 0 ("as the memory budget allows"
# in-process: an exported model cannot know the budget of where it runs).
LOOP_ROWS = 16

# Exports that run the model on [x; x'] (2N rows) in one batch: a fixed batch axis cannot.
PAIRED_ROWS = frozenset({"deeplift"})


def explainer_model(model: Model, method: str, options: dict, output: str | None = None,
                    target_input: str = "optional", output_seed=None,
                    place: Place = EVERYWHERE) -> onnx.ModelProto:
    """The standalone explainer file of `method` with resolved `options` (the caller checks
    them against the method's declarations: exporter.export_explainer): the program
    emit_explainer builds, its weights embedded, metadata set, checked."""
    if not model.batch.symbolic and method in PAIRED_ROWS:
        raise InputError(f"the model's batch axis is {model.batch.describe()}; an exported "
                         f"{method} runs each row with its reference in one batch (2N rows): "
                         "re-export the model with dynamic axes")
    check_rows_layout(model, "an exported explainer", frozenset())
    eg = emit_explainer(model, method, options, pick_output(model, output), target_input,
                        output_seed, place)
    _check_size(eg.proto)
    proto = standalone(eg.proto, model.weights)  # weights embedded (graph.weights)
    if not model.batch.symbolic:
        _one_copy_per_iteration(proto)
    helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                   **metadata(method, options, eg), **_loop_rows(proto),
                                   **_fixed_rows(model)})
    proto.producer_name = "onnxplain"
    _warn_optimizers(proto)
    set_runtime_ir_version(proto)
    _check_exported(proto)
    return proto


def emit_explainer(model: Model, method: str, options: dict, output: str,
                   target_input: str = "optional", output_seed=None, place: Place = EVERYWHERE,
                   sources: dict[str, str] | None = None) -> ExplainerGraph:
    """The program of `method` (resolved `options`) explaining `output`: the one graph that
    `export` saves and the in-process method runs (methods._graph), so both compute the same
    numbers. `sources`: see ExplainerGraph."""
    while True:
        eg = ExplainerGraph(model, output, target_input, output_seed, place, sources,
                            EXPORTS[method].any_output)
        try:
            EXPORTS[method].build(eg, options)
        except Exception:
            if not eg.clashes:
                raise
        else:
            if not eg.clashes:
                break
        # The explainer added a name a model tensor has (a tensor called 'score'): build
        # again on the model with those tensors renamed (ExplainerGraph.clashes).
        model = freed_model(model, sorted(eg.clashes))
    finish_gate_forwards(eg.b)  # LSTM kernels give way to the Scans that keep gates
    drop_unread(eg.proto)
    return eg


def _one_copy_per_iteration(proto: onnx.ModelProto) -> None:
    """A fixed batch of B: the perturbation Loop's default rows per iteration becomes 1, one
    copy of the B rows per model run (as in process); the gradient Loop declares no such
    input for it (export.loop runs one block of B rows per iteration)."""
    for init in proto.graph.initializer:
        if init.name == ROWS_PER_ITERATION:
            init.CopyFrom(numpy_helper.from_array(np.array(1, np.int64), ROWS_PER_ITERATION))


def _fixed_rows(model: Model) -> dict[str, str]:
    """The rows an explainer of a fixed-batch model takes: exactly the model's B."""
    if model.batch.symbolic:
        return {}
    return {"onnxplain.batch": f"fixed: feed exactly {model.batch.size} rows per run (the "
                               "model's batch axis is fixed; run more rows in chunks of it)"}


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


def _warn_optimizers(proto: onnx.ModelProto) -> None:
    """ONNX Runtime 1.31 optimizers that break this explainer (export.optimizers): the
    metadata names them (comma-separated) and the user hears it now, not from a crash or a
    load failure."""
    found = optimizers_to_disable(proto)
    if not found:
        return
    names = ",".join(found)
    helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                   "onnxplain.disable_optimizers": names})
    why = "; ".join(f"'{name}' {reason}" for name, reason in found.items())
    listed = ", ".join(f"'{name}'" for name in found)
    warnings.warn(f"ONNX Runtime 1.31 breaks this explainer unless it is loaded with the "
                  f"optimizer{'s' * (len(found) > 1)} {listed} disabled ({why}): Python: "
                  f"InferenceSession(..., disabled_optimizers={list(found)}), or graph "
                  "optimizations off; the metadata key 'onnxplain.disable_optimizers' names "
                  "them", ExportWarning, stacklevel=4)


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

