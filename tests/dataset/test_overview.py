"""The overview of a dataset run (overview/ under --out): each label's mean map equals numpy's
mean of the rows' reduced maps, computed here from the rows as written; the PNGs decode at
the heatmap's size and draw those means; the page loads in headless Chromium with every
label; the results are read one shard at a time, never whole."""

from __future__ import annotations

import json
import weakref

import numpy as np
import pytest
from PIL import Image

from onnxplain import Explainer
from onnxplain.dataset import explain_dataset
from onnxplain.dataset import overview as overview_module
from onnxplain.dataset import results as results_module
from onnxplain.dataset.overview import class_means, read_overview, write_overview
from onnxplain.dataset.results import ResultWriter
from onnxplain.dataset.rows import RowError, RowResult
from onnxplain.dataset.store import FULL, MAP, Store
from onnxplain.images import default_preprocessing, load_images
from onnxplain.viz.heatmap import colour_range, heatmap_image

from ..conftest import require
from ..viz.chromium import Browser
from .conftest import digits_folder, one_line_error

META = {"method": "saliency", "options": "{}", "model": "abc123"}
SHAPE = (3, 5, 7)  # [C, H, W]: a heatmap 7 wide, 5 high
# Unsafe and colliding names, a label sorting before the rest, rows without a label.
LABELS = ["dog", "a/b", "cat", "a_b", None, "dog", "cat", "A_B", None, "dog", "cat"]
ERRORS = [RowError(f"bad-{k}", f"bad/{k}.png", "unreadable image" if k % 3 else "NaN values")
          for k in range(5)]


@pytest.fixture(autouse=True)
def _pyarrow():
    require("pyarrow")


@pytest.fixture(scope="module")
def pq():
    require("pyarrow")
    import pyarrow.parquet

    return pyarrow.parquet


def make_rows(labels, signed: bool, shape=SHAPE, seed: int = 0, nan_row: int | None = None):
    rng = np.random.default_rng(seed)
    rows = []
    for index, label in enumerate(labels):
        values = rng.standard_normal(shape).astype(np.float32)
        if index == nan_row:
            values[0, 0, 0] = np.nan
        row = RowResult(f"row-{index}", f"data/{index}.png", label, index % 4, index % 3,
                        float(index) / 10, {"image": values})
        row.signed = signed
        rows.append(row)
    return rows


def write_run(out, rows, store=FULL, shard_rows: int = 4, errors=(), summary=None):
    writer = ResultWriter(out, META, resume=False, shard_rows=shard_rows, store=store)
    writer.add(rows)
    writer.add_errors(list(errors))
    writer.close({"model": "/models/net.onnx", "rows": len(rows), **(summary or {})})
    return out


def oracle(rows, signed: bool, keep=None) -> dict:
    """Per label (None for rows without one, 'all' for every row): numpy's float64 mean of
    the rows' [H, W] maps, channels summed (absolute values unless signed); rows with a
    non-finite value left out; `keep(values)` first, if given."""
    maps: dict = {}
    for row in rows:
        values = row.attributions["image"].astype(np.float64)
        values = values if keep is None else keep(values)
        reduced = (values if signed else np.abs(values)).sum(axis=0)
        if np.isfinite(reduced).all():
            maps.setdefault(row.label, []).append(reduced)
            maps.setdefault("all", []).append(reduced)
    return {label: np.mean(np.stack(found), axis=0) for label, found in maps.items()}


