"""Token attributions as one self-contained HTML page (inline CSS, no scripts) or plain JSON."""

from __future__ import annotations

import math
import os
from html import escape

import numpy as np

from ..errors import InputError
from ..files import atomic_write

# The end colours of the image heatmaps' diverging map: red raises the target, blue lowers it.
POSITIVE_RGB = (178, 24, 43)
NEGATIVE_RGB = (33, 102, 172)
# Above this alpha the background is dark enough that black text becomes hard to read.
_LIGHT_TEXT_FROM = 0.6

_STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; color: #111; }
.tokens { line-height: 2.2; font-size: 1.1em; }
.tok { padding: 0.15em 0.1em; border-radius: 0.2em; white-space: pre; }
.legend { margin-top: 1.5em; font-size: 0.9em; color: #444; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle; }
.next { font-weight: bold; border: 2px solid #111; border-radius: 0.2em; padding: 0 0.2em; }
table.steps td { padding: 0.3em 0.6em; vertical-align: top; }
.prompt { color: #555; }"""


def token_html(tokens: list[str], scores: np.ndarray, *, mask: np.ndarray | None = None,
               title: str | None = None, signed: bool = True,
               next_token: str | None = None) -> str:
    """One row's tokens as coloured inline spans in a standalone UTF-8 HTML document.

    Background alpha = |score| / max |score| over the shown tokens (an all-zero row stays
    uncoloured); positive scores are red, negative blue, or all red when `signed` is False.
    Each span carries the exact score in `title` (shown on hover) and `data-score`. Tokens
    where `mask` is 0 (padding) are left out; a WordPiece continuation ('##ing') is drawn
    joined to the token before it, without its '##', and keeps its own score.
    `next_token` (a language model's explained prediction) is drawn boxed after the tokens.
    """
    spans, scale = token_spans(tokens, scores, mask=mask, signed=signed)
    if next_token is not None:
        spans += f" &rarr; {_next(next_token)}"
    body = f"<div class=\"tokens\">{spans}</div>\n{token_legend(scale, signed)}"
    return _page(title, body)


def generation_html(prompt: list[str], steps: list[tuple[str, np.ndarray]], *,
                    title: str | None = None, signed: bool = True) -> str:
    """A generation as one page: the prompt and its continuation (generated tokens boxed),
    then one line per generated token: its context (prompt + tokens generated before it)
    coloured by that step's scores, each line on its own scale, and the token it predicted.
    `steps`: (generated token, one score per context token) in order."""
    generated = [token for token, _ in steps]
    whole = " ".join([*(escape(t) for t in prompt), *(_next(t) for t in generated)])
    rows = []
    for index, (token, scores) in enumerate(steps):
        context = [*prompt, *generated[:index]]
        spans, scale = token_spans(context, scores, signed=signed)
        rows.append(f"<tr><td>{index + 1}</td><td class=\"tokens\">{spans} &rarr; "
                    f"{_next(token)}</td><td>{scale:.4g}</td></tr>")
    table = ("<table class=\"steps\"><tr><th>step</th><th>context &rarr; generated token"
             "</th><th>scale</th></tr>\n" + "\n".join(rows) + "\n</table>")
    body = (f"<div class=\"tokens prompt\">{whole}</div>\n{table}\n"
            f"{token_legend(1.0, signed, per_line=True)}")
    return _page(title, body)


def _page(title: str | None, body: str) -> str:
    heading = f"<h1>{escape(title)}</h1>\n" if title else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title or 'Token attributions')}</title>\n"
        f"<style>\n{_STYLE}\n</style>\n</head>\n<body>\n{heading}{body}\n"
        "</body>\n</html>\n"
    )


def _next(token: str) -> str:
    return f'<span class="tok next">{escape(token)}</span>'


def token_spans(tokens: list[str], scores: np.ndarray, *, mask: np.ndarray | None = None,
                signed: bool = True) -> tuple[str, float]:
    """The coloured spans of token_html (an HTML fragment, for embedding in other pages) and
    the scale (largest finite |score| shown) their colour strength was divided by."""
    values, shown = _row(tokens, scores, mask)
    alphas, scale = _alphas(values[shown])
    spans: list[str] = []
    for index, alpha in zip(np.flatnonzero(shown), alphas, strict=True):
        text, joined = tokens[index], False
        if spans and len(text) > 2 and text.startswith("##"):
            text, joined = text[2:], True
        colour = POSITIVE_RGB if values[index] >= 0 or not signed else NEGATIVE_RGB
        spans.append(("" if joined or not spans else " ") + _span(text, values[index], colour,
                                                                  alpha))
    return "".join(spans), scale


