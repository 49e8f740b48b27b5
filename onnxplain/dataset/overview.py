"""A dataset run's results at a glance, for image data: the mean attribution map of each label
(and of every row) as a PNG, and an HTML index page with each label's rows, most frequent
prediction, mean score and mean map, the run's summary and its error counts.

Layout under `out/overview/`:
  class_means/<label>.png   the mean map of the rows with that label (all_rows.png: every
                            row; no_label.png: rows without one), with its colour bar
  index.html                the page (pictures linked from class_means/)

A row's map is the one `--store map` keeps and its heatmaps show (viz.heatmap.row_maps: an
image row summed over channels, as absolute values unless the method's maps are signed),
whatever the store: a map column is used as it is, a full one reduced, top-k entries
scattered back first (results.dense). The result shards are read one at a time and summed per
label in float64, so memory is one shard plus one running sum per label and input; above
MAX_GROUPS labels only the sum of every row is kept."""

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
from ..images import image_layout
from ..viz.heatmap import (
    colour_bar_text,
    colour_range,
    default_colormap,
    heatmap_image,
    row_maps,
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
from .store import ATTRIBUTION, TOPK_VALUE, map_shape

OVERVIEW, CLASS_MEANS, INDEX = "overview", "class_means", "index.html"
ALL_ROWS, NO_LABEL = "all rows", "no label"
MAX_REASONS = 50  # error reasons listed on the page, most frequent first
# Labels given a mean map of their own: each holds a float64 map per input, so a label column
# with one value per row would hold one per row. Above it, only every row's mean is kept.
MAX_GROUPS = 200
# Attribution bytes reduced to maps at once: a few image rows, so that the temporaries stay
# small and reused; tiny rows (8 x 8 digits) go thousands at a time.
MAP_BLOCK = 4 << 20


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
    last; left out when no row has a label: `overall` is those rows; none at all when
    `too_many_labels`, more than max_groups), `overall` every row; `inputs` the inputs with
    a map, `skipped` why the others named have none; `signed` how the maps were reduced and
    `signed_from` who said so."""

    groups: dict[str | None, Group]
    overall: Group
    inputs: list[str]
    skipped: dict[str, str]
    signed: bool
    signed_from: str
    too_many_labels: bool = False


def read_overview(out: str | os.PathLike, inputs: Sequence[str] | None = None,
                  max_groups: int | None = None) -> Overview:
    """Sum the maps of `inputs` (None: every attributed input whose rows are images, reduced
    to an [H, W] map) over the committed result shards under `out`, one shard at a time,
    per label; with more than `max_groups` labels (default MAX_GROUPS) over every row only.

    Maps are reduced as the run says its method's are (signed or not: the shards' metadata);
    for shards written before the run said so, as signed when the first shard holds a
    negative value (unsigned maps sum absolute values, so a map with no negative value gives
    the same mean either way)."""
    _, pq = pyarrow_modules()
    if not holds_run(Path(out)):
        raise InputError(f"{out} holds no explain-dataset results")
    shards = [path for _, path in shard_files(Path(out) / RESULTS)]
    schema = open_shard(pq, shards[0]).schema_arrow if shards else None
    shapes, skipped = _mapped_inputs(schema, inputs, str(shards[0]) if shards else "")
    recorded = None if schema is None else (schema.metadata or {}).get(SIGNED_KEY.encode())
    labels = _labels(pq, shards, MAX_GROUPS if max_groups is None else max_groups)
    sums = _Sums(shapes, labels, None if recorded is None else json.loads(recorded))
    for path in shards:
        # Read and summed inside one call: the shard's table is freed before the next.
        sums.add_shard(_read_shard(pq, path, list(shapes)), str(path))
    overall, *labelled = sums.groups()
    groups = dict(zip(labels or [], labelled, strict=True))
    if groups.keys() == {None}:
        groups = {}  # no row has a label: `overall` is those rows
    return Overview(groups, overall, list(shapes), skipped, bool(sums.signed),
                    "the run" if recorded is not None else "the values", labels is None)


def class_means(out: str | os.PathLike, name: str, max_groups: int | None = None
                ) -> dict[str | None, np.ndarray]:
    """The mean map of input `name` per label (None: rows without a label), as drawn in
    overview/class_means/; read_overview says more. More than `max_groups` labels (default
    MAX_GROUPS) is a one-line error."""
    overview = read_overview(out, [name], max_groups)
    if overview.too_many_labels:
        limit = MAX_GROUPS if max_groups is None else max_groups
        raise InputError(f"{out} has more than {limit} labels: pass a larger max_groups to "
                         "have each label's mean")
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


def _mapped_inputs(schema, inputs: Sequence[str] | None, where: str
                   ) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """From the schema of the result shard `where`: the inputs whose rows are images (an
    [H, W] map each) with their row shapes as explained, and why each other input named in
    `inputs` has none. An [H, W] row is no image: a map as explained is [C, H, W] or
    [H, W, C], and [seq, hidden] embeddings are 2-D too."""
    stored = set() if schema is None else {
        f.name.split("/", 1)[1] for f in schema
        if f.name.startswith(ATTRIBUTION) or f.name.startswith(TOPK_VALUE)}
    shapes, skipped = {}, {}
    for name in inputs if inputs is not None else sorted(stored):
        shape = explained_shape(schema, name, where) if name in stored else None
        if shape is not None and image_layout((1, *shape)) is not None:
            shapes[name] = shape
        elif inputs is None:
            continue  # not an image: nothing to say about it
        elif schema is None:
            skipped[name] = "no row was explained"
        elif shape is None:
            skipped[name] = "the results hold no attribution of it"
        else:
            skipped[name] = f"its attribution is no image map (row shape {list(shape)})"
    return shapes, skipped


def _labels(pq, shards: Sequence[Path], max_groups: int) -> list[str | None] | None:
    """The labels of the rows in `shards`, sorted, None (no label) last; None when there are
    more than `max_groups`. Only the label column is read."""
    seen: set[str | None] = set()
    for path in shards:
        seen.update(open_shard(pq, path).read(columns=["label"]).column("label").unique()
                    .to_pylist())
        if len(seen) > max_groups:
            return None
    return sorted(label for label in seen if label is not None) + [None] * (None in seen)


def _read_shard(pq, path: Path, names: Sequence[str]):
    """The columns of one result shard that the overview needs."""
    parquet = open_shard(pq, path)
    # label and the rest, and the attribution/, topk_index/, topk_value/ columns of `names`
    wanted = {"label", "predicted", "score"}
    columns = [column for column in parquet.schema_arrow.names if column in wanted
               or ("/" in column and column.split("/", 1)[1] in names)]
    return parquet.read(columns=columns)


class _Sums:
    """The running totals, shard after shard, as arrays over groups: group 0 every row,
    group 1 + i the rows labelled labels[i]."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], labels: list[str | None] | None,
                 signed: bool | None):
        import pyarrow

        self.signed = signed
        self._labels = None if not labels else pyarrow.array(labels, pyarrow.string())
        count = 1 + len(labels or [])
        self._rows = np.zeros(count, np.int64)
        self._scored = np.zeros(count, np.int64)
        self._score_total = np.zeros(count)
        self._predicted = [Counter() for _ in range(count)]
        self._totals = {name: np.zeros((count, *map_shape(shape)))
                        for name, shape in shapes.items()}
        self._mapped = {name: np.zeros(count, np.int64) for name in shapes}

    def add_shard(self, table, where: str) -> None:
        if not len(table):
            return
        groups = self._group_of_rows(table)
        count = len(self._rows)
        scores = _numbers(table.column("score"), np.float64)
        scored = np.isfinite(scores)
        predicted = _numbers(table.column("predicted"), np.int64)
        known = predicted >= 0
        for group in groups.T:
            self._rows += np.bincount(group, minlength=count)
            np.add.at(self._score_total, group[scored], scores[scored])  # in row order
            self._scored += np.bincount(group[scored], minlength=count)
            pairs, times = np.unique(np.stack([group[known], predicted[known]]), axis=1,
                                     return_counts=True)
            for (index, cls), seen in zip(pairs.T.tolist(), times.tolist(), strict=True):
                self._predicted[index][cls] += seen
        arrays = {name: dense(table, name, where) for name in self._totals}
        if self.signed is None:
            self.signed = any(bool((values < 0).any()) for values in arrays.values())
        for name, values in arrays.items():
            self._add_maps(name, values, groups)

    def _add_maps(self, name: str, values: np.ndarray, groups: np.ndarray) -> None:
        """Reduce the rows `values` to float64 maps a block of MAP_BLOCK bytes at a time, and
        add each finite one to its groups' totals in row order: the float64 sums of a loop
        over rows, exactly. Rows whose map is not finite are counted, not summed (one NaN
        would blank the mean). Not np.add.at, nor a whole shard at once: at 224 x 224 each
        was several times slower than these in-place adds (np.add.at 6 times, measured), and
        a shard's float64 maps would double the memory a shard takes."""
        totals, mapped = self._totals[name], self._mapped[name]
        step = max(1, MAP_BLOCK // max(1, values[0].nbytes))
        for start in range(0, len(values), step):
            maps = row_maps(values[start:start + step], bool(self.signed), np.float64)
            finite = np.isfinite(maps.reshape(len(maps), -1)).all(axis=1)
            block = groups[start:start + step]
            for row in np.flatnonzero(finite).tolist():
                for index in block[row].tolist():
                    totals[index] += maps[row]
            for group in block[finite].T:
                mapped += np.bincount(group, minlength=len(mapped))

    def _group_of_rows(self, table) -> np.ndarray:
        """[rows, 1 or 2]: each row's groups, 0 (every row) and its label's where labels
        are kept."""
        import pyarrow.compute

        groups = [np.zeros(len(table), np.intp)]
        if self._labels is not None:
            found = pyarrow.compute.index_in(table.column("label"), value_set=self._labels)
            groups.append(1 + found.to_numpy().astype(np.intp))
        return np.stack(groups, axis=1)

    def groups(self) -> list[Group]:
        """The totals as one Group each, in group order (every row first)."""
        return [Group(int(self._rows[index]), self._predicted[index],
                      float(self._score_total[index]), int(self._scored[index]),
                      {name: totals[index] for name, totals in self._totals.items()
                       if self._mapped[name][index]},
                      Counter({name: int(mapped[index]) for name, mapped in self._mapped.items()
                               if mapped[index]}))
                for index in range(len(self._rows))]


def _numbers(column, dtype) -> np.ndarray:
    """A nullable numeric column as numpy: nulls as NaN (floats) or -1 (classes)."""
    return column.fill_null(np.nan if dtype == np.float64 else -1).to_numpy().astype(dtype)


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
    if overview.too_many_labels:
        notes.append(f"More than {MAX_GROUPS} labels: only the mean map of every row is drawn, "
                     "not one per label.")
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
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # counts, whole: number()'s 4 digits would print 12345 as 1.234e+04
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
