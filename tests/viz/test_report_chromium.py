"""The report as a browser sees it: headless Chromium (Debian's `chromium`) loads the page,
every picture decodes, nothing is logged as an error or fetched from the network, and the
opacity slider and the sign toggle work. Screenshots land in tests/artifacts/ (or
$ONNXPLAIN_ARTIFACTS) for a person or CI to look at.

Chromium is installed with apt-get when missing and we are root; where it cannot be had
the test skips, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxplain_cli.main import main

from ..conftest import ROOT
from .chromium import Browser

IMAGE_METHODS = "saliency,integrated_gradients,grad_cam,rollout"  # signed, unsigned, n/a
TEXT_METHODS = "saliency,input_x_gradient,rollout,grad_cam"  # unsigned, signed, n/a


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("ONNXPLAIN_ARTIFACTS") or ROOT / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def reports(zoo, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("reports")
    np.save(folder / "digits.npy", zoo.sample("digits_cnn")["image"][:3])
    np.savez(folder / "text.npz", **{k: v[:3] for k, v in zoo.sample("sentiment_bert").items()})
    text_model = zoo.model_path("sentiment_bert")
    runs = {
        "digits": [str(zoo.model_path("digits_cnn")), "-i", str(folder / "digits.npy"),
                   "--methods", IMAGE_METHODS],
        "text": [str(text_model), "-i", str(folder / "text.npz"), "--methods", TEXT_METHODS,
                 "--vocab", str(text_model.parent / "vocab.txt")],
    }
    for name, args in runs.items():
        result = CliRunner().invoke(main, ["report", *args, "-o", str(folder / name), "-q",
                                           "--no-scores"], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
    return {name: folder / name / "index.html" for name in runs}


def test_reports_render_in_headless_chromium(chromium, reports, artifacts):
    start = time.monotonic()
    with Browser(chromium) as browser:
        browser.open(reports["digits"].as_uri())
        images = browser.evaluate("Array.from(document.images).map(i => "
                                  "[i.complete, i.naturalWidth, i.alt])")
        # Per row: the input, then each overlay's base image plus its heatmap layers
        # (saliency 1, integrated gradients' three parts, grad_cam 1).
        assert len(images) == 3 * (1 + (1 + 1) + (1 + 3) + (1 + 1))
        assert all(complete and width > 0 for complete, width, _ in images), images
        assert browser.evaluate("document.querySelectorAll('td .note').length") == 3
        _slider_sets_heatmap_opacity(browser)
        _toggle_shows_one_sign(browser)
        shot = browser.screenshot(artifacts / "report_digits_cnn.png")
        assert browser.problems() == []

        browser.open(reports["text"].as_uri())
        assert browser.evaluate("document.images.length") == 0
        spans = browser.evaluate("document.querySelectorAll('td .tokens .tok').length")
        assert spans > 0
        assert "[CLS]" in browser.evaluate("document.body.innerText")
        _click(browser, 'input[name="part"][value="positive"]')
        # Negative tokens lose their colour when only the positive part is shown.
        muted = browser.evaluate(
            "Array.from(document.querySelectorAll('.tok.neg')).map(s => "
            "getComputedStyle(s).backgroundColor)")
        assert muted and set(muted) == {"rgba(0, 0, 0, 0)"}
        kept = browser.evaluate(
            "Array.from(document.querySelectorAll('.tok.pos')).map(s => "
            "getComputedStyle(s).backgroundColor)")
        assert kept and "rgba(0, 0, 0, 0)" not in kept
        text_shot = browser.screenshot(artifacts / "report_sentiment_bert.png")
        assert browser.problems() == []
    for path in (shot, text_shot):
        assert path.stat().st_size > 10_000
        print(f"screenshot: {path}")
    assert time.monotonic() - start < 30


RGB_METHODS = "saliency,integrated_gradients,grad_cam,rise"  # the README's example


@pytest.fixture(scope="module")
def rgb_report(zoo, tmp_path_factory) -> Path:
    """The README's report, with scores, on the 3-channel CNN: grad_cam and rise give maps
    shared over the channels ([N, 1, H, W])."""
    folder = tmp_path_factory.mktemp("rgb")
    np.save(folder / "x.npy", zoo.sample("rgb_cnn")["image"][:2])
    result = CliRunner().invoke(main, ["report", str(zoo.model_path("rgb_cnn")), "-i",
                                       str(folder / "x.npy"), "--methods", RGB_METHODS,
                                       "--provider", "cpu", "-o", str(folder / "out"), "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return folder / "out"


def test_rgb_report_draws_and_scores_every_method(chromium, rgb_report, artifacts):
    data = json.loads((rgb_report / "report.json").read_text())
    with Browser(chromium) as browser:
        browser.open((rgb_report / "index.html").as_uri())
        # Per row and method cell: its loaded heatmaps, its score rows and colour-bar ticks.
        cells = browser.evaluate(
            "Array.from(document.querySelectorAll('table.report > tbody > tr')).map(tr => "
            "Array.from(tr.children).slice(3).map(td => ({"
            "heats: Array.from(td.querySelectorAll('img.heat')).map(i => "
            "  [i.complete, i.naturalWidth]),"
            "scores: Array.from(td.querySelectorAll('table.scores tr')).map(r => r.innerText),"
            "ticks: Array.from(td.querySelectorAll('.cbar .ticks:not(.means) span')).map(s => "
            "  s.textContent)})))")
        assert len(cells) == 2 and all(len(row) == 4 for row in cells)
        methods = RGB_METHODS.split(",")
        for row, found in enumerate(cells):
            for method, cell in zip(methods, found, strict=True):
                assert cell["heats"] and all(ok and width > 0 for ok, width in cell["heats"]), \
                    (row, method, cell)
                text = " ".join(cell["scores"])
                assert "deletion AUC" in text and "lower is better" in text, (method, text)
                assert "insertion AUC" in text and "higher is better" in text, (method, text)
                scores = data["methods"][method]["scores"]
                for label in ("deletion AUC", "insertion AUC"):
                    value = scores[label]["per_row"][row]
                    assert value is not None and f"{value:.4g}" in text, (method, label)
                span = data["methods"][method]["colour_ranges"][row]["image"]
                assert float(cell["ticks"][0]) == pytest.approx(span["low"], rel=1e-2)
                assert float(cell["ticks"][-1]) == pytest.approx(span["high"], rel=1e-2)
        shot = browser.screenshot(artifacts / "report_rgb_cnn.png")
        _picture_enlarges_on_click(browser)
        assert browser.problems() == []
    assert shot.stat().st_size > 10_000


def _picture_enlarges_on_click(browser: Browser) -> None:
    """A click on grad_cam's overlay shows a larger copy with its colour bar; Escape closes."""
    selector = "table.report tbody tr td:nth-child(6) .stack"
    small = browser.evaluate(f"document.querySelector('{selector}').offsetWidth")
    _mouse_click(browser, selector)
    box = browser.evaluate(
        "(() => { const b = document.getElementById('lightbox'); return [b.hidden, "
        "b.querySelector('.stack').offsetWidth, b.querySelectorAll('img.heat').length, "
        "Array.from(b.querySelectorAll('img')).every(i => i.naturalWidth > 0), "
        "b.querySelectorAll('.cbar').length, b.innerText]; })()")
    hidden, large, heats, loaded, bars, caption = box
    assert not hidden and large > 2 * small and heats == 1 and loaded and bars == 1
    assert "grad_cam" in caption
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", session=True, type=kind, key="Escape",
                     code="Escape", windowsVirtualKeyCode=27, nativeVirtualKeyCode=27)
    assert browser.evaluate("document.getElementById('lightbox').hidden") is True


