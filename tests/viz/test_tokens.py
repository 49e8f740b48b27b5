"""Token HTML and JSON, checked by parsing the page back rather than by matching strings."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from onnxplain.errors import InputError
from onnxplain.viz.tokens import save_token_html, token_html, token_scores_json

RGBA = re.compile(r"background-color:\s*rgba\((\d+),\s*(\d+),\s*(\d+),\s*([0-9.]+)\)")


class Page(HTMLParser):
    """Token spans (attributes and text), every tag and attribute, and the tokens' text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.spans: list[dict] = []
        self.tags: list[tuple[str, dict]] = []
        self.token_text = ""  # text of the tokens <div>, spaces between spans included
        self._in_tokens = self._in_span = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "div" and attrs.get("class") == "tokens":
            self._in_tokens = True
        if tag == "span" and attrs.get("class") == "tok":
            self.spans.append({**attrs, "text": ""})
            self._in_span = True

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_span = False
        if tag == "div":
            self._in_tokens = False

    def handle_data(self, data):
        if self._in_span:
            self.spans[-1]["text"] += data
        if self._in_tokens:
            self.token_text += data


def colour(span: dict) -> tuple[int, int, int, float]:
    match = RGBA.search(span["style"])
    assert match, span["style"]
    r, g, b, a = match.groups()
    return int(r), int(g), int(b), float(a)


def test_one_span_per_token_in_order_with_exact_scores():
    rng = np.random.default_rng(0)
    tokens = ["[CLS]", "the", "cat", "sat", "[SEP]"]
    scores = rng.normal(size=5)
    page = Page(token_html(tokens, scores))
    assert [span["text"] for span in page.spans] == tokens
    for span, score in zip(page.spans, scores, strict=True):
        assert float(span["title"]) == pytest.approx(score, abs=1e-6, rel=1e-6)
        assert float(span["data-score"]) == pytest.approx(score, abs=1e-6, rel=1e-6)


def test_float32_scores_round_trip():
    scores = np.array([0.1, -1e-7, 3.4028235e38, 12345.678], dtype=np.float32)
    page = Page(token_html(list("abcd"), scores))
    assert [np.float32(span["title"]) for span in page.spans] == list(scores)


def test_sign_picks_the_colour_and_magnitude_the_alpha():
    scores = np.array([2.0, -4.0, 0.0, 1.0, -1.0])
    page = Page(token_html(list("abcde"), scores))
    r, g, b, a = zip(*(colour(span) for span in page.spans), strict=True)
    for k, score in enumerate(scores):
        if score > 0:
            assert r[k] > b[k], "positive scores are red"
        if score < 0:
            assert b[k] > r[k], "negative scores are blue"
    assert a[1] == 1.0  # the largest |score|, though negative
    assert a[2] == 0.0
    np.testing.assert_allclose(a, np.abs(scores) / 4.0, atol=1e-4)


def test_unsigned_uses_the_positive_colour_only():
    scores = np.array([2.0, -4.0, 1.0])
    signed = [colour(span) for span in Page(token_html(list("abc"), scores)).spans]
    unsigned = [colour(span) for span in Page(token_html(list("abc"), scores, signed=False)).spans]
    assert len({c[:3] for c in unsigned}) == 1
    assert unsigned[0][:3] == signed[0][:3]  # the red of a positive signed score
    np.testing.assert_allclose([c[3] for c in unsigned], [0.5, 1.0, 0.25], atol=1e-4)


def test_all_zero_row_stays_uncoloured():
    html = token_html(["a", "b"], np.zeros(2))
    assert [colour(span)[3] for span in Page(html).spans] == [0.0, 0.0]
    assert "nan" not in html.lower()


def test_tokens_and_title_are_escaped():
    tokens = ["<b>", "&", '"q"', "</span>", "<script>"]
    html = token_html(tokens, np.arange(5.0), title="<i>title</i> & more")
    page = Page(html)
    assert [span["text"] for span in page.spans] == tokens
    assert {tag for tag, _ in page.tags} <= {"html", "head", "meta", "title", "style", "body",
                                            "h1", "div", "span", "br"}
    assert "<b>" not in html and "<script" not in html


