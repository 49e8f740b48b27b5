"""Files `onnxplain explain` writes: attribution arrays, heatmaps, summary.json."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from onnxplain.attribution import Attribution
from onnxplain.errors import InputError
from onnxplain.files import save_json, save_npy, save_npz
from onnxplain.viz.heatmap import heatmap_image, image_layout, save_png, spatial_map
from onnxplain.vocab import Vocabulary

from .token_outputs import safe_name, write_token_views

MAX_HEATMAPS = 64


def prepare_folder(out: str, protected: list[str]) -> Path:
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_explanation(attribution: Attribution, folder: Path, protected: list[str],
                      signed: bool, feeds: dict[str, np.ndarray] | None = None,
                      vocabulary: Vocabulary | None = None) -> list[str]:
    """Write every output file atomically; refuse to overwrite a protected (input) file.
    Token-id inputs get HTML pages and JSON of their token scores (strings from
    `vocabulary`, else the ids)."""
    guard = {os.path.realpath(p) for p in protected}
    written: list[str] = []

    def target(name: str) -> Path:
        path = folder / name
        if os.path.realpath(path) in guard:
            raise InputError(f"refusing to overwrite {path}: it is one of your input files")
        written.append(str(path))
        return path

    if attribution.attributions:
        save_npy(target("attribution.npy"), attribution.first)
    arrays = dict(attribution.attributions)
    # Tensors inside the model (embeddings, layer maps, activations) under '@' + their name.
    arrays.update({f"@{tensor}": value for tensor, value in attribution.tensors.items()
                   if tensor not in attribution.attributions})
    save_npz(target("attributions.npz"), arrays)
    for name, values in attribution.attributions.items():
        layout = image_layout(values.shape)
        if layout is None:
            continue
        for row in range(min(values.shape[0], MAX_HEATMAPS)):
            image = heatmap_image(spatial_map(values[row], layout, signed), signed)
            save_png(image, target(f"heatmap_{safe_name(name)}_{row}.png"))
    write_token_views(attribution, feeds or {}, vocabulary, target)
    summary = attribution.summary()
    summary["files"] = [os.path.basename(p) for p in written] + ["summary.json"]
    save_json(target("summary.json"), summary)
    return written


def describe_result(attribution: Attribution) -> list[str]:
    lines = []
    for row, used in enumerate(attribution.target.tolist()):
        text = f"row {row}: explained class {used}"
        if attribution.predicted is not None:
            text += (f", predicted class {int(attribution.predicted[row])} "
                     f"(score {float(attribution.predicted_score[row]):.4g})")
        lines.append(text)
    if not lines and attribution.target_score is not None:
        lines.append(f"explained output '{attribution.output}' "
                     f"(values {np.round(attribution.target_score, 4).tolist()})")
    return lines
