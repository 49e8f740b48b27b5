"""A dataset run's results at a glance, for image data: the mean attribution map of each label
(and of every row) as a PNG, and an HTML index page with each label's rows, most frequent
prediction, mean score and mean map, the run's summary and its error counts.

Layout under `out/overview/`:
  class_means/<label>.png   the mean map of the rows with that label (all_rows.png: every
                            row; no_label.png: rows without one), with its colour bar
  index.html                the page (pictures linked from class_means/)

A row's map is the one `--store map` keeps and its heatmaps show (store.row_map: an image
row summed over channels, as absolute values unless the method's maps are signed), whatever
the store: a map column is used as it is, a full one reduced, top-k entries scattered back
first (results.dense). The result shards are read one at a time and summed per label in
float64, so memory is one shard plus one running sum per label and input."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from .._text import counted
from ..errors import InputError
from ..files import safe_name, save_bytes
from ..viz.heatmap import (
    colour_bar_text,
    colour_range,
    default_colormap,
    heatmap_image,
    save_png,
    with_colour_bar,
)
from ..viz.report_html import number, page
from .results import (
    ERRORS,
    ERRORS_FILE,
    RESULTS,
    SIGNED_KEY,
    SUMMARY_FILE,
    dense,
    explained_shape,
    holds_run,
    open_shard,
    pyarrow_modules,
    shard_files,
)
from .store import ATTRIBUTION, TOPK_VALUE, row_map

OVERVIEW, CLASS_MEANS, INDEX = "overview", "class_means", "index.html"
ALL_ROWS, NO_LABEL = "all rows", "no label"
MAX_REASONS = 50  # error reasons listed on the page, most frequent first


@dataclass
class Group:
    """Running totals of a group of rows (one label, or every row): how many, their
    predicted classes, their scores, and per input the float64 sum of their maps (rows whose
    map is not finite are counted, not summed: one NaN would blank the mean)."""

    rows: int = 0
    predicted: Counter = field(default_factory=Counter)
    score_total: float = 0.0
    scored: int = 0
    map_totals: dict[str, np.ndarray] = field(default_factory=dict)
    mapped: Counter = field(default_factory=Counter)  # rows in each input's sum

    def add(self, predicted: int | None, score: float | None,
            maps: Mapping[str, np.ndarray]) -> None:
        self.rows += 1
        if predicted is not None:
            self.predicted[predicted] += 1
        if score is not None and np.isfinite(score):
            self.score_total += score
            self.scored += 1
        for name, values in maps.items():
            if not np.isfinite(values).all():
                continue
            if name in self.map_totals:
                self.map_totals[name] += values
            else:
                self.map_totals[name] = values.copy()
            self.mapped[name] += 1

    def mean_map(self, name: str) -> np.ndarray | None:
        """The mean of the summed maps of input `name`, None when no row has one."""
        total = self.map_totals.get(name)
        return None if total is None else total / self.mapped[name]

    def mean_score(self) -> float | None:
        return self.score_total / self.scored if self.scored else None

    def top_prediction(self) -> tuple[int, int] | None:
        """The most frequent predicted class and its count (ties: the lowest class)."""
        if not self.predicted:
            return None
        return min(self.predicted.items(), key=lambda item: (-item[1], item[0]))


@dataclass
class Overview:
    """A run's class means: `groups` by label in sorted order (None, rows without a label,
    last; left out when no row has a label: `overall` is those rows), `overall` every row;
    `inputs` the inputs with a map, `skipped` why the others named have none; `signed` how
    the maps were reduced and `signed_from` who said so."""

    groups: dict[str | None, Group]
    overall: Group
    inputs: list[str]
    skipped: dict[str, str]
    signed: bool
    signed_from: str


def read_overview(out: str | os.PathLike, inputs: Sequence[str] | None = None
                  ) -> Overview:
    """Sum the maps of `inputs` (None: every attributed input whose rows reduce to an [H, W]
    map) over the committed result shards under `out`, one shard at a time, per label.

    Maps are reduced as the run says its method's are (signed or not: the shards' metadata);
    for shards written before the run said so, as signed when the first shard holds a
    negative value (unsigned maps sum absolute values, so a map with no negative value gives
    the same mean either way)."""
    _, pq = pyarrow_modules()
    if not holds_run(Path(out)):
        raise InputError(f"{out} holds no explain-dataset results")
    shards = [path for _, path in shard_files(Path(out) / RESULTS)]
    schema = open_shard(pq, shards[0]).schema_arrow if shards else None
    names, skipped = _mapped_inputs(schema, inputs)
    recorded = None if schema is None else (schema.metadata or {}).get(SIGNED_KEY.encode())
    sums = _Sums(names, None if recorded is None else json.loads(recorded))
    for path in shards:
        # Read and summed inside one call: the shard's table is freed before the next.
        sums.add_shard(_read_shard(pq, path, names))
    labels = sorted(label for label in sums.groups if label is not None)
    groups = {label: sums.groups[label] for label in labels}
    if None in sums.groups and labels:
        groups[None] = sums.groups[None]
    return Overview(groups, sums.overall, names, skipped, bool(sums.signed),
                    "the run" if recorded is not None else "the values")


def class_means(out: str | os.PathLike, name: str) -> dict[str | None, np.ndarray]:
    """The mean map of input `name` per label (None: rows without a label), as drawn in
    overview/class_means/; read_overview says more."""
    overview = read_overview(out, [name])
    return {label: mean for label, group in overview.groups.items()
            if (mean := group.mean_map(name)) is not None}


def write_overview(out: str | os.PathLike, inputs: Sequence[str] | None = None
                   ) -> Path | None:
    """Write out/overview/: one PNG of each label's mean map per input (class_means/) and
    index.html; returns the page's path, or None when `inputs` is None and the results hold
    no image map (not image data, or no row explained)."""
    out = Path(out)
    overview = read_overview(out, inputs)
    if inputs is None and not overview.inputs:
        return None
    folder = out / OVERVIEW
    (folder / CLASS_MEANS).mkdir(parents=True, exist_ok=True)
    entries = _entries(overview)
    drawn = _draw(overview, entries, folder)
    page = _page(overview, entries, drawn, _summary(out), _error_counts(out))
    save_bytes(folder / INDEX, page.encode("utf-8"))
    return folder / INDEX


# -- reading


def _mapped_inputs(schema, inputs: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """From a result shard's schema: the inputs whose rows reduce to an [H, W] map, and why
    each other input named in `inputs` has none."""
    stored = set() if schema is None else {
        f.name.split("/", 1)[1] for f in schema
        if f.name.startswith(ATTRIBUTION) or f.name.startswith(TOPK_VALUE)}
    names, skipped = [], {}
    for name in inputs if inputs is not None else sorted(stored):
        shape = explained_shape(schema, name) if name in stored else None
        if shape is not None and row_map(np.zeros(shape, np.float32), True).ndim == 2:
            names.append(name)
        elif inputs is None:
            continue  # not an image: nothing to say about it
        elif schema is None:
            skipped[name] = "no row was explained"
        elif shape is None:
            skipped[name] = "the results hold no attribution of it"
        else:
            skipped[name] = f"its attribution is no image map (row shape {list(shape)})"
    return names, skipped


def _read_shard(pq, path: Path, names: Sequence[str]):
    """The columns of one result shard that the overview needs."""
    parquet = open_shard(pq, path)
    # label and the rest, and the attribution/, topk_index/, topk_value/ columns of `names`
    wanted = {"label", "predicted", "score"}
    columns = [column for column in parquet.schema_arrow.names if column in wanted
               or ("/" in column and column.split("/", 1)[1] in names)]
    return parquet.read(columns=columns)


class _Sums:
    """The groups being summed, shard after shard."""

    def __init__(self, names: Sequence[str], signed: bool | None):
        self.names = list(names)
        self.signed = signed
        self.groups: dict[str | None, Group] = {}
        self.overall = Group()

    def add_shard(self, table) -> None:
        arrays = {name: dense(table, name) for name in self.names}
        if self.signed is None and len(table):
            self.signed = any(bool((values < 0).any()) for values in arrays.values())
        labels = table.column("label").to_pylist()
        predicted = table.column("predicted").to_pylist()
        scores = table.column("score").to_pylist()
        for row, label in enumerate(labels):
            maps = {name: row_map(values[row].astype(np.float64), bool(self.signed))
                    for name, values in arrays.items()}
            for group in (self.groups.setdefault(label, Group()), self.overall):
                group.add(predicted[row], scores[row], maps)


def _summary(out: Path) -> dict:
    try:
        found = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _error_counts(out: Path) -> Counter:
    """Rows per error reason: errors.parquet, or the error shards of a run not closed; read
    one record batch at a time."""
    _, pq = pyarrow_modules()
    files = ([out / ERRORS_FILE] if (out / ERRORS_FILE).exists()
             else [path for _, path in shard_files(out / ERRORS)])
    counts: Counter = Counter()
    for path in files:
        for batch in open_shard(pq, path).iter_batches(columns=["reason"]):
            counts.update(batch.column(0).to_pylist())
    return counts


# -- drawing


@dataclass(frozen=True)
class _Entry:
    """One line of the page: every row (label None, `every`), or one label's rows."""

    label: str | None
    group: Group
    every: bool = False

    def text(self) -> str:
        return ALL_ROWS if self.every else NO_LABEL if self.label is None else self.label


