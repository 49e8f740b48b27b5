"""The report as one self-contained HTML page: pictures as data URIs, inline CSS and script,
nothing fetched from anywhere. One table row per input row, one column per method."""

from __future__ import annotations

import base64
import numbers
from collections.abc import Mapping
from html import escape

import numpy as np

from .._text import counted
from .heatmap import ColourRange, colorize, format_value
from .report import FAILED, OK, MethodResult, ReconstructionColumn, Report, input_kind
from .report_pictures import MAX_ROWS, Picture, PictureKey
from .tokens import token_legend, token_spans

MAX_FEATURES = 256  # longer feature vectors get their statistics, not coloured cells
PARTS = ("both", "positive", "negative")
# A picture that enlarges on click (or Enter): focusable, labelled for screen readers.
_STACK = 'class="stack" tabindex="0" role="button" title="click to enlarge"'

CSS = """:root { --alpha: 0.6; }
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #111; }
h1 { font-size: 1.4em; margin: 0 0 0.3em; }
.meta, .note, .legend, .runtime { color: #555; font-size: 0.85em; }
.controls { position: sticky; top: 0; background: #fff; padding: 0.5em 0; z-index: 2;
  border-bottom: 1px solid #ddd; margin-bottom: 1em; }
.controls label { margin-right: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: 0.4em; vertical-align: top; text-align: left; }
th { background: #f5f5f5; }
.stack { position: relative; display: inline-block; line-height: 0; }
.stack img { display: block; width: 160px; height: auto; image-rendering: pixelated; }
.stack img.heat { position: absolute; left: 0; top: 0; opacity: var(--alpha); }
.heat.positive, .heat.negative { display: none; }
body[data-part="positive"] .heat.both, body[data-part="negative"] .heat.both { display: none; }
body[data-part="positive"] .heat.positive, body[data-part="negative"] .heat.negative {
  display: block; }
body[data-part="positive"] .tok.neg, body[data-part="negative"] .tok.pos {
  background-color: transparent !important; color: inherit !important; }
.tokens { line-height: 2; max-width: 28em; }
.tok { padding: 0.1em 0.1em; border-radius: 0.2em; white-space: pre; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; }
.note { max-width: 20em; font-style: italic; }
.scores td { border: none; padding: 0 0.6em 0 0; font-size: 0.85em; }
ol.topk { margin: 0; padding-left: 1.4em; font-size: 0.9em; }
.bar { display: inline-block; height: 0.6em; background: #b2182b; vertical-align: middle; }
.stack { cursor: zoom-in; }
.cbar { width: 160px; font-size: 0.75em; color: #555; margin-top: 0.2em; }
.cbar .strip { height: 0.6em; border: 1px solid #bbb; }
.cbar .ticks { display: flex; justify-content: space-between; line-height: 1.3; }
.cbar .means { color: #888; font-size: 0.9em; }
.scores td + td { white-space: nowrap; }
.better { color: #555; font-style: italic; font-size: 0.9em; white-space: nowrap; }
#lightbox { position: fixed; inset: 0; z-index: 10; background: rgba(0, 0, 0, 0.85);
  display: flex; flex-direction: column; align-items: center; justify-content: center;
  cursor: zoom-out; }
#lightbox[hidden] { display: none; }
#lightbox .stack { cursor: zoom-out; }
#lightbox .stack img { width: min(85vw, 80vh); }
#lightbox .cbar { width: min(85vw, 80vh); color: #eee; font-size: 1em; }
#lightbox .caption { color: #eee; margin-top: 0.5em; }"""

# The slider sets the heatmaps' opacity; the radio buttons pick which part of signed maps
# is shown (CSS does the rest). Tokens of signed maps get pos/neg classes so that the same
# toggle applies to them; unsigned maps, images or tokens, have no sign to hide.
_SCRIPT = """(function () {
  var root = document.documentElement, body = document.body;
  var slider = document.getElementById('alpha'), shown = document.getElementById('alpha-value');
  function setAlpha() { root.style.setProperty('--alpha', slider.value);
    shown.textContent = Number(slider.value).toFixed(2); }
  slider.addEventListener('input', setAlpha);
  document.querySelectorAll('.tokens.signed .tok[data-score]').forEach(function (span) {
    var score = parseFloat(span.getAttribute('data-score'));
    if (score > 0) span.classList.add('pos'); else if (score < 0) span.classList.add('neg');
  });
  document.querySelectorAll('input[name="part"]').forEach(function (radio) {
    radio.addEventListener('change', function () { body.setAttribute('data-part', radio.value); });
  });
  // Click (or Enter on) a picture: a copy, with its colour bar, fills the window; a click
  // anywhere or Escape closes it. Opacity and sign toggles apply to the copy as well.
  var box = document.getElementById('lightbox');
  function enlarge(stack) {
    var view = stack.closest('.view') || stack, caption = document.createElement('div');
    caption.className = 'caption';
    caption.textContent = stack.querySelector('img:last-child').alt;
    box.replaceChildren(view.cloneNode(true), caption);
    box.hidden = false;
  }
  document.querySelectorAll('.report .stack').forEach(function (stack) {
    stack.addEventListener('click', function () { enlarge(stack); });
    stack.addEventListener('keydown', function (e) { if (e.key === 'Enter') enlarge(stack); });
  });
  box.addEventListener('click', function () { box.hidden = true; });
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') box.hidden = true; });
  setAlpha();
})();"""


