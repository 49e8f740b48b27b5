"""What a probe is fitted on: each layer's activations and the tensor its decoder rebuilds,
tapped from one run of the model over the user's rows.

Rows lie on the first axis of every tapped tensor (time-major tensors are refused). The
target of a layer is where onnxplain attributes the input it is computed from
(graph.sources): a float input itself, or for token ids the output of their embedding
lookup, whose table then gives nearest-token read-outs of a reconstruction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..explainer import Explainer
from ..graph.layers import tensor_of
from ..graph.model import Model
from ..graph.sources import embedding_lookup
from ..graph.walk import ancestors, node_inputs
from ..inputs import prepare_inputs
from .tokens import real_tokens


@dataclass
class Tapped:
    """Activations and targets over the same rows; `target_of` maps layer -> target."""

    explainer: Explainer
    feeds: dict[str, np.ndarray]        # the validated model inputs
    activations: dict[str, np.ndarray]  # layer -> [N, *layer_shape], float32
    targets: dict[str, np.ndarray]      # target -> [N, *target_shape], float32
    target_of: dict[str, str]
    embedding_of: dict[str, str]        # token target -> the embedding table it looks up
    ids_of: dict[str, str]              # token target -> the ids input it embeds
    real: np.ndarray | None             # bool [N, T]: positions that are not padding
    padding: str | None = None          # how padding was told apart (tokens.RealTokens.rule)
    scores: np.ndarray | None = None    # the explained output, from the same run

    @property
    def rows(self) -> int:
        return len(next(iter(self.feeds.values())))


def tap(model, layers: Sequence[str], inputs, providers=None, target: str | None = None
        ) -> Tapped:
    """Run the model once over `inputs`, tapping every layer and target. `target` names the
    model input to reconstruct where a layer depends on several."""
    explainer = Explainer(model, providers, progress=False)
    if isinstance(layers, str) or not len(layers):
        raise InputError("name the layers to probe as a non-empty list of tensor names")
    tensors = list(dict.fromkeys(_layer(explainer.model, name) for name in layers))
    _check_finite(inputs)
    feeds = prepare_inputs(explainer.model, inputs)
    target_of = {layer: _target(explainer, layer, target) for layer in tensors}
    computed = [t for t in dict.fromkeys(target_of.values()) if t not in feeds]
    found = explainer.forward(feeds, taps=[*tensors, *computed])
    rows = len(next(iter(feeds.values())))
    for name in [*tensors, *computed]:
        _check_batch_first(explainer.model, name, found[name], rows,
                           "layer" if name in tensors else "target")
    activations = {layer: _floats(found[layer], f"layer '{layer}'") for layer in tensors}
    targets = {t: _floats(feeds[t] if t in feeds else found[t], f"target '{t}'")
               for t in target_of.values()}
    embedding_of = {t: lookup[1] for t in targets
                    if (lookup := embedding_lookup(explainer.model, t))}
    ids_of = {s.tensor: s.input for s in explainer.sources if s.tensor in embedding_of}
    tokens = (real_tokens(explainer.model, feeds, next(iter(ids_of.values())))
              if ids_of else None)
    return Tapped(explainer, feeds, activations, targets, target_of, embedding_of, ids_of,
                  None if tokens is None else tokens.real,
                  None if tokens is None else tokens.rule, found[explainer.output])


def _layer(model: Model, name: str) -> str:
    if name in {spec.name for spec in model.inputs}:
        raise InputError(f"'{name}' is the model's input, not a layer; name a tensor computed "
                         "from it")
    return tensor_of(model, name)


def _check_batch_first(model: Model, name: str, values: np.ndarray, rows: int, role: str
                       ) -> None:
    """A decoder maps each row's activations to the same row's input: a time-major tensor
    [T, N, ...] (an LSTM's or GRU's output) would pair time steps with rows. By the declared
    shape (the batch symbol's place), which also catches rows == T, and by the run's."""
    info = model.infos.get(name)
    axis = model.batch.axis_in(None if info is None else info.shape)
    if np.ndim(values) == 0 or values.shape[0] != rows or axis not in (0, None):
        raise InputError(f"{role} '{name}' has shape {list(np.shape(values))} for {rows} rows: its "
                         "first axis is not the batch (time-major, as a recurrent layer's "
                         "output); probe a tensor with the batch first, after the model "
                         "moves it back")


def _check_finite(inputs) -> None:
    """Before prepare_inputs, which would only warn: a decoder cannot fit NaN."""
    given = ([(f"input '{name}'", value) for name, value in inputs.items()]
             if isinstance(inputs, Mapping) else [("the input", inputs)])
    for name, value in given:
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InputError(f"{name} has non-finite values (NaN or infinity)")


def _target(explainer: Explainer, layer: str, wanted: str | None) -> str:
    """The first attribution source (in input order) that `layer` is computed from."""
    model = explainer.model
    sources = [s for s in explainer.sources if wanted is None or s.input == wanted]
    if wanted is not None and not sources:
        names = ", ".join(s.input for s in explainer.sources)
        raise InputError(f"target '{wanted}' is not a model input with a float value or an "
                         f"embedding (choose from {names})")
    for source in sources:
        if layer == source.tensor:
            raise InputError(f"layer '{layer}' is what a decoder would reconstruct (input "
                             f"'{source.input}' is attributed there); name a layer computed "
                             "from it")
        if depends_on(model, layer, source.tensor):
            return source.tensor
    raise InputError(f"layer '{layer}' is not computed from "
                     f"{'input ' + repr(wanted) if wanted else 'any float or token input'}; "
                     "a decoder has nothing to reconstruct")


def depends_on(model: Model, tensor: str, source: str) -> bool:
    """Whether `tensor` is computed from `source` (`source` itself does not count)."""
    if tensor == source:
        return False
    nodes = ancestors(model.proto.graph.node, [tensor], stop=[source])
    return any(source in node_inputs(node) for node in nodes)


def _floats(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind != "f":
        raise InputError(f"{what} holds {values.dtype} values; a decoder needs float tensors")
    if values.ndim < 2:
        raise InputError(f"{what} has shape {values.shape}; a decoder needs one row per input")
    if not np.isfinite(values).all():
        raise InputError(f"{what} has non-finite values (NaN or infinity) on these inputs")
    return values.astype(np.float32)