def _entries(overview: Overview) -> list[_Entry]:
    return [_Entry(None, overview.overall, every=True),
            *(_Entry(label, group) for label, group in overview.groups.items())]


def _draw(overview: Overview, entries: list[_Entry], folder: Path) -> list[dict[str, str]]:
    """Each entry's mean map of each input as a PNG with its colour bar (as `explain` draws
    heatmaps), its group and scale in the PNG's text; per entry {input: file}."""
    colormap = default_colormap(overview.signed)
    names = _file_names([entry.text() for entry in entries], overview.inputs)
    drawn: list[dict[str, str]] = []
    for index, entry in enumerate(entries):
        drawn.append({})
        for name in overview.inputs:
            mean = entry.group.mean_map(name)
            if mean is None:
                continue
            span = colour_range(mean, overview.signed, stretch=True)
            picture = heatmap_image(mean, overview.signed, colormap=colormap, span=span)
            file = f"{CLASS_MEANS}/{names[index][name]}"
            text = {**colour_bar_text(span, colormap), "input": name,
                    "group": "label" if entry.label is not None else entry.text(),
                    "label": entry.label or "", "rows": str(entry.group.mapped[name])}
            save_png(with_colour_bar(picture, span, colormap), folder / file, text)
            drawn[index][name] = file
    _remove_other_pngs(folder / CLASS_MEANS, {Path(file).name for row in drawn
                                              for file in row.values()})
    return drawn