def report_html(report: Report, pictures: Mapping[PictureKey, Picture]) -> str:
    """The whole page, UTF-8 text; `pictures` are those written beside it as PNG files."""
    drawn = min(report.rows, MAX_ROWS)
    head = "".join(f"<th>{_method_heading(result)}</th>" for result in report.results)
    head += "".join(f'<th>{escape(column.heading)}<br><span class="meta">decoder probe: the '
                    "input rebuilt from this layer, its squared error"
                    + "".join(f"; {escape(note)}" for note in column.notes) + "</span></th>"
                    for column in report.reconstructions)
    rows = "\n".join(_row(report, pictures, row) for row in range(drawn))
    left = report.rows - drawn
    more = (f'<p class="note">{counted(left, "more row")} {"is" if left == 1 else "are"} in '
            "report.json only.</p>" if left > 0 else "")
    title = f"onnxplain report: {report.model or 'model'}"
    return page(title,
                f"{_meta(report)}\n{_controls()}\n"
                f"<table class=\"report\">\n<thead><tr><th>row</th><th>input</th><th>prediction"
                f"</th>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>\n{more}\n"
                f'<div id="lightbox" hidden></div>\n<script>\n{_SCRIPT}\n</script>',
                body_attributes=' data-part="both"')


def page(title: str, body: str, body_attributes: str = "") -> str:
    """A whole page in the report's frame and style: `body` (HTML) under the title."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n"
            f"<body{body_attributes}>\n<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def _meta(report: Report) -> str:
    provider = report.providers[0] if report.providers else "?"
    kinds = {"softmax": "softmax of the output (read as logits)",
             "model": "the output itself (rows already sum to 1)"}
    probability = kinds.get(report.probabilities or "", "none (output is not a distribution)")
    return (f'<p class="meta">output <b>{escape(report.output)}</b>, '
            f"{counted(report.rows, 'row')}, run on {escape(provider)}; probabilities: "
            f"{probability}. Red raises the explained class, blue lowers it; unsigned maps "
            "show magnitude (dark to bright); the bar under each map gives its values "
            "(larger ones saturate). Click a picture to enlarge it.</p>")


def _controls() -> str:
    radios = "".join(
        f'<label><input type="radio" name="part" value="{part}"'
        f'{" checked" if part == "both" else ""}> {label}</label>'
        for part, label in zip(PARTS, ("both signs", "positive only", "negative only"),
                               strict=True))
    return ('<div class="controls"><label>heatmap opacity <input type="range" id="alpha" '
            'min="0" max="1" step="0.05" value="0.6"> <span id="alpha-value">0.60</span>'
            f"</label> signed maps: {radios}</div>")


def _method_heading(result: MethodResult) -> str:
    text = f"{escape(result.method)}<br><span class=\"meta\">{escape(result.family)}"
    if result.attribution is not None:
        sign = "signed" if result.attribution.signed else "unsigned"
        text += (f", {sign}<br>runtime {result.attribution.runtime_s:.3f} s for the batch"
                 f"</span>")
    else:
        text += ", not run</span>" if result.status != OK else "</span>"
    return text


def _row(report: Report, pictures: Mapping[PictureKey, Picture], row: int) -> str:
    cells = "".join(f"<td>{_method_cell(report, pictures, result, row)}</td>"
                    for result in report.results)
    cells += "".join(f"<td>{_reconstruction_cell(pictures, column, row)}</td>"
                     for column in report.reconstructions)
    return (f"<tr><td>{row}</td><td>{_input_cell(report, pictures, row)}</td>"
            f"<td>{_prediction(report, row)}</td>{cells}</tr>")


def _input_cell(report: Report, pictures: Mapping[PictureKey, Picture], row: int) -> str:
    parts = []
    for name, values in report.feeds.items():
        picture = pictures.get((row, "", name, "input"))
        if picture is not None:
            parts.append(f'<div {_STACK}><img alt="{escape(name)}, row {row}" '
                         f'src="{_data_uri(picture.png)}"></div>')
        elif name in report.tokens and _is_attributed(report, name):
            mask = report.masks.get(name)
            spans, _ = token_spans(report.tokens[name][row], np.zeros(values.shape[1]),
                                   mask=None if mask is None else mask[row])
            parts.append(f'<div class="tokens">{spans}</div>')
        else:
            continue
        parts[-1] = f'<div class="meta">{escape(name)}</div>' + parts[-1]
    return "".join(parts) or '<span class="note">no picture of these inputs</span>'


def _prediction(report: Report, row: int) -> str:
    top = report.top_k[row]
    if not top:
        values = np.asarray(report.scores_out[row]).reshape(-1)[:8]
        return f'<span class="meta">output {escape(np.array2string(values, precision=4))}</span>'
    items = []
    for entry in top:
        name = f"{entry['class']}" + (f" {escape(entry['label'])}" if entry["label"] else "")
        p = entry["probability"]
        bar = (f' <span class="bar" style="width: {4 * p:.2f}em"></span> {p:.3g}'
               if p is not None else "")
        items.append(f"<li><b>{name}</b>{bar} <span class=\"meta\">"
                     f"(score {number(entry['score'])})</span></li>")
    targets = {int(r.attribution.target[row]) for r in report.results
               if r.attribution is not None and row < len(r.attribution.target)}
    explained = (f'<div class="meta">explained class {", ".join(map(str, sorted(targets)))}'
                 "</div>" if targets else "")
    if any(r.attribution is not None and r.attribution.objective == "output_seed"
           for r in report.results):
        explained = '<div class="meta">explained: the output seed (sum of seed * output)</div>'
    return f'<ol class="topk">{"".join(items)}</ol>{explained}'


def _method_cell(report: Report, pictures: Mapping[PictureKey, Picture],
                 result: MethodResult, row: int) -> str:
    if result.attribution is None:
        label = "does not apply" if result.status != FAILED else "failed"
        return f'<div class="note">{label}: {escape(result.note or "")}</div>'
    views = []
    for name in result.attribution.attributions:
        view = (_image_view(pictures, row, result.method, name)
                or _token_view(report, result, name, row)
                or _vector_view(report, result, name, row))
        if view:
            views.append(view)
    body = "".join(views) or '<div class="note">no picture for this attribution\'s shape</div>'
    runtime = f'<div class="runtime">{result.attribution.runtime_s:.3f} s (batch)</div>'
    return body + runtime + _scores(result, row, report.rows)


def _reconstruction_cell(pictures: Mapping[PictureKey, Picture], column: ReconstructionColumn,
                         row: int) -> str:
    """A probe layer's reconstruction of the row and its error map, then its numbers."""
    views = []
    for part in ("reconstruction", "error"):
        picture = pictures.get((row, column.heading, column.input, part))
        if picture is not None:
            views.append(f'<div class="view"><div {_STACK}><img alt="{escape(column.heading)} '
                         f'{part}, row {row}" src="{_data_uri(picture.png)}"></div>'
                         f"{colour_bar(picture.span, False)}</div>")
    facts = [f"mean error {number(column.mean_error[row])}"]
    if column.predicted_class is not None:
        facts.append(f"class {int(column.predicted_class[row])} on it")
    if column.token_accuracy is not None and np.isfinite(column.token_accuracy[row]):
        facts.append(f"{100 * float(column.token_accuracy[row]):.0f}% of its real tokens "
                     "named")
    return "".join(views) + f'<div class="meta">{escape(", ".join(facts))}</div>'


