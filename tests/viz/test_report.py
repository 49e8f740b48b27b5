"""`onnxplain report` and its library: a self-contained page, files that match the
attributions, notes for methods that do not apply, and one-line errors for bad input."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.viz import attention_matrix, build_report, default_methods, overlay, write_report
from onnxplain.viz.report import NOT_APPLICABLE, top_classes

from ..cli_helpers import digests, run
from ..tiny_models import mlp

DIGITS_METHODS = ["saliency", "integrated_gradients", "grad_cam", "rollout"]


class Page(HTMLParser):
    """Every tag with its attributes, and the page's text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text = ""
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data




@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal((3, 6))
            .astype(np.float32))
    return tmp_path


@pytest.fixture(scope="module")
def digits(zoo, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("digits")
    np.save(folder / "x.npy", zoo.sample("digits_cnn")["image"][:3])
    return zoo.model_path("digits_cnn"), folder / "x.npy"


@pytest.fixture(scope="module")
def digits_report(digits, tmp_path_factory) -> Path:
    model, x = digits
    out = tmp_path_factory.mktemp("digits_report") / "report"
    result = run("report", str(model), "-i", str(x), "--methods", ",".join(DIGITS_METHODS),
                 "--out", str(out), "--no-scores", "-q")
    assert result.exit_code == 0, result.stderr
    return out


def test_page_is_self_contained_and_shows_every_method(digits_report):
    html = (digits_report / "index.html").read_text(encoding="utf-8")
    page = Page(html)
    assert "http://" not in html and "https://" not in html
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert images and all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert not [a for tag, a in page.tags if tag in ("link", "script", "iframe")
                and (a.get("src") or a.get("href"))]
    summary = json.loads((digits_report / "report.json").read_text())
    headings = page.text.split("row", 1)[1]
    for method in DIGITS_METHODS:
        assert method in headings
        entry = summary["methods"][method]
        if entry["status"] == "ok":
            assert f"runtime {entry['runtime_s']:.3f} s" in page.text
    # A CNN has no attention: one note per row in rollout's cells, the rest still drawn.
    assert summary["methods"]["rollout"]["status"] == NOT_APPLICABLE
    assert page.text.count("does not apply: no attention layer found") == 3
    assert len([a for tag, a in page.tags if tag == "tr"]) == 1 + 3


def test_files_and_json_match_the_attributions(digits, tmp_path):
    model, x = digits
    explainer = Explainer(model, providers="cpu", progress=False)
    report = build_report(explainer, np.load(x), ["saliency", "integrated_gradients"],
                          target=[1, 2, 3], top_k=3, labels=[f"digit {i}" for i in range(10)])
    written = write_report(report, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    html = (tmp_path / "out" / "index.html").read_text()
    assert all(Path(p).exists() for p in written)
    for result in report.results:
        entry, attribution = data["methods"][result.method], result.attribution
        assert entry["runtime_s"] == round(attribution.runtime_s, 6) > 0
        assert entry["predicted_class"] == attribution.predicted.tolist()
        assert entry["target"] == [1, 2, 3] == attribution.target.tolist()
        assert entry["signed"] == attribution.signed
        parts = {"both", "positive", "negative"} if attribution.signed else {"magnitude"}
        for row, files in enumerate(entry["files"]):
            assert set(files["image"]) == parts
            for name in files["image"].values():
                png = (tmp_path / "out" / name).read_bytes()
                assert base64.b64encode(png).decode() in html  # the same bytes, embedded
                assert Image.open(tmp_path / "out" / name).size == (224, 224)
            assert data["predictions"][row]["input_files"]["image"]["input"] == \
                f"r{row}_input_image.png"
    logits = explainer.forward(np.load(x))["logits"]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for row, prediction in enumerate(data["predictions"]):
        top = prediction["top_k"]
        assert prediction["predicted_class"] == top[0]["class"] == int(logits[row].argmax())
        assert [t["label"] for t in top] == [f"digit {t['class']}" for t in top]
        assert top[0]["probability"] == pytest.approx(probabilities[row].max(), rel=1e-5)
    assert data["probabilities"] == "softmax"
    assert data["execution_providers"] == report.results[0].attribution.providers


def test_text_report_uses_the_vocabulary_and_notes_grad_cam(zoo, tmp_path):
    model = zoo.model_path("sentiment_bert")
    vocab = model.parent / "vocab.txt"
    np.savez(tmp_path / "text.npz", **{k: v[:2] for k, v in zoo.sample("sentiment_bert")
                                       .items()})
    result = run("report", str(model), "-i", str(tmp_path / "text.npz"), "--vocab", str(vocab),
                 "--methods", "saliency,rollout,grad_cam", "-o", str(tmp_path / "out"),
                 "--no-scores", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == json.loads((tmp_path / "out" / "report.json").read_text())
    tokens = data["methods"]["rollout"]["tokens"]["input_ids"][0]
    assert tokens[0]["token"] == "[CLS]" and tokens[-1]["token"] == "[SEP]"
    assert data["methods"]["grad_cam"]["status"] == NOT_APPLICABLE
    page = Page((tmp_path / "out" / "index.html").read_text())
    spans = [a for tag, a in page.tags if tag == "span" and a.get("class") == "tok"]
    scores = [float(a["data-score"]) for a in spans]
    assert any(s != 0 for s in scores) and "[CLS]" in page.text
    assert "does not apply: no spatial conv layer" in page.text


def test_scores_are_shown_as_returned(digits, tmp_path):
    model, x = digits
    explainer = Explainer(model, providers="cpu", progress=False)
    calls = []

    def score(explainer_, feeds, attribution):
        calls.append(attribution.method)
        if attribution.method == "grad_cam":
            raise ValueError("metric exploded")
        return {"per row": [0.125, 0.25, 0.5], "whole batch": 7.0}

    report = build_report(explainer, np.load(x), ["saliency", "grad_cam"], score=score)
    write_report(report, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert calls == ["saliency", "grad_cam"]
    assert data["methods"]["saliency"]["scores"] == {"per row": [0.125, 0.25, 0.5],
                                                     "whole batch": 7.0}
    assert data["methods"]["grad_cam"]["scores"] is None
    assert "metric exploded" in data["methods"]["grad_cam"]["score_note"]
    assert data["methods"]["grad_cam"]["status"] == "ok"  # the attribution is kept
    text = Page((tmp_path / "index.html").read_text()).text
    for value in ("0.125", "0.25", "0.5", "7 (batch)", "scores failed: ValueError"):
        assert value in text


def test_report_scores_are_onnxplains_metrics_on_the_same_attributions(workdir):
    from onnxplain import Explainer, metrics

    base = ["report", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"), "-q",
            "--methods", "saliency"]
    assert run(*base, "-o", str(workdir / "a")).exit_code == 0
    scores = json.loads((workdir / "a" / "report.json").read_text())["methods"]["saliency"]
    explainer = Explainer(str(workdir / "mlp.onnx"), "cpu", progress=False)
    x = np.load(workdir / "x.npy")
    expected = metrics.evaluate(explainer, x, explainer.explain(x, method="saliency"),
                                metrics=("deletion", "insertion"))["metrics"]
    for entry in expected.values():
        shown = scores["scores"][entry["label"]]
        np.testing.assert_allclose(shown["per_row"], entry["per_row"])
        np.testing.assert_allclose(shown["random_per_row"], entry["random_per_row"])
        assert shown["better"] == entry["better"]
    assert scores["scores"]["deletion AUC"]["better"] == "lower"
    assert scores["scores"]["insertion AUC"]["better"] == "higher"
    page = Page((workdir / "a" / "index.html").read_text()).text
    assert page.count("lower is better") == page.count("higher is better") == 3  # per row
    assert run(*base, "-o", str(workdir / "b"), "--no-scores").exit_code == 0
    assert json.loads((workdir / "b" / "report.json").read_text()
                      )["methods"]["saliency"]["scores"] is None


def test_quiet_prints_nothing_and_progress_goes_to_stderr(workdir):
    base = ["report", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"), "--no-scores"]
    quiet = run(*base, "-o", str(workdir / "q"), "-q")
    assert quiet.exit_code == 0 and quiet.stdout == ""
    # -q keeps warnings (here: integrated gradients' completeness on a random MLP) only.
    assert all(line.startswith("warning: ") for line in quiet.stderr.splitlines())
    loud = run(*base, "-o", str(workdir / "l"))
    assert "saliency:" in loud.stderr and "index.html" in loud.stdout
    # A tabular model: default methods, feature cells and no pictures.
    data = json.loads((workdir / "l" / "report.json").read_text())
    assert list(data["methods"]) == ["saliency", "integrated_gradients"]
    assert "x0=" in (workdir / "l" / "index.html").read_text()


def _one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert fragment in lines[0], lines[0]


BAD = {
    "unknown method": (["--methods", "saliency,nope"], "unknown method 'nope'"),
    "empty methods": (["--methods", " , "], "--methods is empty"),
    "option without method": (["-O", "n_steps=4"], "is not METHOD.KEY=VALUE"),
    "option of another method": (["--methods", "saliency", "-O", "rise.n_masks=4"],
                                 "not among the methods"),
    "unknown option": (["--methods", "saliency", "-O", "saliency.nope=1"], "no option 'nope'"),
    "target out of range": (["--target", "9"], "target class 9 is out of range"),
    "targets per row": (["--target", "1,2"], "2 targets for 3 rows"),
    "missing labels": (["--labels", "{w}/none.txt"], "cannot read labels file"),
    "empty labels": (["--labels", "{w}/empty.txt"], "is empty"),
    "missing vocab": (["--vocab", "{w}/none.txt"], "none.txt"),
    "missing input": (["-i", "{w}/none.npy"], "input file not found"),
    "top-k zero": (["--top-k", "0"], "top-k"),
    "out is a file": (["-o", "{w}/x.npy"], "exists and is not a folder"),
    "overwrite labels": (["-o", "{w}", "--labels", "{w}/report.json"], "refusing to overwrite"),
    "seed and target": (["--output-seed", "{w}/seed.npy", "-t", "1"], "not both"),
    "seed shape": (["--output-seed", "{w}/short_seed.npy"], "output_seed has shape (3, 3); "
                   "output"),
    "missing seed": (["--output-seed", "{w}/none.npy"], "input file not found"),
    "bad mean": (["--mean", "a,b"], "--mean 'a,b' is not a comma-separated list"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(workdir, case):
    (workdir / "empty.txt").write_text("\n")
    (workdir / "report.json").write_text("0\n1\n2\n3\n")  # a labels file named like output
    np.save(workdir / "seed.npy", np.ones((3, 4), np.float32))
    np.save(workdir / "short_seed.npy", np.ones((3, 3), np.float32))
    extra, fragment = BAD[case]
    before = digests(workdir, recursive=True)
    args = ["report", str(workdir / "mlp.onnx"), "-i", str(workdir / "x.npy"),
            "-o", str(workdir / "out"), "--no-scores", *[a.format(w=workdir) for a in extra]]
    _one_line_error(run(*args), fragment)
    assert digests(workdir, recursive=True) == before
    assert not (workdir / "out").exists()


def test_default_methods_follow_the_model(zoo):
    cnn = Explainer(zoo.model_path("digits_cnn"), providers="cpu")
    text = Explainer(zoo.model_path("sentiment_bert"), providers="cpu")
    assert default_methods(cnn) == ["saliency", "integrated_gradients", "grad_cam"]
    assert default_methods(text) == ["saliency", "input_x_gradient", "rollout",
                                     "transformer_attribution"]


def test_top_classes_softmax_logits_and_keep_probabilities():
    logits = np.array([[2.0, -1.0, 0.5]])
    rows, kind = top_classes(logits, 2, ["a", "b"])
    assert kind == "softmax" and [r["class"] for r in rows[0]] == [0, 2]
    assert [r["label"] for r in rows[0]] == ["a", None]  # labels file shorter than classes
    assert rows[0][0]["probability"] == pytest.approx(np.exp(2) / np.exp(logits).sum())
    rows, kind = top_classes(np.array([[0.1, 0.7, 0.2]]), 5)
    assert kind == "model" and rows[0][0] == {"class": 1, "label": None, "score": 0.7,
                                              "probability": 0.7}


def test_overlay_blends_heatmap_over_image():
    image = np.zeros((1, 8, 8), dtype=np.float32)
    image[0, 2:6, 2:6] = 1.0
    scores = np.zeros((8, 8))
    scores[0, 0], scores[7, 7] = 1.0, -1.0
    plain = overlay(image, scores, signed=True, alpha=0.0)
    assert plain.size == (224, 224) and plain.mode == "RGB"
    assert np.asarray(plain)[100, 100].tolist() == [255, 255, 255]  # alpha 0: the image
    full = np.asarray(overlay(image, scores, signed=True, alpha=1.0))
    red, blue = full[5, 5], full[220, 220]
    assert red[0] > red[2] and blue[2] > blue[0]
    positive = np.asarray(overlay(image, scores, signed=True, alpha=1.0, part="positive"))
    assert positive[220, 220].tolist() == positive[100, 100].tolist()  # negative hidden
    with pytest.raises(InputError):
        overlay(image, scores, alpha=2.0)


def test_attention_matrix_has_labelled_axes():
    matrix = np.eye(5)[::-1] * 0.9 + 0.02
    tokens = ["[CLS]", "the", "movie", "was", "good"]
    picture = attention_matrix(matrix, tokens)
    pixels = np.asarray(picture)
    assert picture.mode == "RGB" and picture.width > 5 * 32 and picture.height > 5 * 32
    cell = 32
    left, top = picture.width - 4 - 5 * cell, picture.height - 4 - 5 * cell
    assert (pixels[top:, :left] < 128).any()  # query labels at the left
    assert (pixels[:top, left:] < 128).any()  # key labels above
    assert attention_matrix(matrix).size != picture.size  # index labels are narrower
    with pytest.raises(InputError):
        attention_matrix(np.zeros((2, 3, 3)))