def _remove_other_pngs(folder: Path, keep: set[str]) -> None:
    """Pictures an earlier overview of this run drew under names not drawn now (a resumed
    run's new label may shift a '-2' suffix): the folder is the overview's own."""
    for path in folder.glob("*.png"):
        if path.name not in keep:
            path.unlink()


def _file_names(texts: list[str], inputs: list[str]) -> list[dict[str, str]]:
    """A distinct PNG name per entry and input: the entry's text made safe (with the input's
    name when there are several), then -2, -3... when taken; names compare without case
    (some file systems ignore it)."""
    taken: set[str] = set()
    names = []
    for text in texts:
        names.append({})
        for name in inputs:
            stem = safe_name(text.replace(" ", "_")) or "_"
            if len(inputs) > 1:
                stem += "_" + safe_name(name)
            stem = "_" + stem[1:] if stem.startswith(".") else stem  # no hidden files
            unique, number = stem, 1
            while unique.lower() in taken:
                number += 1
                unique = f"{stem}-{number}"
            taken.add(unique.lower())
            names[-1][name] = unique + ".png"
    return names


def _page(overview: Overview, entries: list[_Entry], drawn: list[dict[str, str]],
          summary: Mapping, errors: Counter) -> str:
    model = Path(str(summary.get("model") or "model")).name
    title = f"onnxplain explain-dataset: {model}"
    return page(title, f"{_notes(overview)}\n{_groups_table(overview, entries, drawn)}\n"
                       f"<h2>Summary</h2>\n{_summary_table(summary)}\n<h2>Errors</h2>\n"
                       f"{_errors_table(errors)}")