def _image_view(pictures: Mapping[PictureKey, Picture], row: int, method: str, name: str
                ) -> str:
    base = pictures.get((row, "", name, "input"))
    heats = [(part, pictures[row, method, name, part]) for part in (*PARTS, "magnitude")
             if (row, method, name, part) in pictures]
    if base is None or not heats:
        return ""
    layers = "".join(f'<img class="heat {part}" alt="{escape(method)} {part}, row {row}" '
                     f'src="{_data_uri(p.png)}">' for part, p in heats)
    signed = heats[0][0] != "magnitude"
    return (f'<div class="view"><div {_STACK}><img class="base" alt="{escape(name)}, row '
            f'{row}" src="{_data_uri(base.png)}">{layers}</div>'
            f"{colour_bar(heats[0][1].span, signed)}</div>")


def colour_bar(span: ColourRange | None, signed: bool) -> str:
    """The map's colour scale as a strip with its values: low (left) to high (right), each
    end with what it is (e.g. p99: values beyond it saturate), and 0 marked where the scale
    crosses it. The colours come from heatmap.colorize: they are the pictures' own."""
    if span is None:
        return ""
    colours = colorize(np.linspace(span.low, span.high, 9), signed, span=span)
    stops = ", ".join(f"rgb({r}, {g}, {b}) {100 * k / (len(colours) - 1):.1f}%"
                      for k, (r, g, b) in enumerate(colours.tolist()))
    ticks = [(span.low, span.low_means), (span.high, span.high_means)]
    if span.low < 0 < span.high:
        ticks.insert(1, (0.0, ""))
    labels = "".join(f'<span title="{escape(means)}">{format_value(value)}</span>'
                     for value, means in ticks)
    title = (f"colour scale from {format_value(span.low)} ({span.low_means}) to "
             f"{format_value(span.high)} ({span.high_means}); values beyond saturate")
    return (f'<div class="cbar" title="{escape(title)}"><div class="strip" style="background: '
            f'linear-gradient(to right, {stops})"></div><div class="ticks">{labels}</div>'
            f'<div class="ticks means"><span>{escape(span.low_means)}</span>'
            f"<span>{escape(span.high_means)}</span></div></div>")


