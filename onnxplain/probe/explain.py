"""What a probe file says about inputs: per row and probed layer, the reconstruction, its
error, the class the model predicts on it (beside the class it predicts on the input) and,
for token models, which tokens the reconstruction still names; and a picture across layers
(input | reconstruction per layer, over the error per layer).

    >>> found = explain_probe("probe.onnx", x)
    >>> found.summary()["layers"][0]["mean_error"]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError
from ..explainer import Explainer
from ..images import image_layout
from ..inputs import prepare_inputs
from ..local.head import class_labels
from ..objective import class_scores
from ..viz.heatmap import colour_range, enlarge, heatmap_image, spatial_map, with_colour_bar
from ..viz.overlay import input_image
from ..viz.report import ReconstructionColumn
from ..viz.report_files import jsonable
from .model import NO_BETTER, Probe, ProbeLayer, fit_errors, load_probe, no_better_than_mean
from .tokens import real_tokens, row_token_accuracy, token_scores

GAP = 4  # pixels between the pictures of a strip


@dataclass
class LayerExplanation:
    """One probed layer on a batch: arrays have one row per input row."""

    layer: ProbeLayer
    reconstruction: np.ndarray  # [N, *target]
    error: np.ndarray  # [N, *target]: (reconstruction - target)^2
    prediction: np.ndarray  # the explained output computed on the reconstruction
    predicted_class: np.ndarray | None  # [N], when the output is class scores
    tokens: np.ndarray | None = None  # [N, T]: nearest token ids (token models)
    token_accuracy: np.ndarray | None = None  # [N]: each row's share of real tokens named
    token_scores: dict | None = None  # pooled over the rows: tokens.token_scores
    real: np.ndarray | None = None  # [N, T] token models: positions that are not padding

    @property
    def row_error(self) -> np.ndarray:
        """Mean squared reconstruction error per row (token models: over its real
        positions; NaN for a row that is all padding)."""
        if self.real is None:
            return self.error.reshape(len(self.error), -1).mean(axis=1)
        with np.errstate(invalid="ignore"):
            return self._real_error().sum(axis=1) / self.real.sum(axis=1)

    @property
    def mean_error(self) -> float:
        """Mean squared reconstruction error pooled over every row (and real position)."""
        if self.real is None:
            return float(self.error.mean())
        return float(self._real_error().sum() / max(int(self.real.sum()), 1))

    def _real_error(self) -> np.ndarray:
        """[N, T]: each position's mean error, 0 at padding."""
        per_position = self.error.reshape(*self.real.shape, -1).mean(axis=2)
        return np.where(self.real, per_position, 0.0)


