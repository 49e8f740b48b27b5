"""Exporting a method: its options checked against the method's declarations
(methods.export_options), then its program saved as one standalone ONNX file (export).
The builders in export/ never import methods/.
"""

from __future__ import annotations

import onnx

from .export import explainer_model
from .graph.model import Model
from .local import head  # noqa: F401 - registers the local head's export (prototypes)
from .methods._tokens import query_is_position
from .methods.export_options import exported_options
from .objective import NEXT_TOKEN, make_place, output_form
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
