"""Files `onnxplain explain` writes: attribution arrays, heatmaps with overlays, token views,
and summary.json, which lists every file of the run so that the next run into the same folder
removes the ones it does not write again."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxplain.attribution import Attribution
from onnxplain.errors import InputError
from onnxplain.files import safe_name, save_json, save_npy, save_npz, umask
from onnxplain.images import image_layout
from onnxplain.objective import NEXT_TOKEN
from onnxplain.viz.heatmap import (
    CLIP_PERCENTILE,
    colour_bar_text,
    colour_range,
    default_colormap,
    heatmap_image,
    save_png,
    spatial_map,
    with_colour_bar,
)
from onnxplain.viz.overlay import overlay
from onnxplain.vocab import Vocabulary

from .input_files import InputSet
from .token_outputs import write_token_views

MAX_HEATMAPS = 64
SUMMARY = "summary.json"


@dataclass(frozen=True)
class HeatmapStyle:
    """How heatmaps are drawn: the colormap (None: inferno, rdbu for signed maps) and the
    percentile of |value| that gets the full colour."""

    colormap: str | None = None
    clip_percentile: float = CLIP_PERCENTILE


def prepare_folder(out: str, protected: list[str]) -> Path:
    """The --out folder, checked before any work starts but not created: `writing_into`
    creates it when there is something to write, so that a failed run leaves nothing."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    existing = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"--out {out} cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: cannot write in {existing} (permission denied)")
    return folder


# Errors of the place written to, not of onnxplain: told as the user's problem (exit 2).
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                          errno.ENAMETOOLONG, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST,
                          errno.EISDIR, errno.ENOTEMPTY})


@dataclass(frozen=True)
class Staging:
    """Where a run writes its files (`path`, a new hidden folder) and the folder they go into
    when the run succeeds (`folder`); names in `drop` are removed from `folder` after that."""

    folder: Path
    path: Path
    drop: set[str] = field(default_factory=set)


@contextlib.contextmanager
def writing_into(folder: Path) -> Iterator[Staging]:
    """A Staging for the block: files are written into a new hidden folder (inside `folder`
    when it exists, so that moving them is a rename on the same file system; else beside it)
    and moved into `folder` only when the block succeeds. A failed run leaves `folder` exactly
    as it was, and no folder it created. Failures to write (read-only, full, names too long)
    become one-line InputErrors."""
    absolute = folder.absolute()
    created = [p for p in (absolute, *absolute.parents) if not p.exists()]
    staging = None
    try:
        try:
            home = absolute if not created else absolute.parent
            home.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".onnxplain-", dir=home))
            os.chmod(staging, 0o777 & ~umask())  # a created folder gets the usual mode
        except OSError as err:
            doing = "create the folder" if created else "write to"
            raise InputError(f"cannot {doing} {folder}: {err.strerror or err}") from None
        try:
            stage = Staging(folder, staging)
            yield stage
            _commit(stage, created)
        except OSError as err:
            if err.errno not in WRITE_ERRNOS:
                raise
            # The name the user would see: the file's place in `folder`, not in the staging.
            shown = str(err.filename or folder).replace(str(staging), str(folder))
            raise InputError(f"cannot write to {shown}: {err.strerror or err}") from None
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        raise


def _commit(stage: Staging, created: list[Path]) -> None:
    """Move the staged files into place (the whole folder at once when it is new), then drop
    the names the run said are stale."""
    if created:
        os.rename(stage.path, stage.folder)
        return
    for entry in sorted(os.listdir(stage.path)):
        os.replace(stage.path / entry, stage.folder / entry)
    os.rmdir(stage.path)
    for name in sorted(stage.drop):
        path = stage.folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()


def write_explanation(attribution: Attribution, stage: Staging, protected: list[str],
                      signed: bool, feeds: dict[str, np.ndarray] | None = None,
                      vocabulary: Vocabulary | None = None, style: HeatmapStyle | None = None,
                      inputs: InputSet | None = None) -> list[str]:
    """Write every output file atomically; refuse to overwrite a protected (input) file.
    Image inputs get a heatmap and an overlay per row, token-id inputs HTML pages and JSON of
    their token scores (strings from `vocabulary`, else the ids). Files are written into
    `stage` (writing_into); those an earlier run listed in summary.json and this one does not
    write are removed once the new ones are in place. Returns the paths written."""
    folder = stage.folder
    guard = {os.path.realpath(p) for p in protected}
    previous = previous_files(folder)
    written: list[str] = []

    def target(name: str) -> Path:
        path = folder / name
        if os.path.realpath(path) in guard:
            raise InputError(f"refusing to overwrite {path}: it is one of your input files")
        written.append(str(path))
        return stage.path / name

    if attribution.attributions:
        save_npy(target("attribution.npy"), attribution.first)
    arrays = dict(attribution.attributions)
    # Tensors inside the model (embeddings, layer maps, activations) under '@' + their name.
    arrays.update({f"@{tensor}": value for tensor, value in attribution.tensors.items()
                   if tensor not in attribution.attributions})
    save_npz(target("attributions.npz"), arrays)
    pictures = write_heatmaps(attribution, signed, feeds or {}, style or HeatmapStyle(), target)
    write_token_views(attribution, feeds or {}, vocabulary, target)
    summary = attribution.summary()
    summary.update(token_strings(attribution, vocabulary))
    if inputs is not None:
        summary["preprocessing"] = inputs.preprocessing
    summary["rows"] = row_records(summary, _row_count(attribution, feeds), inputs, pictures)
    summary["files"] = [os.path.basename(p) for p in written] + [SUMMARY]
    save_json(target(SUMMARY), summary)
    stage.drop.update(stale_files(folder, previous, summary["files"], guard))
    return written