@pytest.mark.parametrize("signed, block", [(False, 1 << 20), (True, 1 << 20), (True, 1000)])
def test_class_means_are_numpy_means_of_the_reduced_maps(tmp_path, monkeypatch, signed, block):
    monkeypatch.setattr(overview_module, "MAP_BLOCK", block)  # 1000: rows reduced 2 at a time
    rows = make_rows(LABELS, signed, nan_row=5)
    out = write_run(tmp_path / "out", rows)
    want = oracle(rows, signed)
    got = class_means(out, "image")
    assert list(got) == ["A_B", "a/b", "a_b", "cat", "dog", None]  # sorted, None last
    for label, mean in got.items():  # float64 sums row after row: numpy's numbers exactly
        np.testing.assert_array_equal(mean, want[label])
    overview = read_overview(out)
    assert overview.signed is signed and overview.signed_from == "the run"
    np.testing.assert_array_equal(overview.overall.mean_map("image"), want["all"])
    dog = overview.groups["dog"]
    assert (dog.rows, dog.mapped["image"]) == (3, 2)  # the NaN row counted, not averaged
    assert dog.top_prediction() == (0, 2) and dog.mean_score() == pytest.approx(
        np.mean([0.0, 0.5, 0.9]))


def test_stored_maps_and_top_k_give_the_same_means(tmp_path):
    rows = make_rows(LABELS, signed=False, seed=3)
    want = oracle(rows, signed=False)
    got = class_means(write_run(tmp_path / "map", rows, MAP), "image")
    for label, mean in got.items():  # the map column is float32: reduced before the mean
        np.testing.assert_allclose(mean, want[label], rtol=1e-5)
    k = 20

    def top(values):
        """The k entries of largest |value|, zeros elsewhere (what the top-k store keeps)."""
        flat = values.reshape(-1)
        kept = np.zeros_like(flat)
        chosen = np.argsort(-np.abs(flat), kind="stable")[:k]
        kept[chosen] = flat[chosen]
        return kept.reshape(values.shape)

    want = oracle(rows, signed=False, keep=top)
    got = class_means(write_run(tmp_path / "topk", rows, Store("topk", k)), "image")
    assert list(got) == ["A_B", "a/b", "a_b", "cat", "dog", None]
    for label, mean in got.items():
        np.testing.assert_allclose(mean, want[label], rtol=1e-12, atol=1e-12)


def test_the_sign_is_read_from_the_values_for_older_shards(tmp_path, pq):
    """Shards written before the run recorded its maps' sign."""
    rows = make_rows(["x", "y"], signed=True)
    forget_sign(write_run(tmp_path / "signed", rows), pq)
    overview = read_overview(tmp_path / "signed")
    assert overview.signed is True and overview.signed_from == "the values"
    for row in rows:
        row.attributions["image"] = np.abs(row.attributions["image"])
    forget_sign(write_run(tmp_path / "unsigned", rows), pq)
    assert read_overview(tmp_path / "unsigned").signed is False


def forget_sign(out, pq):
    for shard in (out / "results").glob("part-*.parquet"):
        table = pq.read_table(shard)
        metadata = {k: v for k, v in table.schema.metadata.items() if b"signed" not in k}
        pq.write_table(table.replace_schema_metadata(metadata), shard)
    return out