@dataclass
class ProbeExplanation:
    """explain_probe's result: the inputs, the model's own output and class per row, and
    each layer's LayerExplanation; `labels` when given."""

    probe: Probe
    feeds: dict[str, np.ndarray]
    output: np.ndarray
    predicted_class: np.ndarray | None
    layers: list[LayerExplanation]
    labels: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.output)

    def summary(self) -> dict:
        """Plain JSON: per layer the mean error, how often the class on the reconstruction
        is the model's class on the input (and the label's, with labels), the token
        accuracy pooled over the rows' real positions beside its chance baseline
        (tokens.token_scores), the fit's relative error and whether it was no better than
        the mean input (from the probe file's info); per row the same numbers."""
        layers = []
        for found in self.layers:
            entry = {"index": found.layer.index, "layer": found.layer.layer,
                     "target": found.layer.target, "kind": found.layer.kind,
                     "mean_error": found.mean_error}
            if found.predicted_class is not None and self.predicted_class is not None:
                entry["agreement"] = _rate(found.predicted_class == self.predicted_class)
                if self.labels is not None:
                    entry["accuracy"] = _rate(found.predicted_class == self.labels)
            if found.token_scores is not None:
                entry.update(found.token_scores)
            errors, rows = fit_errors(self.probe.info, found.layer.layer)
            if errors.get("relative_mse") is not None:
                entry["fit_relative_mse"] = {"rows": rows, "value": errors["relative_mse"]}
                entry["no_better_than_mean"] = no_better_than_mean(errors)
            layers.append(entry)
        rows = []
        for row in range(self.rows):
            record: dict = {"row": row}
            if self.predicted_class is not None:
                record["predicted_class"] = int(self.predicted_class[row])
            if self.labels is not None:
                record["label"] = int(self.labels[row])
            record["layers"] = [_row_entry(found, row) for found in self.layers]
            rows.append(record)
        result = {"output": self.probe.output, "rows": self.rows, "layers": layers,
                  "row_details": rows}
        if self.predicted_class is not None and self.labels is not None:
            result["model_accuracy"] = _rate(self.predicted_class == self.labels)
        return jsonable(result)  # NaN (a row all padding) as None

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array under its output's name in the probe file, for an .npz."""
        found = {self.probe.output: self.output}
        for layer in self.layers:
            names = layer.layer.outputs
            found[names["reconstruction"]] = layer.reconstruction
            found[names["error"]] = layer.error
            found[names["prediction"]] = layer.prediction
            if layer.tokens is not None:
                found[names["tokens"]] = layer.tokens
        return found

    def picture(self, row: int) -> Image.Image | None:
        """Row `row` across layers: the input then each layer's reconstruction on one grey
        scale (the input's range), under them each layer's error per pixel on one colour
        scale with its bar; above each, its caption: 'input' or 'layer k', and the class
        the model predicts on it. None when the target is not an image input."""
        name = next((f.layer.target for f in self.layers if f.layer.target in self.feeds),
                    None)
        if name is None:
            return None
        values = self.feeds[name]
        layout = image_layout(values.shape)
        if layout is None:
            return None
        shown = [f for f in self.layers if f.layer.target == name]
        low, high = float(values[row].min()), float(values[row].max())
        tiles = [values[row]] + [np.clip(f.reconstruction[row], low, high) for f in shown]
        errors = [spatial_map(f.error[row], layout) for f in shown]
        width = 3 if layout == "NCHW" else 2  # the image's width axis within a row
        top = _split(enlarge(input_image(np.concatenate(tiles, axis=width - 1))), len(tiles))
        span = colour_range(np.concatenate(errors, axis=1))
        bottom = _split(heatmap_image(np.concatenate(errors, axis=1), span=span,
                                      min_size=top[0].width * len(errors)), len(errors))
        captions = [_caption("input", self.predicted_class, row)] + [
            _caption(f"layer {f.layer.index}", f.predicted_class, row) for f in shown]
        return _strip(top, [None, *bottom], span, captions)


def explain_probe(probe, inputs, providers=None, labels=None, progress: bool = False
                  ) -> ProbeExplanation:
    """Run probe file `probe` (path, bytes, ModelProto or a loaded Probe) on `inputs` (as
    Explainer takes them) and read its outputs per layer. `labels` (class per row) add the
    accuracy on reconstructions to the summary."""
    loaded = probe if isinstance(probe, Probe) else load_probe(probe)
    explainer = Explainer(loaded.path or loaded.proto, providers, output=loaded.output,
                          progress=progress)
    feeds = prepare_inputs(explainer.model, inputs)
    check_probe_inputs(loaded, feeds)
    outputs = explainer.forward(feeds)
    own = outputs[loaded.output]
    labels = None if labels is None else class_labels(labels, len(own))
    layers = [_layer(explainer.model, found, outputs, feeds) for found in loaded.layers]
    return ProbeExplanation(loaded, feeds, own, _classes(own), layers, labels)


def check_probe_inputs(probe: Probe, feeds: Mapping[str, np.ndarray]) -> None:
    """InputError, before ONNX Runtime runs, for inputs a probe's decoders cannot take: a
    decoder that fixes its output's shape (a linear one on flattened rows) given another
    sequence length or size."""
    for layer in probe.layers:
        if layer.fixed_target:
            _check_fitted_shape(layer, feeds)


def _check_fitted_shape(layer: ProbeLayer, feeds: Mapping[str, np.ndarray]) -> None:
    wanted = layer.target_shape
    if layer.token_input in feeds:  # the target is [N, T, E] for ids [N, T]
        name, have, need = layer.token_input, feeds[layer.token_input].shape[1:2], wanted[:1]
    elif layer.target in feeds:
        name, have, need = layer.target, feeds[layer.target].shape[1:], wanted
    else:
        return
    if tuple(have) == tuple(need):
        return
    start = f"probe layer {layer.index} ('{layer.layer}') has a linear decoder on flattened rows"
    if name == layer.token_input:
        raise InputError(f"{start}, fitted on {need[0]} tokens of input '{name}' per row; "
                         f"these rows have {have[0]}: give rows of {need[0]} tokens")
    raise InputError(f"{start}, fitted on input '{name}' of shape {list(need)} per row; "
                     f"these rows are {list(have)}: give inputs of the fitted shape")