def test_masked_tokens_are_left_out_and_do_not_set_the_scale():
    tokens = ["[CLS]", "hi", "[SEP]", "[PAD]", "[PAD]"]
    scores = np.array([0.5, 1.0, -0.25, 100.0, -100.0])
    page = Page(token_html(tokens, scores, mask=np.array([1, 1, 1, 0, 0])))
    assert [span["text"] for span in page.spans] == tokens[:3]
    assert [colour(span)[3] for span in page.spans] == [0.5, 1.0, 0.25]


def test_wordpiece_continuations_join_but_keep_their_score():
    tokens = ["[CLS]", "un", "##play", "##able", "game", "##", "[SEP]"]
    scores = np.array([0.0, 1.0, -2.0, 3.0, 0.5, 0.1, 0.0])
    page = Page(token_html(tokens, scores))
    assert page.token_text == "[CLS] unplayable game ## [SEP]"
    assert [span["text"] for span in page.spans] == ["[CLS]", "un", "play", "able", "game",
                                                     "##", "[SEP]"]
    assert [float(span["title"]) for span in page.spans] == list(scores)


def test_continuation_after_padding_has_nothing_to_join():
    page = Page(token_html(["[PAD]", "##ing"], np.ones(2), mask=np.array([0, 1])))
    assert page.token_text == "##ing"


def test_page_is_self_contained():
    html = token_html(["a", "b"], np.array([1.0, -1.0]), title="t")
    page = Page(html)
    assert html.startswith("<!DOCTYPE html>")
    assert ("meta", {"charset": "utf-8"}) in page.tags
    assert "<script" not in html.lower() and "http" not in html.lower()
    for _, attrs in page.tags:
        assert not {"src", "href"} & set(attrs)


def test_legend_names_both_colours_and_the_scale():
    html = token_html(["a", "b"], np.array([0.5, -2.5]))
    legend = html[html.index('class="legend"'):]
    assert "positive" in legend and "negative" in legend and "2.5" in legend
    assert "negative" not in token_html(["a"], np.array([1.0]), signed=False)


def test_mismatched_lengths_raise_input_error():
    with pytest.raises(InputError, match="3 tokens"):
        token_html(["a", "b", "c"], np.ones(4))
    with pytest.raises(InputError, match="mask"):
        token_html(["a", "b"], np.ones(2), mask=np.ones(3))
    with pytest.raises(InputError, match="one row"):
        token_scores_json(["a", "b"], np.ones((1, 2)))


def test_json_matches_the_scores_of_unmasked_tokens():
    tokens = ["[CLS]", "a", "<b>", "[PAD]"]
    scores = np.array([0.25, -1.5, 1 / 3, 9.0], dtype=np.float32)
    rows = token_scores_json(tokens, scores, mask=np.array([1, 1, 1, 0]))
    assert [row["index"] for row in rows] == [0, 1, 2]
    assert [row["token"] for row in rows] == tokens[:3]
    assert [row["score"] for row in rows] == [float(s) for s in scores[:3]]
    assert all(type(row["score"]) is float and type(row["index"]) is int for row in rows)
    assert json.loads(json.dumps(rows, allow_nan=False)) == rows


def test_json_turns_non_finite_scores_into_null():
    rows = token_scores_json(["a", "b", "c"], np.array([np.nan, np.inf, 1.0]))
    assert [row["score"] for row in rows] == [None, None, 1.0]
    json.dumps(rows, allow_nan=False)


def test_save_writes_the_page_atomically(tmp_path):
    path = tmp_path / "tokens.html"
    save_token_html(path, ["é", "<b>"], np.array([1.0, -1.0]), title="t")
    assert path.read_bytes().decode("utf-8") == token_html(["é", "<b>"], np.array([1.0, -1.0]),
                                                          title="t")
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.html"]
