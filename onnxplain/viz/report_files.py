"""A report's files: one PNG per picture, report.json with every number, and index.html."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import atomic_write, save_json
from ..objective import class_scores
from .report import ReconstructionColumn, Report
from .report_html import report_html
from .report_pictures import MAX_ROWS, Picture, PictureKey, render_pictures
from .tokens import token_scores_json


def report_json(report: Report, pictures: Mapping[PictureKey, Picture]) -> dict:
    """Every number of the report as plain JSON (NaN and infinities become null)."""
    rows = []
    classes = class_scores(report.scores_out)
    for row in range(report.rows):
        out = report.scores_out[row]
        rows.append({"row": row,
                     "predicted_class": int(np.argmax(classes[row]))
                     if classes is not None and classes.shape[1] > 1 else None,
                     "output": jsonable(out),
                     "top_k": report.top_k[row],
                     "input_files": _files(pictures, row, "")})
    methods = {}
    for result in report.results:
        entry: dict = {"family": result.family, "status": result.status, "note": result.note}
        attribution = result.attribution
        if attribution is not None:
            summary = attribution.summary()
            entry.update({key: summary[key] for key in ("runtime_s", "signed", "target",
                                                        "predicted_class", "objective")})
            entry["summary"] = summary
            drawn = range(min(report.rows, MAX_ROWS))
            entry["files"] = [_files(pictures, row, result.method) for row in drawn]
            entry["colour_ranges"] = [colour_ranges(pictures, row, result.method)
                                      for row in drawn]
            entry["tokens"] = token_views(report, attribution)
        entry["scores"] = jsonable(result.scores)
        entry["score_note"] = result.score_note
        methods[result.method] = entry
    found = {"model": report.model, "output": report.output,
             "execution_providers": report.providers, "rows": report.rows,
             "rows_drawn": min(report.rows, MAX_ROWS),
             "inputs": {name: list(values.shape) for name, values in report.feeds.items()},
             "probabilities": report.probabilities, "predictions": rows, "methods": methods}
    if report.reconstructions:
        found["probe"] = [_probe_json(report, pictures, column)
                          for column in report.reconstructions]
    return found


def _probe_json(report: Report, pictures: Mapping[PictureKey, Picture],
                column: ReconstructionColumn) -> dict:
    """A probe layer's numbers per row (mean error, class on the reconstruction, token
    accuracy) and its pictures' files."""
    entry = {"heading": column.heading, "input": column.input,
             "mean_error": jsonable(column.mean_error),
             "predicted_class": jsonable(column.predicted_class),
             "token_accuracy": jsonable(column.token_accuracy), "notes": column.notes}
    entry["files"] = [_files(pictures, row, column.heading)
                      for row in range(min(report.rows, MAX_ROWS))]
    return entry


def token_views(report: Report, attribution) -> dict[str, list[list[dict]]]:
    """Per token input, per row: [{"index", "token", "score"}] of the unmasked tokens."""
    views = {}
    for name, tokens in report.tokens.items():
        scores = attribution.attributions.get(name)
        if scores is None or scores.shape != report.feeds[name].shape:
            continue
        mask = report.masks.get(name)
        views[name] = [token_scores_json(tokens[r], scores[r], None if mask is None else mask[r])
                       for r in range(len(tokens))]
    return views


def write_report(report: Report, folder: str | os.PathLike,
                 protected: Iterable[str | os.PathLike] = ()) -> list[str]:
    """index.html, report.json and the PNGs into `folder` (made if missing), each written
    atomically; refuses (InputError) to overwrite any `protected` file, e.g. the inputs."""
    folder = Path(folder)
    pictures = render_pictures(report)
    names = [p.file for p in pictures.values()] + ["index.html", "report.json"]
    check_folder(folder, protected, names)  # before writing anything: no half report
    folder.mkdir(parents=True, exist_ok=True)
    for picture in pictures.values():
        atomic_write(folder / picture.file, lambda stream, p=picture: stream.write(p.png))
    page = report_html(report, pictures).encode("utf-8")
    atomic_write(folder / "index.html", lambda stream: stream.write(page))
    save_json(folder / "report.json", report_json(report, pictures))
    return [str(folder / n) for n in names]


def check_folder(folder: str | os.PathLike, protected: Iterable[str | os.PathLike] = (),
                 names: Iterable[str] | None = None) -> None:
    """InputError when `folder` is a file or a report there would overwrite a `protected`
    file; without `names`, any file named like a report's (index.html, report.json, r*.png).
    Cheap: call it before the methods run, so that a bad --out fails at once."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder} exists and is not a folder")
    for path in protected:
        path = Path(os.path.realpath(path))
        if path.parent != Path(os.path.realpath(folder)):
            continue
        if path.name in names if names is not None else _report_file(path.name):
            raise InputError(f"refusing to overwrite {folder / path.name}: it is one of "
                             "your input files")


def _report_file(name: str) -> bool:
    return name in ("index.html", "report.json") or bool(re.fullmatch(r"r\d+_.*\.png", name))


def jsonable(value: object) -> object:
    """Numbers, arrays, lists and dicts as plain JSON values; other objects as text."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def colour_ranges(pictures: Mapping[PictureKey, Picture], row: int, method: str
                  ) -> dict[str, dict]:
    """Per input: the values at the ends of the colour scale of a method's heatmap of this
    row (ColourRange.as_dict: low, high and what each is)."""
    return {p.input: p.span.as_dict() for p in pictures.values()
            if p.row == row and p.method == method and p.span is not None}


def _files(pictures: Mapping[PictureKey, Picture], row: int, method: str) -> dict:
    found: dict[str, dict[str, str]] = {}
    for picture in pictures.values():
        if picture.row == row and picture.method == method:
            found.setdefault(picture.input, {})[picture.part] = picture.file
    return found


__all__ = ["check_folder", "colour_ranges", "report_json", "write_report"]