def _layer(model, layer: ProbeLayer, outputs: Mapping[str, np.ndarray],
           feeds: Mapping[str, np.ndarray]) -> LayerExplanation:
    names = layer.outputs
    prediction = outputs[names["prediction"]]
    found = LayerExplanation(layer, outputs[names["reconstruction"]], outputs[names["error"]],
                             prediction, _classes(prediction))
    if "tokens" in names and layer.token_input in feeds:
        found.tokens = outputs[names["tokens"]]
        ids = feeds[layer.token_input]
        real = real_tokens(model, feeds, layer.token_input)
        found.real = real.real
        found.token_accuracy = row_token_accuracy(found.tokens, ids, real.real)
        found.token_scores = token_scores(found.tokens, ids, real)
    return found


def _classes(scores: np.ndarray) -> np.ndarray | None:
    found = class_scores(scores)
    return None if found is None or found.shape[1] < 2 else found.argmax(axis=1)


def _row_entry(found: LayerExplanation, row: int) -> dict:
    entry: dict = {"index": found.layer.index, "mean_error": float(found.row_error[row])}
    if found.predicted_class is not None:
        entry["predicted_class"] = int(found.predicted_class[row])
    if found.token_accuracy is not None:
        entry["token_accuracy"] = float(found.token_accuracy[row])
        entry["tokens"] = found.tokens[row].tolist()
    return entry


def _split(image: Image.Image, count: int) -> list[Image.Image]:
    """`image` cut into `count` tiles of equal width, left to right."""
    width = image.width // count
    return [image.crop((k * width, 0, (k + 1) * width, image.height)) for k in range(count)]


def _caption(name: str, classes: np.ndarray | None, row: int) -> str:
    return name if classes is None else f"{name}: {int(classes[row])}"


def caption_height() -> int:
    """The band above a strip's tiles that holds their captions."""
    left, top, right, bottom = ImageFont.load_default().getbbox("Ag")
    return int(bottom - min(top, 0)) + GAP


def _strip(top: list[Image.Image], bottom: list[Image.Image | None], span,
           captions: list[str]) -> Image.Image:
    """Two rows of tiles, GAP apart, under a band of captions, the bottom row's colour bar
    on the right."""
    size, band = top[0].width, caption_height()
    canvas = Image.new("RGB", (len(top) * (size + GAP) - GAP, band + 2 * size + GAP), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for column, (upper, lower) in enumerate(zip(top, bottom, strict=True)):
        draw.text((column * (size + GAP), 0), captions[column], fill="black", font=font)
        canvas.paste(upper.convert("RGB"), (column * (size + GAP), band))
        if lower is not None:
            canvas.paste(lower.convert("RGB"), (column * (size + GAP), band + size + GAP))
    return with_colour_bar(canvas, span, "inferno")


def _rate(hits: np.ndarray) -> float:
    return float(np.mean(hits)) if hits.size else float("nan")


def report_columns(found: ProbeExplanation) -> list[ReconstructionColumn]:
    """One column of `onnxplain report` per probed layer (viz.report.ReconstructionColumn):
    pictures where the layer rebuilds an image input, numbers for every layer."""
    columns = []
    summary = {entry["index"]: entry for entry in found.summary()["layers"]}
    for layer in found.layers:
        probed = layer.layer
        image = probed.target in found.feeds and \
            image_layout(found.feeds[probed.target].shape) is not None
        columns.append(ReconstructionColumn(
            f"probe {probed.index}: {probed.layer}", probed.token_input or probed.target,
            layer.reconstruction if image else None, layer.error if image else None,
            layer.row_error, layer.predicted_class, layer.token_accuracy,
            _notes(summary[probed.index])))
    return columns


def _notes(entry: dict) -> list[str]:
    """What a report says of a whole layer: the pooled token accuracy beside its chance
    baseline, and a fit no better than the mean input."""
    notes = []
    if "token_accuracy" in entry:
        notes.append(f"{entry['token_accuracy']:.1%} of {entry['real_positions']} real "
                     f"tokens named (chance {entry['chance_accuracy']:.1%}; padding by "
                     f"{entry['padding']})")
    if entry.get("no_better_than_mean"):
        notes.append(fit_note(entry))
    return notes


def fit_note(entry: dict) -> str:
    """A summary entry's flag of a fit no better than the mean input, with its number."""
    fit = entry["fit_relative_mse"]
    return f"{NO_BETTER} at fit ({fit['rows']} relative error {fit['value']:.3g})"
