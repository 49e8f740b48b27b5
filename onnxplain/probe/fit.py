"""Fitting decoder probes: from each layer's activations back to the model's input.

Schneider & Vlachos, "Explaining classifiers by constructing familiar concepts" (Machine
Learning, 2022): what a decoder can rebuild from layer l shows what of the input the
model keeps there; early layers keep detail, late ones what the classifier needs.

The linear decoder minimises, over the training rows (positions of a sequence count as
rows when it decodes per position),
    J(W, b) = mean((A W + b - X)^2) + ridge ||W||^2,
whose minimiser is the closed-form ridge solution (`ridge_solution`). The shipped linear
decoder is that solution; with classifier_weight > 0 it is the starting point of training
on the classifier-aware loss (see training.py). `linear_init="random"` trains it from
random weights instead, which the tests use to check the training path against the
closed form. The conv decoder is always trained; beside it info records the linear closed
form's held-out relative error (`linear_baseline`), to compare the two.

Every check that can fail (the decoder kind, a token target's positions, the opset
training needs, the memory of the closed form and of the decoder's weights) runs for every
layer before any fitting.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from onnx import TensorProto, helper

from ..errors import InputError
from ..graph.cut import cut_at
from ..graph.model import Model
from ..graph.shapes import ai_onnx_opset
from ..graph.weights import payload_bytes
from ..local.head import class_labels
from ..methods._common import ConvergenceWarning
from ..runtime.session import Session, resolve_providers
from .data import Tapped, tap
from .decoders import Decoder, choose_kind, init_decoder, per_position
from .ridge import WEIGHT_BUDGET, check_budget, fits_budget, ridge_solution, weight_bytes
from .tokens import RealTokens, token_scores
from .training import DECODER_OPSET, Classifier, Schedule, Trained, reconstruct, train

LINEAR_INITS = ("ridge", "random")
MIN_TRAINING_ROWS = 2
TRAINING_OPSET = 10  # Resize (the conv decoder) and autodiff's rules start there
NEAREST_CHUNK_BYTES = 64 * 2**20  # float64 distances computed at a time by nearest_tokens


class ProbeWarning(UserWarning):
    """A decoder fitted, but its errors say it rebuilds nothing of the input."""


@dataclass
class FittedProbe:
    decoders: list[Decoder]
    info: dict   # per layer: kind, losses, errors, options used; see fit_probe


def fit_probe(model, layers: Sequence[str], inputs, *, decoder: str = "auto", labels=None,
              classifier_weight: float = 0.0, ridge: float = 1e-3, epochs: int = 100,
              batch_size: int = 64, lr: float = 3e-2, holdout: float = 0.2, seed: int = 0,
              providers=None, linear_init: str = "ridge", target: str | None = None,
              hidden: int = 32) -> FittedProbe:
    """Fit one decoder per layer that rebuilds the input from the layer's activations.

    decoder: "linear", "conv" (spatial layers [C, h, w] to an image input [Cin, H, W], channels
    first) or "auto" (from a spatial layer of at least 2 x 2 positions to a channels-first
    image, without classifier_weight, both, keeping the one with the lower held-out error, both
    errors in info["auto"]; else linear). classifier_weight > 0 adds the cross-entropy of the
    model's prediction on the reconstruction against `labels` (class indices or one-hot rows;
    default: the model's own predicted class). A `holdout` share of the rows (seeded) is kept
    out of fitting to measure the held-out error. For token ids the decoder rebuilds their
    embedding lookup's output per position (a layer without the token axis is refused: its
    decoder would fix the sequence length); padding positions (tokens.real_tokens: by attention
    mask or lengths input) are left out of the closed form, the training loss and the errors;
    info names the embedding table for nearest-token read-outs.

    Training (conv decoders; linear ones with classifier_weight > 0, or with
    linear_init="random"; opset >= 10): Adam on shuffled mini-batches, `lr` being a share of
    the target's standard deviation per step (training.step_scales); `ridge` penalises the
    linear decoder's weight only. The loss over the fitting rows is measured at the start
    and at the end, and the weights of lower loss are kept (ConvergenceWarning when that is
    the start, or when the loss was still falling).

    info: {"options": ..., "layers": {layer: {"kind", "target", "embedding_table",
    "solver", "history", "start_loss", "trained_loss", "kept" (trained decoders),
    "linear_baseline" (conv decoders: the linear closed form's held-out relative error,
    None without held-out rows or over budget), "train": errors, "held_out": errors}}},
    errors being {"mse", "relative_mse" (mse over the target's variance), "no_better_than_mean"
    (relative_mse >= 1; ProbeWarning), "agreement" (share of rows where the model predicts
    on the reconstruction what it predicts on the input), "accuracy" and "model_accuracy"
    (on the reconstruction and on the input, against labels, when given), and for tokens
    tokens.token_scores: "token_accuracy", "chance_accuracy", "real_positions", "padding"}.
    A linear decoder whose weight would pass ridge.WEIGHT_BUDGET (512 MB), or whose closed
    form would pass ridge.SOLVE_BUDGET (2 GB), is refused before any fitting.
    """
    _check_options(decoder, classifier_weight, ridge, epochs, batch_size, lr, holdout,
                   linear_init, hidden)
    data = tap(model, layers, inputs, providers, target)
    fit_rows, held_rows = split_rows(data.rows, holdout, seed)
    if classifier_weight > 0:
        _scores_output(data)
    opset = ai_onnx_opset(data.explainer.model.proto) or DECODER_OPSET
    kinds = {layer: _plan(data, layer, decoder, classifier_weight, linear_init, fit_rows,
                          opset) for layer in data.activations}
    _check_file_size(data, kinds, decoder == "auto")
    predicted = _classes(data.scores)  # the tapping run's output: no second run
    labels = predicted if labels is None else class_labels(labels, data.rows)
    run = _Run(data, decoder, kinds, classifier_weight, linear_init, hidden,
               Schedule(epochs, batch_size, lr, ridge, seed, opset), providers, fit_rows,
               held_rows, labels, predicted)
    options = {"decoder": decoder, "classifier_weight": classifier_weight, "ridge": ridge,
               "epochs": epochs, "batch_size": batch_size, "lr": lr, "holdout": holdout,
               "seed": seed, "linear_init": linear_init, "hidden": hidden,
               "labels": "model predictions" if labels is predicted else "given",
               "rows": {"fit": len(fit_rows), "held_out": len(held_rows)}}
    if data.padding is not None:
        options["padding"] = data.padding
    decoders, infos = [], {}
    for layer in data.activations:  # a loop, not a comprehension: warnings' stacklevel
        fitted, infos[layer] = _fit_layer(run, layer)
        decoders.append(fitted)
    return FittedProbe(decoders, {"options": options, "layers": infos})


@dataclass
class _Run:
    """What every layer's fit shares: the tapped data, the options, the row split."""

    data: Tapped
    asked: str              # the decoder asked for: "auto" compares conv with linear
    kinds: dict[str, str]   # layer -> decoder kind, chosen and checked by _plan
    classifier_weight: float
    linear_init: str
    hidden: int
    schedule: Schedule
    providers: object
    fit_rows: np.ndarray
    held_rows: np.ndarray
    labels: np.ndarray | None
    predicted: np.ndarray | None
    cut_sessions: dict[str, tuple[Session, set[str]]] = field(default_factory=dict)

    def trains(self, kind: str) -> bool:
        return _trains(kind, self.classifier_weight, self.linear_init)


def _trains(kind: str, classifier_weight: float, linear_init: str) -> bool:
    """Whether a decoder is trained (else it ships in closed form)."""
    return kind == "conv" or classifier_weight > 0 or linear_init == "random"


def _plan(data: Tapped, layer: str, wanted: str, classifier_weight: float, linear_init: str,
          fit_rows: np.ndarray, opset: int) -> str:
    """The decoder kind for `layer`, once everything that would refuse it is checked."""
    a, name = data.activations[layer], data.target_of[layer]
    layer_shape, target_shape = a.shape[1:], data.targets[name].shape[1:]
    kind = choose_kind(wanted, layer_shape, target_shape)
    if wanted == "auto" and kind == "conv" and opset < TRAINING_OPSET:
        kind = "linear"  # conv trains, and training starts at opset 10
    sequence = per_position(layer_shape, target_shape)
    if name in data.embedding_of and not (kind == "linear" and sequence):
        raise InputError(
            f"layer '{layer}' {list(layer_shape)} has no axis of the {target_shape[0]} token "
            f"positions of its target {list(target_shape)}: a decoder from it would only fit "
            f"sequences of exactly {target_shape[0]} tokens; probe a sequence layer "
            "[positions, features] (batch first), decoded per position")
    info = data.explainer.model.infos.get(name)
    if classifier_weight > 0 and (info is None or info.dtype != TensorProto.FLOAT):
        raise InputError(f"the classifier-aware loss feeds float32 reconstructions to the "
                         f"model, but '{name}' is not float32; leave classifier_weight at 0")
    if _trains(kind, classifier_weight, linear_init) and opset < TRAINING_OPSET:
        raise InputError(
            f"training a {kind} decoder needs opset >= {TRAINING_OPSET}, but the model has "
            f"opset {opset}; use the linear decoder without classifier_weight (closed form)")
    if kind == "linear":
        features, outputs = _linear_size(data, layer)
        real = None if data.real is None or not sequence else data.real[fit_rows]
        rows = (int(real.sum()) if real is not None
                else len(fit_rows) * (layer_shape[0] if sequence else 1))
        check_budget(layer, rows, features, outputs, closed_form=linear_init == "ridge")
    return kind


def _solver(kind: str, trained: bool, kept: str | None, linear_init: str) -> str:
    """How the shipped weights were found."""
    if not trained:
        return "closed-form ridge"
    if kept == "start":  # training did not improve on where it began
        return ("closed-form ridge" if kind == "linear" and linear_init == "ridge"
                else "initial weights")
    return "adam"


def _linear_size(data: Tapped, layer: str) -> tuple[int, int]:
    """A linear decoder's (features, outputs): per position for a sequence layer, else of
    the flattened rows."""
    layer_shape = data.activations[layer].shape[1:]
    target_shape = data.targets[data.target_of[layer]].shape[1:]
    if per_position(layer_shape, target_shape):
        return layer_shape[-1], target_shape[-1]
    return int(np.prod(layer_shape)), int(np.prod(target_shape))


# One protobuf file holds at most 2 GB: the model's weights, the decoders', and the graph.
FILE_BUDGET = 2**31 - 2**26


def _check_file_size(data: Tapped, kinds: dict[str, str], auto: bool) -> None:
    """Refuse, before any fitting, decoders that would not fit one probe file with the
    model: linear weights (an `auto` conv layer may end linear) plus the model's."""
    sizes = {layer: weight_bytes(*_linear_size(data, layer)) for layer in kinds}
    decoders = sum(size for layer, size in sizes.items()
                   if kinds[layer] == "linear" or auto and size <= WEIGHT_BUDGET)
    model = payload_bytes(data.explainer.model.proto)
    if decoders + model > FILE_BUDGET:
        raise InputError(f"the decoders' weights ({decoders / 2**30:.2f} GB, linear) and the "
                         f"model's ({model / 2**30:.2f} GB) pass the 2 GB one ONNX file holds; "
                         "probe fewer or smaller layers per file")


def _fit_layer(run: _Run, layer: str) -> tuple[Decoder, dict]:
    """The decoder _plan chose; for `auto` a conv decoder is kept only where its held-out
    error is below the linear closed form's (a decoder that rebuilds less says less about
    what the layer keeps). Only the kept decoder's warnings are shown."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fitted, info = _fit_kind(run, layer, run.kinds[layer])
        baseline = info.get("linear_baseline")
        conv = (info["held_out"] or {}).get("relative_mse")
        if (run.asked == "auto" and info["kind"] == "conv" and run.classifier_weight == 0
                and baseline is not None and conv is not None):
            info["auto"] = {"conv": conv, "linear": baseline}
            if baseline < conv:
                said.clear()
                fitted, linear = _fit_kind(run, layer, "linear")
                info = {**linear, "auto": info["auto"]}
    for warning in said:
        warnings.warn_explicit(warning.message, warning.category, warning.filename,
                               warning.lineno)
    return fitted, info


def _fit_kind(run: _Run, layer: str, kind: str) -> tuple[Decoder, dict]:
    data, rows = run.data, run.fit_rows
    a, name = data.activations[layer], data.target_of[layer]
    x = data.targets[name]
    real = None if data.real is None else data.real[rows]
    fitted = _initial(layer, name, kind, a[rows], x[rows], real, run.schedule.ridge,
                      run.linear_init, run.hidden, run.schedule.seed)
    training: dict = {"history": []}
    if run.trains(kind):
        classifier = (_classifier(data, name, run.classifier_weight, run.labels[rows], rows)
                      if run.classifier_weight > 0 else None)
        result = train(fitted, a[rows], x[rows], run.schedule, classifier, run.providers,
                       real=real if fitted.per_position else None)
        scale = float(x[rows].var()) if classifier is None else None
        _warn_of_training(layer, kind, result, scale)
        fitted = result.decoder
        training = {"history": result.history, "start_loss": result.start_loss,
                    "trained_loss": result.trained_loss, "kept": result.kept}
    held = run.held_rows
    info = {
        "kind": kind, "target": name, "embedding_table": data.embedding_of.get(name),
        "layer_shape": list(fitted.layer_shape), "target_shape": list(fitted.target_shape),
        "solver": _solver(kind, run.trains(kind), training.get("kept"), run.linear_init),
        **training,
        "train": _errors(run, fitted, rows, x[rows]),
        "held_out": _errors(run, fitted, held, x[held]) if len(held) else None}
    if kind == "conv":
        info["linear_baseline"] = _linear_baseline(run, layer)
    _warn_if_no_better_than_mean(layer, kind, info["held_out"] or info["train"])
    return fitted, info


# ---- warnings --------------------------------------------------------------------------------
# A loss still falling, over the last CONVERGED_EPOCHS epochs (all of them, from the start,
# in shorter runs), by more than CONVERGED_DROP of the target's variance: the relative error
# would still move by that much, so it measures the training budget as much as what the
# layer keeps. The classifier-aware loss adds a cross-entropy in nats, not in the target's
# units: there the drop is a share of the starting loss.
CONVERGED_EPOCHS, CONVERGED_DROP = 10, 0.01


def _warn_of_training(layer: str, kind: str, result: Trained, variance: float | None
                      ) -> None:
    """Warn when training ended above its start (the start is kept), or when its loss was
    still falling; `variance`: the target's, None for the classifier-aware loss."""
    if result.kept == "start":
        warnings.warn(f"layer '{layer}': training the {kind} decoder ended at loss "
                      f"{result.trained_loss:.4g}, above its start's {result.start_loss:.4g}, "
                      "so the starting weights are kept: give a lower lr or more epochs",
                      ConvergenceWarning, stacklevel=5)
        return
    losses = [result.start_loss, *result.history]
    span = min(CONVERGED_EPOCHS, len(losses) - 1)
    unit = "the target's variance" if variance is not None else "its starting loss"
    scale = variance if variance is not None else abs(result.start_loss)
    drop = (losses[-1 - span] - losses[-1]) / max(scale, 1e-30)
    if drop > CONVERGED_DROP:
        warnings.warn(f"layer '{layer}': the {kind} decoder's loss still fell by {drop:.3f} "
                      f"of {unit} over its last {span} epochs, so its errors "
                      "are those of a decoder not fully trained: give more epochs",
                      ConvergenceWarning, stacklevel=5)


def _warn_if_no_better_than_mean(layer: str, kind: str, errors: dict) -> None:
    if errors.get("no_better_than_mean"):
        warnings.warn(f"layer '{layer}': the {kind} decoder's relative error is "
                      f"{errors['relative_mse']:.3f} (>= 1): its reconstructions are no better "
                      "than the mean input", ProbeWarning, stacklevel=5)


# ---- the linear decoder's closed form --------------------------------------------------------
def _linear_baseline(run: _Run, layer: str) -> float | None:
    """The held-out relative error of the flattened linear decoder in closed form, beside a
    conv decoder's; None without held-out rows or when its system is over budget."""
    data, fit, held = run.data, run.fit_rows, run.held_rows
    a = data.activations[layer].reshape(data.rows, -1)
    x = data.targets[data.target_of[layer]].reshape(data.rows, -1)
    if not len(held) or not fits_budget(len(fit), a.shape[1], x.shape[1]):
        return None
    weight, bias = ridge_solution(a[fit], x[fit], run.schedule.ridge)
    return relative_error(a[held].astype(np.float64) @ weight + bias, x[held])


def relative_error(got: np.ndarray, wanted: np.ndarray) -> float | None:
    """Mean squared error over the target's variance (per value across rows, averaged):
    1 is the error of always answering the mean."""
    mse = float(((got.astype(np.float64) - wanted) ** 2).mean())
    variance = float(wanted.astype(np.float64).var(axis=0).mean())
    return mse / variance if variance > 0 else None


def linear_rows(decoder: Decoder, a: np.ndarray, x: np.ndarray,
                real: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows a linear decoder maps: the positions of a sequence (those `real` marks, when
    given: padding is not data), or whole flattened rows."""
    if decoder.per_position:
        if real is not None:
            return a[real], x[real]
        return a.reshape(-1, a.shape[-1]), x.reshape(-1, x.shape[-1])
    return a.reshape(len(a), -1), x.reshape(len(x), -1)


def _initial(layer: str, target: str, kind: str, a: np.ndarray, x: np.ndarray,
             real: np.ndarray | None, ridge: float, linear_init: str, hidden: int, seed: int
             ) -> Decoder:
    start = scaled_to_data(init_decoder(layer, target, kind, a.shape[1:], x.shape[1:],
                                        np.random.default_rng(seed), hidden=hidden), a, x)
    if kind != "linear" or linear_init == "random":
        return start
    weight, bias = ridge_solution(*linear_rows(start, a, x, real), ridge)
    return replace(start, params={"weight": weight.astype(np.float32),
                                  "bias": bias.astype(np.float32)})


def scaled_to_data(decoder: Decoder, a: np.ndarray, x: np.ndarray) -> Decoder:
    """Random weights made for unit-scale inputs divided by the activations' root mean
    square, and the output bias set to the target's mean: training then starts near the
    mean, whatever the layer's scale (a deep ReLU layer's activations reach tens). One
    scale for the whole layer: per channel, rarely active channels would get huge weights."""
    params = dict(decoder.params)
    rms = float(np.sqrt((a.astype(np.float64) ** 2).mean())) or 1.0
    if decoder.kind == "linear":
        params["weight"] = params["weight"] / rms
        params["bias"] = linear_rows(decoder, a, x)[1].mean(axis=0)
    else:
        params["weight1"] = params["weight1"] / rms
        params["weight2"] = params["weight2"] * x.std()  # outputs at the target's scale
        params["bias2"] = x.mean(axis=(0, 2, 3))
    return replace(decoder, params={k: v.astype(np.float32) for k, v in params.items()})


# ---- the model on reconstructions ----------------------------------------------------------
def _classifier(data: Tapped, target: str, weight: float, labels: np.ndarray,
                rows: np.ndarray) -> Classifier:
    return Classifier(data.explainer.model, target, _scores_output(data), weight, labels,
                      {name: value[rows] for name, value in data.feeds.items()})


def _scores_output(data: Tapped) -> str:
    output = data.explainer.output
    info = data.explainer.model.infos.get(output)
    if info is None or info.rank != 2:
        raise InputError(f"output '{output}' is not [batch, classes]; predictions on "
                         "reconstructions need a classifier's scores")
    return output


def _predictions(data: Tapped, feeds: dict[str, np.ndarray]) -> np.ndarray | None:
    """The model's class per row, or None when its output is not [batch, classes]."""
    return _classes(data.explainer.forward(feeds)[data.explainer.output])


def _classes(scores: np.ndarray) -> np.ndarray | None:
    return scores.argmax(axis=1) if scores.ndim == 2 else None


def predict_on(run: _Run, target: str, reconstruction: np.ndarray, rows: np.ndarray
               ) -> np.ndarray | None:
    """The model's class per row when the target is replaced by its reconstruction, cast to
    the target's element type (a float16 model's); token models run the model cut at the
    embedding lookup's output, built once per target."""
    data = run.data
    info = data.explainer.model.infos.get(target)
    if info is not None and info.dtype is not None:
        reconstruction = reconstruction.astype(helper.tensor_dtype_to_np_dtype(info.dtype))
    feeds = {name: value[rows] for name, value in data.feeds.items()}
    if target in feeds:
        return _predictions(data, feeds | {target: reconstruction})
    if target not in run.cut_sessions:
        cut = cut_at(data.explainer.model, target)
        run.cut_sessions[target] = (Session(cut.proto, resolve_providers(run.providers)),
                                    {spec.name for spec in cut.inputs})
    session, names = run.cut_sessions[target]
    output = data.explainer.output
    fed = {name: value for name, value in feeds.items() if name in names}
    return _classes(session.run([output], fed | {target: reconstruction})[output])


def _errors(run: _Run, decoder: Decoder, rows: np.ndarray, x: np.ndarray) -> dict:
    """Errors of the reconstruction over `rows` (see fit_probe); padding positions, when
    data.real marks them, are left out of the squared error and the token scores."""
    data, labels, predicted = run.data, run.labels, run.predicted
    x_hat = reconstruct(decoder, data.activations[decoder.layer][rows], run.providers,
                        opset=run.schedule.opset)
    real = None if data.real is None or not decoder.per_position else data.real[rows]
    wanted, got = (x, x_hat) if real is None else (x[real], x_hat[real])
    relative = relative_error(got, wanted)
    errors = {"rows": len(rows), "mse": float(((got.astype(np.float64) - wanted) ** 2).mean()),
              "relative_mse": relative,
              "no_better_than_mean": relative is not None and relative >= 1}
    table = data.embedding_of.get(decoder.target)
    if table is not None:
        ids = data.feeds[data.ids_of[decoder.target]][rows]
        found = nearest_tokens(x_hat, embedding_table(data.explainer.model, table))
        errors |= token_scores(found, ids, RealTokens(data.real[rows], data.padding))
    if predicted is not None:
        on_x_hat = predict_on(run, decoder.target, x_hat, rows)
        if on_x_hat is not None:
            errors["agreement"] = float((on_x_hat == predicted[rows]).mean())
            if labels is not predicted and labels is not None:
                errors["accuracy"] = float((on_x_hat == labels[rows]).mean())
                errors["model_accuracy"] = float((predicted[rows] == labels[rows]).mean())
    return errors


# ---- tokens ----------------------------------------------------------------------------------
def embedding_table(model: Model, name: str) -> np.ndarray:
    """The values of initializer `name` (an embedding table [vocabulary, E])."""
    table = model.constant_value(name)
    if table is None:
        raise InputError(f"no initializer named '{name}' in the model")
    return table


def nearest_tokens(embeddings: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The id of the table row nearest (Euclidean) to each embedding [..., E]: argmin_v
    ||e - t_v||^2 = argmin_v ||t_v||^2 - 2 e . t_v, over chunks of embeddings whose
    distances to the whole table take NEAREST_CHUNK_BYTES at most."""
    flat = embeddings.reshape(-1, embeddings.shape[-1]).astype(np.float64)
    table = table.astype(np.float64)
    norms = (table ** 2).sum(axis=1)
    chunk = max(1, NEAREST_CHUNK_BYTES // (8 * max(len(table), 1)))
    found = [(norms - 2 * flat[i:i + chunk] @ table.T).argmin(axis=1)
             for i in range(0, len(flat), chunk)]
    ids = np.concatenate(found) if found else np.zeros(0, np.int64)
    return ids.reshape(embeddings.shape[:-1])


# ---- checks --------------------------------------------------------------------------------
def split_rows(rows: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows), sorted; a seeded `holdout` share is held out."""
    order = np.random.default_rng(seed).permutation(rows)
    held = int(round(rows * holdout))
    if holdout and held < 1:
        held = 1
    if rows - held < MIN_TRAINING_ROWS:
        raise InputError(f"{rows} rows are too few: fitting needs at least "
                         f"{MIN_TRAINING_ROWS} rows besides the {held} held out")
    return np.sort(order[held:]), np.sort(order[:held])


def _check_options(decoder: str, classifier_weight: float, ridge: float, epochs: int,
                   batch_size: int, lr: float, holdout: float, linear_init: str,
                   hidden: int) -> None:
    if decoder not in ("auto", "linear", "conv"):
        raise InputError(f"unknown decoder '{decoder}'; choose auto, linear or conv")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("hidden", hidden)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("classifier_weight", classifier_weight), ("ridge", ridge)):
        if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    if not isinstance(lr, int | float) or not np.isfinite(lr) or lr <= 0:
        raise InputError(f"lr must be a positive number, got {lr!r}")
    if not isinstance(holdout, int | float) or not 0 <= holdout < 1:
        raise InputError(f"holdout must be in [0, 1), got {holdout!r}")
    if linear_init not in LINEAR_INITS:
        raise InputError(f"unknown linear_init '{linear_init}'; choose ridge or random")