def test_pngs_draw_the_means_at_the_heatmaps_size(tmp_path):
    rows = make_rows(LABELS, signed=False)
    out = write_run(tmp_path / "out", rows)
    folder = out / "overview" / "class_means"
    folder.mkdir(parents=True)
    (folder / "a_b-4.png").write_bytes(b"drawn by an earlier overview")
    page = write_overview(out, ["image"])
    assert page == out / "overview" / "index.html"
    want = oracle(rows, signed=False)
    files = {"all_rows.png": "all", "A_B.png": "A_B", "a_b-2.png": "a/b", "a_b-3.png": "a_b",
             "cat.png": "cat", "dog.png": "dog", "no_label.png": None}
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    factor = -(-224 // max(SHAPE[1:]))  # enlarged by a whole factor to at least 224 pixels
    width, height = SHAPE[2] * factor, SHAPE[1] * factor
    for name, label in files.items():
        with Image.open(folder / name) as image:
            assert image.size == (width + 112, max(height, 96))  # the map, then its bar
            drawn = np.asarray(image.convert("RGB"))[:height, :width]
            assert image.text["rows"] == str(len([r for r in rows if label in ("all", r.label)]))
        span = colour_range(want[label], False, stretch=True)
        expected = np.asarray(heatmap_image(want[label], False, span=span))
        np.testing.assert_array_equal(drawn, expected)


@pytest.mark.parametrize("shape", [(6,), (6, 8)])  # token scores, an embedding [seq, hidden]
def test_results_without_an_image_map_get_no_overview(tmp_path, shape):
    rows = make_rows(["p"], signed=True, shape=shape)
    out = write_run(tmp_path / "out", rows)
    assert write_overview(out) is None and not (out / "overview").exists()
    # Named by the caller, the input gets a page that says why it has no map.
    assert f"no image map (row shape {list(shape)})" in write_overview(out, ["image"]).read_text()


def test_a_folder_without_results_is_refused_in_one_line(tmp_path):
    message = one_line_error(lambda: write_overview(tmp_path))
    assert message == f"{tmp_path} holds no explain-dataset results"


def test_shards_are_read_one_at_a_time(tmp_path, pq, monkeypatch):
    out = write_run(tmp_path / "out", make_rows(LABELS, signed=True), shard_rows=3)
    alive: list[weakref.ref] = []
    sizes = []
    original = pq.ParquetFile.read

    def read(self, *args, **kwargs):
        assert [ref for ref in alive if ref() is not None] == [], "two shards held at once"
        table = original(self, *args, **kwargs)
        alive.append(weakref.ref(table))
        sizes.append(len(table))
        return table

    def whole(*args, **kwargs):
        raise AssertionError("the overview read the results whole")

    monkeypatch.setattr(pq.ParquetFile, "read", read)
    monkeypatch.setattr(results_module, "_read", whole)  # read_results, read_errors
    write_overview(out, ["image"])
    assert sizes == [3, 3, 3, 2] * 2  # the label columns first, then the shards' columns


def test_the_page_loads_in_chromium_with_every_label(tmp_path, chromium):  # noqa: F811
    out = write_run(tmp_path / "out", make_rows(LABELS, signed=True), errors=ERRORS,
                    summary={"unreadable": {"constant": 1}})
    page = write_overview(out, ["image"])
    with Browser(chromium) as browser:
        browser.open(page.as_uri())
        images = browser.evaluate("Array.from(document.images).map(i => "
                                  "[i.complete, i.naturalWidth, i.getAttribute('src')])")
        assert len(images) == 7 and all(done and width > 0 for done, width, _ in images)
        lines = browser.evaluate("Array.from(document.querySelectorAll('tr.group')).map(tr => "
                                 "Array.from(tr.children).slice(0, 2).map(td => td.innerText))")
        assert lines == [["all rows", "11"], ["A_B", "1"], ["a/b", "1"], ["a_b", "1"],
                         ["cat", "3"], ["dog", "3"], ["no label", "2"]]
        errors = browser.evaluate("Array.from(document.querySelectorAll('table.errors tbody "
                                  "tr')).map(tr => tr.innerText)")
        assert errors == ["3\tunreadable image", "2\tNaN values"]
        text = browser.evaluate("document.body.innerText")
        assert "net.onnx" in text and "constant: 1" in text
        assert browser.problems() == []


def test_a_zoo_image_run_end_to_end(zoo, tmp_path):
    """Signed saliency (abs=False): a map summed without its sign would differ."""
    model = zoo.model_path("digits_cnn")
    paths = digits_folder(zoo, tmp_path / "data", count=9)
    explain_dataset(model, tmp_path / "data", tmp_path / "out", "saliency", batch_size=4,
                    shard_rows=4, progress=False, abs=False)
    page = write_overview(tmp_path / "out", ["image"]).read_text()
    explainer = Explainer(str(model), "cpu", progress=False)
    x = load_images([str(p) for p in paths], default_preprocessing(explainer.model.inputs[0]))
    attribution = explainer.explain(x, method="saliency", abs=False)
    assert attribution.signed and (attribution["image"] < 0).any()
    labels = np.array([p.parent.name for p in paths])
    got = class_means(tmp_path / "out", "image")
    assert list(got) == ["class0", "class1", "class2"]
    for label, mean in got.items():
        rows = attribution["image"][labels == label].astype(np.float64)
        np.testing.assert_allclose(mean, rows.sum(axis=1).mean(axis=0), rtol=1e-6, atol=1e-9)
    assert read_overview(tmp_path / "out").signed_from == "the run"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert f"<th>explained</th><td>{summary['explained']}</td>" in page
    assert all(f"<b>class{k}</b>" in page for k in range(3))


def test_summary_counts_print_whole(tmp_path):
    out = write_run(tmp_path / "out", make_rows(["x"], signed=True),
                    summary={"rows": 12345, "seconds": 1.23456789, "resumed": True})
    page = write_overview(out).read_text()
    assert "<th>rows</th><td>12345</td>" in page
    assert "<th>seconds</th><td>1.235</td>" in page and "<th>resumed</th><td>True</td>" in page


def test_above_max_groups_only_every_row_is_kept(tmp_path, monkeypatch):
    """LABELS has 6 groups (5 labels and rows without one): a cap of 5 keeps one map."""
    rows = make_rows(LABELS, signed=False)
    out = write_run(tmp_path / "out", rows, shard_rows=3)
    made = []
    original = overview_module._Sums

    def spy(*args):
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(overview_module, "_Sums", spy)
    monkeypatch.setattr(overview_module, "MAX_GROUPS", 5)
    page = write_overview(out, ["image"]).read_text()
    assert made[-1]._totals["image"].shape == (1, *SHAPE[1:])  # memory: one running sum
    overview = read_overview(out)
    assert overview.too_many_labels and overview.groups == {}
    np.testing.assert_array_equal(overview.overall.mean_map("image"),
                                  oracle(rows, signed=False)["all"])
    assert overview.overall.rows == len(rows)
    assert sorted(p.name for p in (out / "overview" / "class_means").iterdir()) == \
        ["all_rows.png"]
    assert "More than 5 labels: only the mean map of every row is drawn" in page
    assert one_line_error(lambda: class_means(out, "image")) == (
        f"{out} has more than 5 labels: pass a larger max_groups to have each label's mean")
    assert len(class_means(out, "image", max_groups=6)) == 6
    monkeypatch.setattr(overview_module, "MAX_GROUPS", 6)
    assert not read_overview(out).too_many_labels and len(read_overview(out).groups) == 6


def test_a_shard_without_shapes_is_one_line_naming_it(tmp_path, pq):
    out = write_run(tmp_path / "out", make_rows(LABELS, signed=True), shard_rows=4)
    for number in (1, 0):  # a later shard, read by the sums; the first, read for its layout
        shard = out / "results" / f"part-0000{number}.parquet"
        table = pq.read_table(shard)
        metadata = {k: v for k, v in table.schema.metadata.items() if b"shape." not in k}
        pq.write_table(table.replace_schema_metadata(metadata), shard)
        message = one_line_error(lambda: read_overview(out, ["image"]))
        assert message.startswith("no shape of the attribution of 'image'")
        assert f"in the schema metadata of {shard}:" in message


def test_rows_without_a_prediction_or_score_are_counted_only(tmp_path):
    rows = make_rows(LABELS, signed=True)
    for index, row in enumerate(rows):
        row.predicted = None if index % 4 == 1 else row.predicted
        row.score = None if index % 5 == 2 else float("nan") if index % 5 == 3 else row.score
    overview = read_overview(write_run(tmp_path / "out", rows, shard_rows=3))
    for label, group in [*overview.groups.items(), ("all", overview.overall)]:
        mine = [row for row in rows if label in ("all", row.label)]
        predicted = [row.predicted for row in mine if row.predicted is not None]
        scores = [row.score for row in mine if row.score is not None and np.isfinite(row.score)]
        assert group.rows == len(mine)
        assert dict(group.predicted) == {c: predicted.count(c) for c in set(predicted)}
        assert group.mean_score() == (sum(scores) / len(scores) if scores else None)
