"""Parquet files as a dataset source (issue 20): one column per model input, read lazily.
Oracles: the arrays written, onnxplain.images.load_image on the same image files, and
Explainer.explain on the same rows held in memory (bit for bit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from PIL import Image

from onnxplain import Explainer
from onnxplain.dataset import explain_dataset, parquet_source
from onnxplain.dataset.results import attribution, read_results
from onnxplain.dataset.sources import open_source
from onnxplain.graph.model import Model
from onnxplain.images import ImagePreprocessing, default_preprocessing, load_image

from ..conftest import require
from .conftest import damage_column, one_line_error, read_rows, write_parquet

# Pages with checksums, values stored plainly: a flipped byte is caught.
INTACT_VALUES = {"write_page_checksum": True, "compression": "none",
                 "use_dictionary": False}


@pytest.fixture(autouse=True)
def _pyarrow():
    require("pyarrow")  # the dataset extra: in CI a failure, elsewhere a skip


@pytest.fixture(scope="module")
def digits(zoo) -> Model:
    return Model.load(zoo.model_path("digits_cnn"))


@pytest.fixture(scope="module")
def scalar_model() -> Model:
    """x float [batch, 1] and n int64 [batch] -> out = 2 x + n, [batch, 1]."""
    nodes = [helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["nf", "one"], ["n1"]),
             helper.make_node("Add", ["x", "x"], ["x2"]),
             helper.make_node("Add", ["x2", "n1"], ["out"])]
    graph = helper.make_graph(
        nodes, "scalars",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("n", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Model.load(model)


def nested(x: np.ndarray):
    """`x` [rows, ...] as a nested fixed_size_list column of its own dtype."""
    import pyarrow as pa

    column = pa.array(x.reshape(-1))
    for size in reversed(x.shape[1:]):
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def digits_pngs(zoo, folder: Path, count: int) -> list[Path]:
    images = zoo.sample("digits_cnn")["image"]
    paths = []
    for index in range(count):
        pixels = images[index % len(images), 0]
        scaled = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-6)).astype(np.uint8)
        path = folder / f"img{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scaled, mode="L").save(path)
        paths.append(path)
    return paths


def test_tensor_rows_come_back_across_read_batches_and_files(zoo, digits, tmp_path,
                                                             monkeypatch):
    x = np.concatenate([zoo.sample("digits_cnn")["image"]] * 2)[:11].astype(np.float32)
    # Nested lists of float64 in one file (cast to float32, exact), fixed-size float32 lists
    # in the other; small row groups and read batches of 3 so every boundary is crossed.
    write_parquet(tmp_path / "data" / "a.parquet", {"image": x[:7].astype(np.float64).tolist()},
                  row_group_size=2)
    write_parquet(tmp_path / "data" / "b.parquet", {"image": nested(x[7:])})
    monkeypatch.setattr(parquet_source, "READ_ROWS", (3, 3))
    source = open_source(digits, tmp_path / "data")
    assert source.count() == 11
    ids, labels, feeds, errors = read_rows(source, rows=4)
    assert not errors and labels == [None] * 11
    assert ids == [f"a.parquet#{i}" for i in range(7)] + [f"b.parquet#{i}" for i in range(4)]
    assert feeds["image"].dtype == np.float32
    np.testing.assert_array_equal(feeds["image"], x)
    # One file given alone: ids relative to its folder.
    ids, _, feeds, _ = read_rows(open_source(digits, tmp_path / "data" / "b.parquet"), rows=2)
    assert ids == [f"b.parquet#{i}" for i in range(4)]
    np.testing.assert_array_equal(feeds["image"], x[7:])


def test_id_and_label_columns_and_skipped_rows_are_not_decoded(zoo, digits, tmp_path):
    x = zoo.sample("digits_cnn")["image"][:5].copy()
    x[3, 0, 0, 0] = np.nan  # skipped below: never checked, so no error
    path = write_parquet(tmp_path / "d.parquet", {"image": nested(x), "id": list("abcde"),
                                                  "label": [7, None, 1, 2, 3]})
    ids, labels, feeds, errors = read_rows(open_source(digits, path), rows=10, skip={"b", "d"})
    assert ids == ["a", "c", "e"] and labels == ["7", "1", "3"] and not errors
    np.testing.assert_array_equal(feeds["image"], x[[0, 2, 4]])


def test_nan_ragged_and_wrong_length_rows_become_row_errors(zoo, digits, tmp_path):
    x = zoo.sample("digits_cnn")["image"][:5].astype(np.float32)
    rows = x.tolist()
    rows[1][0][2][3] = float("nan")
    rows[2][0][4] = rows[2][0][4][:7]  # one ragged line
    rows[3] = [[line[:7] for line in rows[3][0]]]  # [1, 8, 7]: the wrong width
    path = write_parquet(tmp_path / "bad.parquet", {"image": rows})
    ids, _, feeds, errors = read_rows(open_source(digits, path), rows=10)
    assert ids == ["bad.parquet#0", "bad.parquet#4"]
    np.testing.assert_array_equal(feeds["image"], x[[0, 4]])
    assert [error.id for error in errors] == [f"bad.parquet#{i}" for i in (1, 2, 3)]
    assert all(error.source == f"{path}#{error.id[-1]}" for error in errors)
    reasons = [error.reason for error in errors]
    assert all(reason and "\n" not in reason for reason in reasons)
    assert "NaN" in reasons[0] and "ragged" in reasons[1] and "7" in reasons[2]


def test_symbolic_dims_take_each_rows_length_and_a_batch_one_shape(any_size, tmp_path):
    rows = [np.full((1, 4, 4), 1, np.float32), np.full((1, 4, 4), 2, np.float32),
            np.full((1, 5, 3), 3, np.float32), np.full((1, 5, 3), 4, np.float32)]
    path = write_parquet(tmp_path / "sizes.parquet", {"image": [row.tolist() for row in rows]})
    batches = [batch for batch, _ in open_source(any_size, path).batches(3)]
    assert [batch.ids for batch in batches] == [["sizes.parquet#0", "sizes.parquet#1"],
                                                ["sizes.parquet#2", "sizes.parquet#3"]]
    np.testing.assert_array_equal(batches[0].feeds["image"], np.stack(rows[:2]))
    np.testing.assert_array_equal(batches[1].feeds["image"], np.stack(rows[2:]))


def test_a_damaged_row_group_fails_its_rows_and_the_rest_comes_through(zoo, digits,
                                                                       tmp_path):
    x = np.concatenate([zoo.sample("digits_cnn")["image"]] * 8)[:8].astype(np.float32)
    path = write_parquet(tmp_path / "damaged.parquet", {"image": nested(x)}, row_group_size=4,
                         **INTACT_VALUES)
    damage_column(path, 1, "image")
    ids, _, feeds, errors = read_rows(open_source(digits, path), rows=3)
    assert ids == [f"damaged.parquet#{i}" for i in range(4)]
    np.testing.assert_array_equal(feeds["image"], x[:4])
    assert [error.id for error in errors] == [f"damaged.parquet#{i}" for i in range(4, 8)]
    assert all("from row 4" in error.reason and "\n" not in error.reason for error in errors)
    # A window fails only its own rows of the damaged group.
    (part,) = parquet_source.parquet_parts(digits, tmp_path, [path], {})
    reads = list(part.read(set(), range(3, 6)))
    assert [(read.id, read.reason is None) for read in reads] == [
        ("damaged.parquet#3", True), ("damaged.parquet#4", False), ("damaged.parquet#5", False)]


def test_rows_of_a_damaged_group_keep_the_ids_of_their_id_column(zoo, digits, tmp_path):
    """Damage in the image column only: the failed rows are named by their id column, so
    that a resumed run over the repaired file skips them instead of writing them twice (once
    under place ids); where the id column is damaged too, places stand in."""
    x = np.concatenate([zoo.sample("digits_cnn")["image"]] * 8)[:8].astype(np.float32)
    ids = [f"r{i}" for i in range(8)]
    path = write_parquet(tmp_path / "d.parquet", {"image": nested(x), "id": ids},
                         row_group_size=4, **INTACT_VALUES)
    damage_column(path, 1, "image")
    got, _, feeds, errors = read_rows(open_source(digits, path), rows=3, skip={"r5"})
    assert got == ids[:4]
    np.testing.assert_array_equal(feeds["image"], x[:4])
    assert [error.id for error in errors] == ["r4", "r6", "r7"]
    assert [error.source for error in errors] == [f"{path}#{i}" for i in (4, 6, 7)]
    damage_column(path, 1, "id")
    _, _, _, errors = read_rows(open_source(digits, path), rows=3)
    assert [error.id for error in errors] == [f"d.parquet#{i}" for i in range(4, 8)]


def test_image_bytes_and_paths_equal_load_image(zoo, digits, tmp_path):
    paths = digits_pngs(zoo, tmp_path / "pngs", 4)
    prep = default_preprocessing(digits.inputs[0])
    expected = np.stack([load_image(path, prep) for path in paths])
    blobs = [path.read_bytes() for path in paths]
    blobs[2] = b"not a png"
    write_parquet(tmp_path / "data" / "bytes.parquet", {"image": blobs})
    write_parquet(tmp_path / "data" / "paths.parquet",  # the last path absolute
                  {"image": [f"../pngs/{p.name}" for p in paths[:3]] + [str(paths[3])]})
    ids, _, feeds, errors = read_rows(open_source(digits, tmp_path / "data"), rows=3)
    assert ids == ["bytes.parquet#0", "bytes.parquet#1", "bytes.parquet#3"] + [
        f"paths.parquet#{i}" for i in range(4)]
    np.testing.assert_array_equal(feeds["image"], expected[[0, 1, 3, 0, 1, 2, 3]])
    assert [error.id for error in errors] == ["bytes.parquet#2"]
    assert "bytes.parquet#2" in errors[0].reason and "BytesIO" not in errors[0].reason
    _, _, _, errors = read_rows(open_source(digits, tmp_path / "data"), 3, {"bytes.parquet#2"})
    assert not errors  # a skipped row is not decoded
    # Preprocessing given applies to the decoded images.
    scaled = ImagePreprocessing(layout="NCHW", channels="L", scale=1.0)
    _, _, feeds, _ = read_rows(open_source(digits, tmp_path / "data" / "paths.parquet",
                                          {"image": scaled}), rows=4)
    np.testing.assert_array_equal(feeds["image"],
                                  np.stack([load_image(path, scaled) for path in paths]))


def test_single_number_columns_feed_inputs_of_one_value_per_row(scalar_model, tmp_path):
    path = write_parquet(tmp_path / "s.parquet", {"x": [0.5, 1.5, None], "n": [1, 2, 3]})
    ids, _, feeds, errors = read_rows(open_source(scalar_model, path), rows=5)
    assert ids == ["s.parquet#0", "s.parquet#1"]
    np.testing.assert_array_equal(feeds["x"], np.array([[0.5], [1.5]], np.float32))
    np.testing.assert_array_equal(feeds["n"], np.array([1, 2], np.int64))
    assert feeds["x"].dtype == np.float32 and "null" in errors[0].reason


def test_bad_columns_and_mixed_kinds_are_refused_in_one_line(zoo, digits, scalar_model,
                                                             tmp_path):
    x = nested(zoo.sample("digits_cnn")["image"][:2])
    extra = write_parquet(tmp_path / "extra.parquet", {"image": x, "imagee": x})
    assert "'imagee'" in one_line_error(lambda: open_source(digits, extra))
    missing = write_parquet(tmp_path / "missing.parquet", {"x": [1.0, 2.0]})
    assert "'n'" in one_line_error(lambda: open_source(scalar_model, missing))
    text = write_parquet(tmp_path / "text.parquet", {"x": ["a", "b"], "n": [1, 2]})
    assert "'x'" in one_line_error(lambda: open_source(scalar_model, text))
    numbers = write_parquet(tmp_path / "numbers.parquet", {"image": [1.0, 2.0]})
    assert "list" in one_line_error(lambda: open_source(digits, numbers))
    ids = write_parquet(tmp_path / "ids.parquet", {"image": x, "id": [1, 2]})
    assert "'id'" in one_line_error(lambda: open_source(digits, ids))
    tensors = write_parquet(tmp_path / "t" / "t.parquet", {"image": x})
    prep = {"image": default_preprocessing(digits.inputs[0])}
    assert "preprocessing" in one_line_error(lambda: open_source(digits, tensors, prep))
    np.save(tmp_path / "t" / "u.npy", np.zeros((1, 1, 8, 8), np.float32))
    assert "mixes" in one_line_error(lambda: open_source(digits, tmp_path / "t"))
    (tmp_path / "t" / "u.npy").unlink()
    digits_pngs(zoo, tmp_path / "t", 1)
    assert "mixes images" in one_line_error(lambda: open_source(digits, tmp_path / "t"))
    (tmp_path / "junk.parquet").write_bytes(b"junk")
    assert "Parquet" in one_line_error(lambda: open_source(digits, tmp_path / "junk.parquet"))


def test_explain_dataset_over_parquet_equals_explain_on_the_same_rows(zoo, tmp_path):
    model = zoo.model_path("digits_cnn")
    x = zoo.sample("digits_cnn")["image"][:10].astype(np.float32)
    labels = [str(i % 3) for i in range(10)]
    write_parquet(tmp_path / "data.parquet", {"image": nested(x), "label": labels},
                  row_group_size=4)
    summary = explain_dataset(model, tmp_path / "data.parquet", tmp_path / "out", "saliency",
                              batch_size=10, progress=False)
    assert summary["explained"] == 10 and summary["errors"] == 0
    table = read_results(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"data.parquet#{i}" for i in range(10)]
    assert table.column("label").to_pylist() == labels
    expected = Explainer(str(model), "cpu", progress=False).explain(
        x, method="saliency", batch_size=10)
    np.testing.assert_array_equal(attribution(table, "image"), expected["image"])
    np.testing.assert_array_equal(table.column("predicted").to_pylist(), expected.predicted)


def test_windows_of_rows_read_together_equal_the_whole_file(zoo, digits, tmp_path,
                                                            monkeypatch):
    """_ParquetFile.read(skip, window) hands out the rows whose place in the file lies in the
    window (the Ray engine's split by position): windows [0,a), [a,b), [b,n) joined equal the
    whole file, ids and values, with skipped rows too; row groups outside a window are not
    read."""
    import pyarrow.parquet as pq

    x = np.concatenate([zoo.sample("digits_cnn")["image"]] * 4)[:11].astype(np.float32)
    ids = [f"r{i}" for i in range(11)]
    path = write_parquet(tmp_path / "w.parquet", {"image": nested(x), "id": ids}, row_group_size=3)
    monkeypatch.setattr(parquet_source, "READ_ROWS", (2, 2))
    (part,) = parquet_source.parquet_parts(digits, tmp_path, [path], {})

    def rows(skip, window=None):
        return [(read.id, read.values["image"]) for read in part.read(skip, window)]

    for skip in (set(), {"r0", "r4", "r5", "r10"}):
        whole = rows(skip)
        assert [id for id, _ in whole] == [id for id in ids if id not in skip]
        for a, b in ((0, 11), (4, 7), (3, 6), (0, 0), (5, 5), (10, 11)):
            joined = rows(skip, range(0, a)) + rows(skip, range(a, b)) + \
                rows(skip, range(b, 11))
            assert [id for id, _ in joined] == [id for id, _ in whole]
            for (_, got), (_, expected) in zip(joined, whole, strict=True):
                np.testing.assert_array_equal(got, expected)
        assert [id for id, _ in rows(skip, range(20, 30))] == []
    for id, value in rows(set(), range(4, 7)):
        np.testing.assert_array_equal(value, x[int(id[1:])])
    # Row groups (3 rows each) that the window misses are never read.
    groups = []
    iterate = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        groups.extend(row_groups)
        return iterate(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert [id for id, _ in rows(set(), range(4, 7))] == ["r4", "r5", "r6"]
    assert groups == [1, 2]
    with pytest.raises(ValueError):
        rows(set(), range(0, 10, 2))


@pytest.mark.parametrize("layout", ["one file", "two files", "a place id"])
def test_two_rows_under_one_id_are_refused_before_anything_is_written(zoo, tmp_path, layout):
    """Without the check the second row was taken for one written already: an internal
    error midway through the run."""
    x = zoo.sample("digits_cnn")["image"][:3].astype(np.float32)
    data = tmp_path / "data"
    if layout == "one file":
        write_parquet(data / "a.parquet", {"image": nested(x), "id": ["p", "q", "p"]})
        rows = ("a.parquet#0", "a.parquet#2")
    elif layout == "two files":
        write_parquet(data / "a.parquet", {"image": nested(x), "id": ["p", "q", "r"]})
        write_parquet(data / "b.parquet", {"image": nested(x), "id": ["s", "r", "t"]})
        rows = ("a.parquet#2", "b.parquet#1")
    else:  # a given id equal to the place id of a row in a file without an id column
        write_parquet(data / "a.parquet", {"image": nested(x)})
        write_parquet(data / "b.parquet", {"image": nested(x), "id": ["s", "a.parquet#1", "t"]})
        rows = ("a.parquet#1", "b.parquet#1")
    out = tmp_path / "out"
    message = one_line_error(lambda: explain_dataset(zoo.model_path("digits_cnn"), data, out,
                                                     "saliency"))
    assert "ids must be unique" in message
    assert all(str(data / row) in message for row in rows), message
    assert not out.exists()
    # Unique ids pass the check, and rows keep them.
    write_parquet(data / "a.parquet", {"image": nested(x), "id": ["u", "v", "w"]})
    if (data / "b.parquet").exists():
        (data / "b.parquet").unlink()
    explain_dataset(zoo.model_path("digits_cnn"), data, out, "saliency")
    assert read_results(out).column("id").to_pylist() == ["u", "v", "w"]