def _notes(overview: Overview) -> str:
    kind = ("signed (channels summed with their sign; red raises the explained class, blue "
            "lowers it)" if overview.signed else "unsigned (absolute values summed over "
            "channels, dark to bright)")
    said = ("as the run recorded" if overview.signed_from == "the run"
            else "read from the values: the run did not record it")
    notes = [f"Mean attribution map of each label's rows: {kind}; {said}. The bar beside "
             "each map gives its values (larger ones saturate)."]
    notes += [f"No map of {escape(name)}: {escape(why)}." for name, why in
              overview.skipped.items()]
    left_out = {name: overview.overall.rows - overview.overall.mapped[name]
                for name in overview.inputs}
    notes += [f"{counted(count, 'row')} left out of the means of {escape(name)}: their maps "
              "are not finite." for name, count in left_out.items() if count]
    return "\n".join(f'<p class="meta">{note}</p>' for note in notes)


def _groups_table(overview: Overview, entries: list[_Entry], drawn: list[dict[str, str]]
                  ) -> str:
    head = "".join(f"<th>mean map of {escape(name)}</th>" for name in overview.inputs)
    rows = "\n".join(_group_row(entry, pictures, overview.inputs)
                     for entry, pictures in zip(entries, drawn, strict=True))
    return (f'<table class="report">\n<thead><tr><th>label</th><th>rows</th><th>most frequent '
            f"prediction</th><th>mean predicted score</th>{head}</tr></thead>\n<tbody>\n{rows}\n"
            "</tbody>\n</table>")


def _group_row(entry: _Entry, pictures: Mapping[str, str], inputs: list[str]) -> str:
    group = entry.group
    caption = (f"<b>{escape(entry.label)}</b>" if entry.label is not None
               else f"<i>{entry.text()}</i>")
    top = group.top_prediction()
    prediction = (f'class {top[0]} <span class="meta">({top[1]} of {group.rows})</span>'
                  if top else '<span class="meta">none</span>')
    score = group.mean_score()
    cells = [f'<img alt="mean map of {escape(name)}, {escape(entry.text())}" '
             f'src="{escape(pictures[name])}">' if name in pictures
             else '<span class="note">no finite map</span>' for name in inputs]
    return (f'<tr class="group"><td>{caption}</td><td>{group.rows}</td><td>{prediction}</td>'
            f"<td>{'-' if score is None else number(score)}</td>"
            + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")


def _summary_table(summary: Mapping) -> str:
    if not summary:
        return f'<p class="note">no {SUMMARY_FILE}: the run did not finish</p>'
    rows = "".join(f"<tr><th>{escape(str(key))}</th><td>{_value(value)}</td></tr>"
                   for key, value in summary.items())
    return f'<table class="summary">{rows}</table>'


def _value(value: object) -> str:
    if isinstance(value, Mapping):
        return "<br>".join(f"{escape(str(k))}: {_value(v)}" for k, v in value.items()) or "-"
    return number(value)


def _errors_table(errors: Counter) -> str:
    if not errors:
        return '<p class="meta">no errors: every row was explained</p>'
    ranked = sorted(errors.items(), key=lambda item: (-item[1], item[0]))
    rows = "".join(f"<tr><td>{count}</td><td>{escape(reason)}</td></tr>"
                   for reason, count in ranked[:MAX_REASONS])
    more = len(ranked) - MAX_REASONS
    tail = (f'<p class="note">{counted(more, "more reason")} not listed '
            f"(every error is in {ERRORS_FILE})</p>" if more > 0 else "")
    return (f'<p class="meta">{counted(sum(errors.values()), "row")} not explained</p>'
            f'<table class="errors"><thead><tr><th>rows</th><th>reason</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>{tail}")


__all__ = ["Group", "Overview", "class_means", "read_overview", "write_overview"]