def write_heatmaps(attribution: Attribution, signed: bool, feeds: Mapping[str, np.ndarray],
                   style: HeatmapStyle, target: Callable[[str], Path]) -> dict[int, dict]:
    """heatmap_INPUT_ROW.png (the map) and overlay_INPUT_ROW.png (the map over the input),
    each with a colour bar, for the first MAX_HEATMAPS rows of image-shaped attributions.
    Returns per row, per input, the files and the colour scale."""
    colormap = style.colormap or default_colormap(signed)
    pictures: dict[int, dict] = {}
    for name, values in attribution.attributions.items():
        layout = image_layout(values.shape)
        if layout is None:
            continue
        image = feeds.get(name)
        if image is not None and (image_layout(image.shape) is None or len(image) != len(values)):
            image = None  # an overlay needs the input as a picture, row for row
        for row in range(min(values.shape[0], MAX_HEATMAPS)):
            flat = spatial_map(values[row], layout, signed)
            span = colour_range(flat, signed, style.clip_percentile, stretch=True)
            text = colour_bar_text(span, colormap)
            stem = f"{safe_name(name)}_{row}"
            entry = {"heatmap": f"heatmap_{stem}.png", "colormap": colormap,
                     "colour_range": span.as_dict()}
            bare = heatmap_image(flat, signed, colormap=colormap, span=span)
            save_png(with_colour_bar(bare, span, colormap), target(entry["heatmap"]), text)
            if image is not None:
                entry["overlay"] = f"overlay_{stem}.png"
                blended = overlay(image[row], flat, signed, colormap=colormap, span=span)
                save_png(with_colour_bar(blended, span, colormap), target(entry["overlay"]),
                         text)
            pictures.setdefault(row, {})[name] = entry
    return pictures


def row_records(summary: dict, rows: int, inputs: InputSet | None,
                pictures: Mapping[int, dict]) -> list[dict]:
    """Per row: the file (and row in it) each input came from, the explained target and its
    score, the prediction, and the row's heatmaps."""
    records = []
    for row in range(rows):
        record: dict = {"row": row}
        if inputs is not None:
            record["sources"] = {name: found[row] for name, found in inputs.sources.items()
                                 if row < len(found)}
        for key in ("target", "target_token", "target_score", "predicted_class",
                    "predicted_token", "predicted_score"):
            values = summary.get(key)
            if isinstance(values, list) and row < len(values):
                record[key] = values[row]
        if row in pictures:
            record["heatmaps"] = pictures[row]
        records.append(record)
    return records


def previous_files(folder: Path) -> list[str]:
    """The files an earlier onnxplain run listed in the folder's summary.json (plain names
    only: a name with a path in it is not one onnxplain wrote)."""
    try:
        summary = json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return []
    files = summary.get("files") if isinstance(summary, dict) else None
    if not isinstance(files, list) or "method" not in summary:
        return []
    return [name for name in files if isinstance(name, str)
            and name not in ("", ".", "..") and os.path.basename(name) == name]


def stale_files(folder: Path, previous: list[str], current: list[str], guard: set[str]
                ) -> set[str]:
    """What the previous run wrote and this one does not (never an input file)."""
    return {name for name in set(previous) - set(current)
            if os.path.realpath(folder / name) not in guard}


def _row_count(attribution: Attribution, feeds: Mapping[str, np.ndarray] | None) -> int:
    counts = [len(values) for values in (feeds or {}).values() if np.ndim(values)]
    counts += [len(values) for values in attribution.attributions.values() if np.ndim(values)]
    return max(counts, default=len(attribution.target))


def token_strings(attribution: Attribution, vocabulary: Vocabulary | None) -> dict:
    """For next-token logits and a vocabulary: the explained and the predicted next token of
    each row as strings ({"target_token": [...], "predicted_token": [...]}), else {}."""
    if vocabulary is None or attribution.objective != NEXT_TOKEN:
        return {}
    strings = {"target_token": vocabulary.tokens_for(attribution.target)}
    if attribution.predicted is not None:
        strings["predicted_token"] = vocabulary.tokens_for(attribution.predicted)
    return strings


def describe_result(attribution: Attribution, vocabulary: Vocabulary | None = None
                    ) -> list[str]:
    """What was explained (one sentence), then per row the explained score and, apart from
    it, the prediction (next tokens named by `vocabulary` when one is given)."""
    names = token_strings(attribution, vocabulary)
    lines = [f"explained: {attribution.explained}"]
    scores = attribution.target_score
    positions = attribution.extras.get("explained_positions")
    unit = "token" if positions is not None else "class"
    for row, used in enumerate(attribution.target.tolist()):
        text = f"row {row}: {unit} {_named(used, names.get('target_token'), row)}"
        if positions is not None:
            text += f" after position {positions[row]}"
        if scores is not None:
            text += f" (explained score {float(scores[row]):.4g})"
        if attribution.predicted is not None:
            predicted = _named(int(attribution.predicted[row]), names.get("predicted_token"),
                               row)
            text += f"; predicted {unit} {predicted}"
            if attribution.predicted_score is not None:
                text += f" (score {float(attribution.predicted_score[row]):.4g})"
        lines.append(text)
    if not attribution.target.size and scores is not None:
        lines += [f"row {row}: explained score {float(value):.4g}"
                  for row, value in enumerate(np.asarray(scores).reshape(-1))]
    return lines


def _named(token_id: int, strings: list[str] | None, row: int) -> str:
    """'moo' (id 42) with a vocabulary, else the bare id."""
    return str(token_id) if strings is None else f"{strings[row]!r} (id {token_id})"