def _slider_sets_heatmap_opacity(browser: Browser) -> None:
    """Focus the slider and press ArrowLeft, as a keyboard user would: 0.60 -> 0.55."""
    browser.evaluate("document.getElementById('alpha').focus()")
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", session=True, type=kind, key="ArrowLeft",
                     code="ArrowLeft", windowsVirtualKeyCode=37, nativeVirtualKeyCode=37)
    assert browser.evaluate("document.getElementById('alpha').value") == "0.55"
    opacity = browser.evaluate("getComputedStyle(document.querySelector('img.heat')).opacity")
    assert float(opacity) == pytest.approx(0.55)
    assert browser.evaluate("document.getElementById('alpha-value').textContent") == "0.55"


def _toggle_shows_one_sign(browser: Browser) -> None:
    _click(browser, 'input[name="part"][value="negative"]')
    shown = browser.evaluate(
        "['both', 'positive', 'negative'].map(p => "
        "getComputedStyle(document.querySelector('img.heat.' + p)).display)")
    assert shown == ["none", "none", "block"]
    unsigned = browser.evaluate(
        "getComputedStyle(document.querySelector('img.heat.magnitude')).display")
    assert unsigned == "block"  # unsigned maps have no sign to hide


def _click(browser: Browser, selector: str) -> None:
    """A real mouse click on a checkbox or radio button, which must then be checked."""
    _mouse_click(browser, selector)
    assert browser.evaluate(f"document.querySelector('{selector}').checked") is True


def _mouse_click(browser: Browser, selector: str) -> None:
    """A real mouse click at the element's centre (after scrolling it into view)."""
    x, y = browser.evaluate(
        f"(() => {{ const e = document.querySelector('{selector}'); e.scrollIntoView(); "
        "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; "
        "})()")
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y,
                     button="left", clickCount=1)