def token_scores_json(tokens: list[str], scores: np.ndarray, mask: np.ndarray | None = None
                      ) -> list[dict]:
    """[{"index": i, "token": str, "score": float}] for the unmasked tokens, in order.

    Scores are plain Python floats; NaN and infinities become None so that strict JSON
    writers (files.save_json) accept the result.
    """
    values, shown = _row(tokens, scores, mask)
    rows = []
    for index in np.flatnonzero(shown):
        score = float(values[index])
        rows.append({"index": int(index), "token": str(tokens[index]),
                     "score": score if math.isfinite(score) else None})
    return rows


def save_token_html(path: str | os.PathLike, tokens: list[str], scores: np.ndarray, *,
                    mask: np.ndarray | None = None, title: str | None = None,
                    signed: bool = True, next_token: str | None = None) -> None:
    """Write token_html(...) to `path` atomically."""
    save_html(path, token_html(tokens, scores, mask=mask, title=title, signed=signed,
                               next_token=next_token))


def save_html(path: str | os.PathLike, page: str) -> None:
    """Write an HTML page (token_html, generation_html) to `path` atomically."""
    atomic_write(path, lambda stream: stream.write(page.encode("utf-8")))


def _row(tokens: list[str], scores: np.ndarray, mask: np.ndarray | None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Scores as a float row and the boolean row of tokens to show, checked against tokens."""
    values = np.asarray(scores)
    if values.dtype.kind not in "f":
        values = values.astype(np.float64)  # keep float32 as is: its str() is shortest
    if values.shape != (len(tokens),):
        raise InputError(f"scores of shape {values.shape} do not match {len(tokens)} tokens; "
                         "pass one row")
    if mask is None:
        return values, np.ones(len(tokens), dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != values.shape:
        raise InputError(f"mask of shape {mask.shape} does not match {len(tokens)} tokens")
    return values, mask != 0


def _alphas(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Alpha per token in [0, 1], and the scale (max finite |score|) it was divided by."""
    magnitude = np.abs(values.astype(np.float64))
    finite = np.isfinite(magnitude)
    scale = float(magnitude[finite].max()) if finite.any() else 0.0
    alphas = magnitude / scale if scale > 0 else np.zeros_like(magnitude)
    # NaN says nothing, so no colour; an infinite score is at least the largest.
    alphas = np.where(np.isnan(magnitude), 0.0, np.where(finite, alphas, 1.0))
    return np.clip(alphas, 0.0, 1.0), scale


def _span(text: str, value: np.floating, colour: tuple[int, int, int], alpha: float) -> str:
    # str() of a numpy scalar is the shortest text that round-trips in its own precision.
    exact = escape(str(value))
    r, g, b = colour
    style = f"background-color: rgba({r}, {g}, {b}, {alpha:.4f})"
    if alpha >= _LIGHT_TEXT_FROM:
        style += "; color: #fff"
    return (f'<span class="tok" title="{exact}" data-score="{exact}" style="{style}">'
            f"{escape(text)}</span>")


def token_legend(scale: float, signed: bool, per_line: bool = False) -> str:
    """The colour key of token_spans: what red and blue mean, and the scale (`per_line`:
    every line has its own, shown beside it)."""
    def swatch(colour: tuple[int, int, int]) -> str:
        return f'<span class="swatch" style="background-color: rgb{colour}"></span>'

    if signed:
        colours = (f"{swatch(POSITIVE_RGB)} positive (raises the target) "
                   f"{swatch(NEGATIVE_RGB)} negative (lowers it)")
    else:
        colours = f"{swatch(POSITIVE_RGB)} attribution"
    if per_line:
        strength = ("colour strength = |score| / the largest |score| of its line (the scale "
                    "column); hover a token for its exact score")
    elif scale > 0:
        strength = (f"colour strength = |score| / {scale:.4g}, the largest |score| shown; "
                    "hover a token for its exact score")
    else:
        strength = "every score shown is zero, so nothing is coloured"
    return f'<div class="legend">{colours}<br>{strength}</div>'