def _token_view(report: Report, result: MethodResult, name: str, row: int) -> str:
    scores = result.attribution.attributions[name]
    if name not in report.tokens or scores.shape != report.feeds[name].shape:
        return ""
    mask = report.masks.get(name)
    spans, scale = token_spans(report.tokens[name][row], scores[row],
                               mask=None if mask is None else mask[row],
                               signed=result.attribution.signed)
    return _tokens_div(spans, scale, result.attribution.signed)


def _vector_view(report: Report, result: MethodResult, name: str, row: int) -> str:
    values = report.feeds.get(name)
    scores = result.attribution.attributions[name]
    if (values is None or input_kind(values) != "vector" or scores.shape != values.shape
            or values.shape[1] > MAX_FEATURES):
        return ""
    labels = [f"x{j}={v:.3g}" for j, v in enumerate(values[row].tolist())]
    spans, scale = token_spans(labels, scores[row], signed=result.attribution.signed)
    return _tokens_div(spans, scale, result.attribution.signed)


def _tokens_div(spans: str, scale: float, signed: bool) -> str:
    kind = "tokens signed" if signed else "tokens"
    return f'<div class="{kind}">{spans}</div>{token_legend(scale, signed)}'


def _scores(result: MethodResult, row: int, rows: int) -> str:
    """The scorer's numbers as it returned them: a list with one entry per row gives this
    row's entry; anything else is shown whole, marked as being about the batch. A metric
    given as {"per_row", "random_per_row", "better"} (cli's flatten_scores) shows its
    random baseline and which direction is better beside it."""
    if result.score_note:
        return f'<div class="note">{escape(result.score_note)}</div>'
    if not result.scores:
        return ""
    lines = []
    for key, value in result.scores.items():
        label, extra = escape(str(key)), ""
        if isinstance(value, Mapping) and "per_row" in value:
            if value.get("better"):
                label += f'<div class="better">{escape(str(value["better"]))} is better</div>'
            random = value.get("random_per_row")
            if random is not None:
                extra = f'<td class="meta">random {_this_row(random, row, rows)}</td>'
            value = value["per_row"]
        lines.append(f"<tr><td>{label}</td><td>{_this_row(value, row, rows)}</td>{extra}</tr>")
    return f'<table class="scores">{"".join(lines)}</table>'


def _this_row(value: object, row: int, rows: int) -> str:
    if isinstance(value, list | tuple | np.ndarray) and len(value) == rows:
        return number(value[row])
    return f"{number(value)} <span class=\"meta\">(batch)</span>"


def number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return escape(str(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}"
    if isinstance(value, list | tuple | np.ndarray):
        items = list(value)
        shown = ", ".join(number(v) for v in items[:8])
        return f"[{shown}{', ...' if len(items) > 8 else ''}]"
    return escape(str(value))


def _is_attributed(report: Report, name: str) -> bool:
    return any(r.attribution is not None and name in r.attribution.attributions
               for r in report.results) or all(r.attribution is None for r in report.results)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
